"""Score a model on tasks: in memory (no cache, the search calls it in a loop on a
model whose weights change) or from a directory (cached by the files' fingerprint)."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from modelglue.errors import ModelGlueError
from modelglue.evaluate.cache import cache_dir
from modelglue.io.paths import atomic_write
from modelglue.evaluate.tasks import Task, load_tasks
from modelglue.evaluate.textlm import TextLM, text_lm

CACHE_VERSION = 2  # 2: mixtures scored through text (choices routed on the prompt). Bump when scoring changes, so old cached scores are not reused


def load_model(model_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None):
    """(model, tokenizer) from a Hugging Face directory, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelGlueError(f"not a model directory (no config.json): {model_dir}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or "auto").to(device).eval()
    return model, tokenizer


def load_text_lm(model_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> TextLM:
    """A model directory (an ordinary model or a model-level mixture, whatever its
    experts' tokenizers) as a text-level model: `.greedy(prompts, max_new_tokens)`,
    `.loglikelihoods([(context, continuation), ...])`."""
    model, tokenizer = load_model(model_dir, device=device, dtype=dtype)
    return text_lm(model, tokenizer)


def _is_lm_eval(item) -> bool:
    return isinstance(item, str) and item.strip().startswith("lm_eval:")


def _split_spec(tasks) -> tuple[list, list[str]]:
    """Separate `lm_eval:NAME` entries from ordinary task specs."""
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks) if isinstance(tasks, (list, tuple)) else [tasks]
    ours = [t for t in items if not _is_lm_eval(t) and not (isinstance(t, str) and not t.strip())]
    lm = [t.strip().split(":", 1)[1] for t in items if _is_lm_eval(t)]
    return ours, lm


def score_task(model: torch.nn.Module | TextLM, tokenizer, task: Task, limit: int | None = None,
               batch_size: int = 256) -> dict:
    """One task's result: {"score", "metric", "n", "kind", "outputs"}. `model` is a causal
    LM read through `tokenizer`, or anything `text_lm` accepts (e.g. a model-level mixture)."""
    lm = text_lm(model, tokenizer)
    examples = task.examples[:limit] if limit else task.examples
    if task.kind == "choice":
        scores = lm.loglikelihoods([(e["prompt"], c) for e in examples for c in e["choices"]])
        preds, at = [], 0
        for e in examples:
            row = [s for s, _ in scores[at: at + len(e["choices"])]]
            preds.append(max(range(len(row)), key=row.__getitem__))
            at += len(row)
        hits = [p == e["answer"] for p, e in zip(preds, examples)]
        outputs = [e["choices"][p] for p, e in zip(preds, examples)]
        metric = "acc"
    else:
        outputs = lm.greedy([e["prompt"] for e in examples], task.max_new_tokens, batch_size=batch_size)
        hits = [o == e["answer"] for o, e in zip(outputs, examples)]
        metric = "exact_match"
    return {"score": sum(hits) / max(1, len(hits)), "metric": metric, "n": len(hits),
            "kind": task.kind, "outputs": outputs}


def _summary(per_task: dict[str, dict], split: str, limit: int | None) -> dict:
    scores = {k: v["score"] for k, v in per_task.items()}
    return {"scores": scores, "mean": sum(scores.values()) / max(1, len(scores)),
            "details": {k: {kk: vv for kk, vv in v.items() if kk != "outputs"} for k, v in per_task.items()},
            "split": split, "limit": limit}


def evaluate(model: torch.nn.Module | TextLM, tokenizer, tasks, split: str = "validation",
             limit: int | None = None, batch_size: int = 256, keep_outputs: bool = False) -> dict:
    """Score an in-memory causal LM. Never cached: the caller may change the weights
    between calls. `tasks`: "all", names, JSONL paths, `lm_eval:NAME`, or Task objects.

    Returns {"scores": {task: score}, "mean": float, "details": {task: {"metric", "n",
    "kind", ...}}, "split", "limit"} (plus "outputs" per task in details if keep_outputs).
    """
    ours, lm = _split_spec(tasks)
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    per_task: dict[str, dict] = {}
    try:
        for task in (load_tasks(ours, split) if ours else []):
            per_task[task.name] = score_task(model, tokenizer, task, limit, batch_size)
        if lm:
            from modelglue.evaluate.lmeval import run_lm_eval

            for name, res in run_lm_eval(model, tokenizer, lm, split=split, limit=limit,
                                         batch_size=batch_size).items():
                per_task[f"lm_eval:{name}"] = res
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)
    out = _summary(per_task, split, limit)
    if keep_outputs:
        for k, v in per_task.items():
            out["details"][k]["outputs"] = v.get("outputs")
    return out


# ----------------------------------------------------------------------------------
# Directory models: cached by (model fingerprint, task fingerprint, settings).

def model_fingerprint(model_dir: str | Path) -> str:
    """A cheap identity of a model directory: names, sizes and mtimes of the weight
    files plus the bytes of config.json and tokenizer.json. Rewriting a file changes
    its mtime, so a re-merged model gets a new fingerprint without hashing gigabytes."""
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    weights = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    for p in weights:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        if p.name in ("config.json", "tokenizer.json"):
            h.update(p.read_bytes())
    return h.hexdigest()[:32]


def task_fingerprint(task: Task) -> str:
    payload = json.dumps([task.name, task.kind, task.max_new_tokens, task.examples], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def evaluate_dir(model_dir: str | Path, tasks, split: str = "validation", limit: int | None = None,
                 batch_size: int = 256, use_cache: bool = True, device: str = "cpu") -> dict:
    """Score a model directory; each task's result is cached and loaded only on a miss
    (the model itself is loaded only if some task misses)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelGlueError(f"model directory not found: {model_dir}")
    if not (model_dir / "config.json").is_file():
        raise ModelGlueError(f"not a model directory (no config.json): {model_dir}")
    ours, lm = _split_spec(tasks)
    task_objs = load_tasks(ours, split) if ours else []
    fp = model_fingerprint(model_dir)
    key = lambda *what: hashlib.sha256(json.dumps([CACHE_VERSION, fp, *what, split, limit]).encode()).hexdigest()  # noqa: E731
    keyed = [(t, key(task_fingerprint(t))) for t in task_objs] + [(f"lm_eval:{n}", key("lm_eval", n)) for n in lm]
    store = cache_dir() / "eval"
    per_task: dict[str, dict] = {}
    loaded = None
    t0 = time.perf_counter()
    for task, key in keyed:
        name = task if isinstance(task, str) else task.name
        path = store / f"{key}.json"
        if use_cache and path.is_file():
            try:
                per_task[name] = {**json.loads(path.read_text()), "cached": True}
                continue
            except (OSError, json.JSONDecodeError):
                pass  # a torn cache file: recompute
        if loaded is None:
            loaded = load_model(model_dir, device=device)
        model, tok = loaded
        if isinstance(task, str):
            res = evaluate(model, tok, [task], split=split, limit=limit, batch_size=batch_size)
            res = {**res["details"][task], "score": res["scores"][task]}
        else:
            res = score_task(model, tok, task, limit, batch_size)
            res.pop("outputs", None)
        per_task[name] = res
        store.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(res))
    out = _summary(per_task, split, limit)
    out["model"] = str(model_dir)
    out["seconds"] = time.perf_counter() - t0
    return out
