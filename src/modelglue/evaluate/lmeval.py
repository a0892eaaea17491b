"""lm-evaluation-harness adapter (optional extra: `pip install modelglue[lmeval]`).

`export_lm_eval_tasks(DIR)` writes one YAML per task and split over local JSONL data,
so that, offline,

    lm_eval --model hf --model_args pretrained=MODEL_DIR --include_path DIR --tasks modelglue_add

scores exactly what `modelglue eval MODEL_DIR --tasks add --split test` scores (greedy,
stop at newline, exact match). `modelglue_<task>` uses the test split,
`modelglue_<task>_val` the validation split; the group `modelglue` holds all test tasks.
`run_lm_eval` scores an in-memory model through `lm_eval.simple_evaluate`: an ordinary
model through lm-eval's HFLM, a model-level mixture (experts with their own tokenizers)
through its text interface (`_text_lm_adapter`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from modelglue.errors import ModelGlueError
from modelglue.evaluate.tasks import BUILTIN_TASKS, SPLITS, Task, load_tasks
from modelglue.evaluate.textlm import HFTextLM, TextLM, text_lm


def lm_eval_name(task: str, split: str = "test") -> str:
    return f"modelglue_{task}" + ("_val" if split == "validation" else "")


def _yaml_for(task: Task, split: str, data: dict[str, str]) -> str:
    # JSON is valid YAML: no yaml dependency and no quoting surprises.
    cfg = {
        "task": lm_eval_name(task.name, split),
        "tag": ["modelglue"] if split == "test" else ["modelglue_val"],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {split: data[split]}},
        ("test_split" if split == "test" else "validation_split"): split,
        "doc_to_text": "{{prompt}}",
        "target_delimiter": "",  # the answer follows the prompt directly, as in training
        "num_fewshot": 0,
        "metadata": {"version": 1},
    }
    if task.kind == "choice":
        cfg.update(output_type="multiple_choice", doc_to_choice="{{choices}}", doc_to_target="{{answer}}",
                   metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
    else:
        cfg.update(output_type="generate_until", doc_to_target="{{answer}}",
                   generation_kwargs={"until": ["\n"], "do_sample": False, "max_gen_toks": task.max_new_tokens},
                   metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}])
    return json.dumps(cfg, indent=2) + "\n"


def export_lm_eval_tasks(out_dir: str | Path, tasks: list[str] | str | None = None) -> list[str]:
    """Write lm-eval task YAMLs and their JSONL data into `out_dir` (built-in tasks by
    default; JSONL task files too). Returns the lm-eval task names written."""
    out_dir = Path(out_dir).resolve()
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    specs = list(BUILTIN_TASKS) if tasks is None else tasks
    for split in SPLITS:
        for task in load_tasks(specs, split):
            data_file = out_dir / "data" / f"{task.name}.{split}.jsonl"
            data_file.write_text("".join(json.dumps(e) + "\n" for e in task.examples))
            name = lm_eval_name(task.name, split)
            (out_dir / f"{name}.yaml").write_text(_yaml_for(task, split, {split: str(data_file)}))
            names.append(name)
    return names


def _builtin_export_dir() -> Path:
    """Exported built-in tasks under the cache, keyed by the task source (so they are
    written once and rewritten when the task definitions change)."""
    import modelglue.evaluate.tasks as tasks_mod
    from modelglue.evaluate.cache import cache_dir

    key = hashlib.sha256(Path(tasks_mod.__file__).read_bytes() + Path(__file__).read_bytes()).hexdigest()[:12]
    path = cache_dir() / f"lm_eval_tasks-{key}"
    if not (path / "done").is_file():
        export_lm_eval_tasks(path)
        (path / "done").write_text("ok\n")
    return path


def run_lm_eval(model, tokenizer, names: list[str], split: str = "test", limit: int | None = None,
                batch_size: int = 64, include_path: str | Path | None = None) -> dict[str, dict]:
    """Score `model` (an in-memory Hugging Face causal LM) on lm-eval tasks. A built-in
    task name (e.g. "add") maps to the exported `modelglue_add` (or `_val`); any other
    name goes to lm-eval as is (its data must be available offline)."""
    try:
        import lm_eval
    except ImportError:
        raise ModelGlueError("lm-eval is not installed: pip install 'modelglue[lmeval]' (or lm-eval)") from None
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if split not in SPLITS:
        raise ModelGlueError(f"unknown split {split!r} (use validation or test)")
    paths = [str(_builtin_export_dir())] + ([str(include_path)] if include_path else [])
    mapped = {n: (lm_eval_name(n, split) if n in BUILTIN_TASKS else n) for n in names}
    # Indexing lm-eval's thousands of built-in task YAMLs takes many seconds: skip it
    # when every task is in our exported tasks or the include path.
    manager = TaskManager(include_path=paths, include_defaults=False)
    if any(t not in manager.all_tasks for t in mapped.values()):
        manager = TaskManager(include_path=paths, include_defaults=True)
    unknown = [t for t in mapped.values() if t not in manager.all_tasks]
    if unknown:
        raise ModelGlueError(f"unknown lm-eval task(s): {', '.join(unknown)}")
    text = text_lm(model, tokenizer)
    # An ordinary model goes through lm-eval's own HFLM (what `lm_eval --model hf` scores);
    # a model that tokenizes by itself (a model-level mixture) through its text interface.
    lm = (HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size) if isinstance(text, HFTextLM)
          else _text_lm_adapter(text, batch_size))
    out = lm_eval.simple_evaluate(model=lm, tasks=list(mapped.values()), task_manager=manager, limit=limit,
                                  log_samples=False, bootstrap_iters=0, verbosity="ERROR")
    results: dict[str, dict] = {}
    for name, lm_name in mapped.items():
        res = out["results"][lm_name]
        metric = next(k for k in ("exact_match,none", "acc,none") if k in res) if any(
            k in res for k in ("exact_match,none", "acc,none")) else next(k for k in res if "," in k and "stderr" not in k)
        n = out.get("n-samples", {}).get(lm_name, {}).get("effective")
        results[name] = {"score": float(res[metric]), "metric": metric.split(",")[0], "n": n, "kind": "lm_eval"}
    return results


def _text_lm_adapter(text: TextLM, batch_size: int = 64):
    """An lm-eval `LM` over our text interface (defined here: lm-eval is optional).

    generate_until is greedy and stops at a newline (or EOS), as our generation tasks do,
    then also at the request's `until` strings; loglikelihood_rolling scores the whole
    text after the BOS token."""
    from lm_eval.api.model import LM

    class TextLMAdapter(LM):
        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            return text.loglikelihoods([tuple(r.args) for r in requests])

        def loglikelihood_rolling(self, requests) -> list[float]:
            return [s for s, _ in text.loglikelihoods([("", r.args[0]) for r in requests])]

        def generate_until(self, requests) -> list[str]:
            out = [""] * len(requests)
            by_length: dict[int, list[int]] = {}  # one batched call per max_gen_toks
            for i, r in enumerate(requests):
                by_length.setdefault(int(r.args[1].get("max_gen_toks", 256)), []).append(i)
            for max_new, rows in by_length.items():
                got = text.greedy([requests[i].args[0] for i in rows], max_new, batch_size=batch_size)
                for i, g in zip(rows, got):
                    until = requests[i].args[1].get("until") or []
                    for stop in [until] if isinstance(until, str) else until:
                        g = g.split(stop, 1)[0] if stop else g
                    out[i] = g
            return out

    return TextLMAdapter()
