"""The demo zoo: a miniature of the Model-GLUE Llama-2 zoo, trained on the CPU.

  family A (llama, seed s):   a_base pretrained on a short curriculum of six tasks;
                              gentle fine-tunes each better at one or two tasks, that
                              keep the base's behaviour on the rest (so they merge well);
                              harsh fine-tunes (high lr, one task) that drift and forget
  family B (llama, seed s+1): another base, same shape, and its fine-tunes
  family C (qwen3, other width): another architecture, the only one trained on `sub`
  family D (llama, own tokenizer): the characters under other token ids (so it can be
                              mixed with the others, never merged), the only one trained on `dup`

Every model is an ordinary Hugging Face directory. The zoo root holds zoo.json (the
manifest) and scores.json (test-split scores of every model on every task).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modelglue.demo.train import build_tokenizer, make_model, save_model, train
from modelglue.errors import ModelGlueError

BASE_TASKS = ["add", "rev", "upper", "sort", "count", "copy"]  # families A and B
# A task only that family learns: a skill that only a mixture brings in.
FAMILY_TASKS = {"C": "sub", "D": "dup"}
C_TASK = FAMILY_TASKS["C"]
D_VOCAB_SEED = 7  # family D's tokenizer: the shared characters, shuffled ids


@dataclass
class Spec:
    """How to train one model: from scratch (parent None) or from a parent in the zoo."""

    name: str
    family: str
    role: str  # base | gentle | harsh
    train_tasks: list[str]
    steps: int
    lr: float
    parent: str | None = None
    arch: str = "llama"
    replay: float = 0.0  # share of each batch drawn from the base curriculum
    keep: float = 0.0  # share of each batch that keeps the parent's behaviour (KL) on the other tasks
    keep_hidden: float = 0.0  # on that share, also keep the parent's hidden states (weight of that term)
    hard_share: float = 0.0  # base: share of the full-range (hard) examples in its curriculum
    vocab_seed: int | None = None  # None: the shared tokenizer; else its ids shuffled (train.token_ids)
    extra: dict = field(default_factory=dict)


def _curriculum(hard_share: float) -> list[tuple[str, bool, float]]:
    """The base curriculum: the short range of every family task, plus `hard_share` of
    their full range (a little of every skill, at a low level, exists in the base)."""
    mix = [(t, False, (1 - hard_share) / len(BASE_TASKS)) for t in BASE_TASKS]
    return mix + ([(t, True, hard_share / len(BASE_TASKS)) for t in BASE_TASKS] if hard_share else [])


def _mix(spec: Spec, parent: Spec | None = None) -> list[tuple[str, bool, float]]:
    """(task, hard, weight): bases learn the curriculum; fine-tunes the full range of
    their tasks, plus `replay` of their parent's curriculum so they keep the rest (a
    `keep` share, KL to the parent on the other tasks, is added by `_train_one`)."""
    if spec.role == "base":
        mix = [(t, hard, len(BASE_TASKS) * w) for t, hard, w in _curriculum(spec.hard_share)]
        if spec.family in FAMILY_TASKS:  # its own task on the full range: nobody else learns it
            mix.append((FAMILY_TASKS[spec.family], True, 3.0))
        return mix
    own = [(t, True, (1 - spec.replay) / len(spec.train_tasks)) for t in spec.train_tasks]
    hard_share = parent.hard_share if parent is not None else 0.0
    replay = [(t, hard, spec.replay * w) for t, hard, w in _curriculum(hard_share)] if spec.replay else []
    return own + replay


# Model shapes: A and B share one (mergeable); C is another architecture and width.
SIZES = {
    "full": {"llama": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4),
             "qwen3": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16)},
    "tiny": {"llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4),
             "qwen3": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=24)},
}


def zoo_specs(scale: str = "full") -> list[Spec]:
    """The training plan, in order (a parent comes before its fine-tunes)."""
    if scale not in SIZES:
        raise ModelGlueError(f"unknown demo scale {scale!r} (use full or tiny)")
    if scale == "full":
        # A wider, shallower base that saw a little of every task's full range. Gentle
        # fine-tunes learn their tasks while half of each batch keeps the base's own
        # behaviour on the other tasks, both ranges: its outputs (KL) and its hidden
        # states at every layer. Like fine-tunes of a real base, their task vectors act
        # only where their tasks are, and add up (benchmarks/demo_zoo_merges.py,
        # docs/demo_and_eval.md).
        base_steps, ft_steps, gentle_lr, replay, keep, hard_share = 1500, 400, 1e-3, 0.0, 0.5, 0.03
        keep_hidden, harsh_steps = 10.0, 250
    else:  # fewer steps: a smaller model that must gain faster, and more replay to keep the rest
        base_steps, ft_steps, gentle_lr, replay, keep, hard_share = 600, 150, 1e-3, 0.5, 0.0, 0.0
        keep_hidden, harsh_steps = 0.0, 150
    harsh_lr = 3e-3  # one task, no replay, every weight: drifts far and forgets

    def base(name, fam, arch="llama", vocab_seed=None):
        tasks = BASE_TASKS + [FAMILY_TASKS[fam]] if fam in FAMILY_TASKS else list(BASE_TASKS)
        return Spec(name, fam, "base", tasks, base_steps, 3e-3, arch=arch,
                    hard_share=hard_share if arch == "llama" else 0.0, vocab_seed=vocab_seed)

    def gentle(name, tasks, parent):
        return Spec(name, parent[0].upper(), "gentle", tasks, ft_steps, gentle_lr, parent, replay=replay,
                    keep=keep, keep_hidden=keep_hidden)

    def harsh(name, tasks, parent):
        return Spec(name, parent[0].upper(), "harsh", tasks, harsh_steps, harsh_lr, parent)

    if scale == "full":
        return [base("a_base", "A"),
                gentle("a_add", ["add"], "a_base"), gentle("a_rev", ["rev"], "a_base"),
                gentle("a_sort", ["sort"], "a_base"), gentle("a_count", ["count"], "a_base"),
                gentle("a_upper_copy", ["upper", "copy"], "a_base"),
                harsh("a_harsh_add", ["add"], "a_base"), harsh("a_harsh_rev", ["rev"], "a_base"),
                base("b_base", "B"), gentle("b_add", ["add"], "b_base"), gentle("b_sort", ["sort"], "b_base"),
                base("c_base", "C", arch="qwen3"), base("d_base", "D", vocab_seed=D_VOCAB_SEED)]
    return [base("a_base", "A"),
            gentle("a_sort", ["sort"], "a_base"), gentle("a_rev", ["rev"], "a_base"),
            gentle("a_count", ["count"], "a_base"), harsh("a_harsh_add", ["add"], "a_base"),
            base("b_base", "B"), gentle("b_sort", ["sort"], "b_base"),
            base("c_base", "C", arch="qwen3")]


def format_table(scores: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per model, one column per task, plus the mean."""
    tasks = list(next(iter(scores.values())).keys()) if scores else []
    width = max([len(m) for m in scores] + [5])
    lines = [f"{'model':<{width}}  " + "  ".join(f"{t:>6}" for t in tasks) + "    mean"]
    for m, row in scores.items():
        vals = [row[t] for t in tasks]
        lines.append(f"{m:<{width}}  " + "  ".join(f"{v:6.3f}" for v in vals)
                     + f"  {sum(vals) / max(1, len(vals)):6.3f}")
    return "\n".join(lines)


def build_demo_zoo(out_dir: str | Path, seed: int = 0, scale: str = "full", threads: int | None = None,
                   force: bool = False, eval_limit: int | None = None, quiet: bool = False,
                   workers: int | None = None) -> Path:
    """Train the demo zoo into `out_dir` (deterministic for a seed). The zoo is built in
    a temporary sibling directory and renamed into place, so a killed build never looks
    complete. Models train in `workers` processes (default: one per core, at most 2),
    each as soon as its parent is saved. Returns `out_dir`."""
    from modelglue.evaluate import evaluate
    from modelglue.evaluate.tasks import BUILTIN_TASKS

    out_dir = Path(out_dir)
    specs = zoo_specs(scale)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ModelGlueError(f"output directory is not empty: {out_dir} (use --force to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # One thread by default: the CPU is often shared, and oversubscribed torch threads
    # run many times slower than one thread.
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    t0 = time.time()
    try:
        entries = _train_all(specs, scale, seed, tmp, threads or 1, workers, quiet, t0)
        build_seconds = time.time() - t0
        scores = {}
        if not quiet:
            print(f"demo zoo: scoring {len(specs)} models on the test split", file=sys.stderr, flush=True)
        for spec in specs:
            model = _load(tmp / spec.name)
            res = evaluate(model, build_tokenizer(spec.vocab_seed), list(BUILTIN_TASKS), split="test", limit=eval_limit)
            scores[spec.name] = {t: round(v, 4) for t, v in res["scores"].items()}
        manifest = {"format": "modelglue-demo-zoo/1", "scale": scale, "seed": seed,
                    "tasks": list(BUILTIN_TASKS), "base_tasks": BASE_TASKS, "c_task": C_TASK, "family_tasks": FAMILY_TASKS,
                    "tokenizer": "char-level; family D's shuffles the ids (every model dir holds its own)",
                    "build_seconds": round(build_seconds, 1), "threads": torch.get_num_threads(),
                    "models": entries}
        (tmp / "zoo.json").write_text(json.dumps(manifest, indent=2))
        (tmp / "scores.json").write_text(json.dumps({"split": "test", "scores": scores}, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(old_threads)
    if not quiet:
        print(f"demo zoo ({scale}) built in {build_seconds:.0f} s: {out_dir}")
        print(format_table(scores))
    return out_dir


def _load(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _train_one(spec: Spec, index: int, scale: str, seed: int, tmp: Path, threads: int, quiet: bool = True) -> dict:
    """Train one model of the zoo and save it (runs in a worker process). A fine-tune
    starts from its parent as saved: float32 on disk is bit-identical to the parent in
    memory, and every model seeds its own training, so the order of work never matters."""
    torch.set_num_threads(threads)
    fam_seed = seed * 1000 + "ABCD".index(spec.family)
    if spec.parent is None:
        model = make_model(spec.arch, SIZES[scale][spec.arch], seed=fam_seed)
    else:
        model = _load(tmp / spec.parent)
    t1 = time.time()
    parent = next((s for s in zoo_specs(scale) if s.name == spec.parent), None)
    kw = {}
    if spec.keep:  # the other family tasks, both ranges, at the parent's level
        kw = dict(teacher=_load(tmp / spec.parent), keep_share=spec.keep, keep_hidden=spec.keep_hidden,
                  keep=[(t, hard, 1.0) for t in BASE_TASKS if t not in spec.train_tasks for hard in (False, True)])
    loss = train(model, _mix(spec, parent), spec.steps, spec.lr, seed=fam_seed * 100 + index, desc=spec.name,
                 log_every=0.0 if quiet else 20.0, vocab_seed=spec.vocab_seed, **kw)
    save_model(model, build_tokenizer(spec.vocab_seed), tmp / spec.name)
    return {"name": spec.name, "path": spec.name, "family": spec.family, "role": spec.role,
            "arch": spec.arch, "parent": spec.parent, "train_tasks": spec.train_tasks,
            "steps": spec.steps, "lr": spec.lr, "replay": spec.replay, "keep": spec.keep,
            "keep_hidden": spec.keep_hidden,
            "hard_share": spec.hard_share, "vocab_seed": spec.vocab_seed,
            "final_loss": round(loss, 4), "train_seconds": round(time.time() - t1, 1)}


def _progress(entry: dict, done: int, total: int, t0: float) -> None:
    """One line per trained model on stderr (a terminal or a log file alike), with the
    elapsed time and an ETA from the mean time per model so far."""
    elapsed = time.time() - t0
    eta = elapsed / done * (total - done)
    tqdm.write(f"demo zoo {done:>2}/{total}: {entry['name']:<14} {entry['family']}/{entry['role']:<6} "
               f"loss {entry['final_loss']:.3f}  {entry['train_seconds']:6.1f} s  "
               f"(elapsed {elapsed:.0f} s, ETA {eta:.0f} s)", file=sys.stderr)


def _train_all(specs: list[Spec], scale: str, seed: int, tmp: Path, threads: int, workers: int | None,
               quiet: bool, t0: float) -> list[dict]:
    """Train every spec, parents before children, on a pool of worker processes."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    workers = max(1, workers or min(2, os.cpu_count() or 1))
    if not quiet:
        print(f"demo zoo ({scale}): training {len(specs)} models in {workers} process(es); "
              f"a line per model, and every 20 s per running model where no bar can draw", file=sys.stderr, flush=True)
    if workers == 1:  # in this process: no interpreter start-up, and the step bars stay readable
        entries = []
        for i, spec in enumerate(specs):
            entries.append(_train_one(spec, i, scale, seed, tmp, threads, quiet))
            if not quiet:
                _progress(entries[-1], i + 1, len(specs), t0)
        return entries
    done: dict[str, dict] = {}
    # Workers (started at submit) inherit TQDM_DISABLE, which tqdm reads at import: no
    # interleaved step bars from them. spawn: fresh interpreters, no inherited locks.
    saved = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            running = {}
            while len(done) < len(specs):
                for i, spec in enumerate(specs):
                    ready = spec.parent is None or spec.parent in done
                    if ready and spec.name not in done and spec.name not in running.values() and len(running) < workers:
                        fut = pool.submit(_train_one, spec, i, scale, seed, tmp, threads, quiet)
                        running[fut] = spec.name
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    entry = fut.result()
                    done[running.pop(fut)] = entry
                    if not quiet:
                        _progress(entry, len(done), len(specs), t0)
    finally:
        if saved is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved
    return [done[s.name] for s in specs]


ZOO_VERSION = 1  # bump when build_demo_zoo's output changes in a way the recipe does not show


def source_hash(scale: str = "full") -> str:
    """Hash of what defines a zoo of this scale (training code, tasks, recipe): a change
    rebuilds cached zoos, while editing another scale's recipe does not."""
    import modelglue.demo.train as train_mod
    import modelglue.evaluate.tasks as tasks_mod

    h = hashlib.sha256()
    for mod in (train_mod, tasks_mod):
        h.update(Path(mod.__file__).read_bytes())
    h.update(repr((ZOO_VERSION, zoo_specs(scale), SIZES[scale], BASE_TASKS, FAMILY_TASKS)).encode())
    return h.hexdigest()[:12]


def demo_zoo(scale: str = "full", seed: int = 0, cache_root: str | Path | None = None, quiet: bool = True) -> Path:
    """The demo zoo, built once and cached under $XDG_CACHE_HOME/modelglue (keyed by
    the demo source hash, so an edited recipe rebuilds). Safe under concurrent callers:
    a file lock makes one build while the others wait."""
    from filelock import FileLock

    from modelglue.evaluate.core import cache_dir

    root = Path(cache_root) if cache_root else cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"demo-zoo-{scale}-seed{seed}-{source_hash(scale)}"
    if (path / "zoo.json").is_file():
        return path
    with FileLock(str(path) + ".lock"):
        if not (path / "zoo.json").is_file():  # another process may have built it meanwhile
            for stale in root.glob(f".{path.name}.building-*"):  # left by a killed build
                shutil.rmtree(stale, ignore_errors=True)
            build_demo_zoo(path, seed=seed, scale=scale, force=True, quiet=quiet)
    return path
