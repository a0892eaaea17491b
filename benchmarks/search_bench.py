"""Candidates scored per minute: in-memory merging vs write-to-disk-and-reload.

    python benchmarks/search_bench.py [--zoo DIR] [--family A] [--tasks add,rev] [--limit 20] [--n 10]

Both paths score the same random candidates (linear weights over one family) on the
same tasks. In memory: `InMemoryMerger.merge_into` a resident model, then evaluate
(what `modelglue search` does). Disk: `modelglue.merge` to a fresh directory, load it
with transformers, evaluate (what a search built on the merge CLI would do). Also
reports the merge step alone (no evaluation), where the difference is largest.
Default zoo: the cached tiny demo zoo.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=None)
    ap.add_argument("--family", default="A")
    ap.add_argument("--tasks", default="add,rev")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--n", type=int, default=10, help="candidates per path")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from modelglue.evaluate import evaluate, load_model, load_tasks
    from modelglue.merge import InMemoryMerger, merge

    zoo = args.zoo
    if zoo is None:
        from modelglue.demo import demo_zoo

        zoo = demo_zoo(scale="tiny")
    manifest = json.loads((zoo / "zoo.json").read_text())
    models = [str(zoo / m["path"]) for m in manifest["models"] if m["family"] == args.family]
    rng = np.random.default_rng(0)
    recipes = [{"merge_method": "linear", "dtype": "float32",
                "models": [{"model": m, "parameters": {"weight": float(w)}} for m, w in zip(models, ws)]}
               for ws in rng.uniform(0.05, 1.0, size=(args.n, len(models)))]
    tasks = load_tasks(args.tasks, "validation")

    # in memory: one resident model, weights overwritten per candidate
    model, tok = load_model(models[0], dtype=torch.float32)
    merger = InMemoryMerger()
    merger.merge_into(model, recipes[0])  # warm: inputs read once, as in a search
    t_merge = t_total = 0.0
    for r in recipes:
        t0 = time.perf_counter()
        merger.merge_into(model, r)
        t1 = time.perf_counter()
        evaluate(model, tok, tasks, split="validation", limit=args.limit)
        t_merge += t1 - t0
        t_total += time.perf_counter() - t0
    mem = (t_merge / args.n, t_total / args.n)

    # disk: merge to a directory, load it, evaluate
    tmp = Path(tempfile.mkdtemp(prefix="search-bench-"))
    t_merge = t_total = 0.0
    try:
        for i, r in enumerate(recipes):
            out = tmp / f"c{i}"
            t0 = time.perf_counter()
            merge(r, out)
            m, t = load_model(out, dtype=torch.float32)
            t1 = time.perf_counter()
            evaluate(m, t, tasks, split="validation", limit=args.limit)
            t_merge += t1 - t0
            t_total += time.perf_counter() - t0
            shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    disk = (t_merge / args.n, t_total / args.n)

    nparams = sum(p.numel() for p in model.parameters())
    print(f"zoo {zoo.name}, family {args.family}: {len(models)} models of {nparams / 1e6:.2f}M params; "
          f"tasks {args.tasks}, limit {args.limit}, {args.n} candidates, {args.threads} thread(s)\n")
    print("| path | merge (+load) s/cand | merge+eval s/cand | candidates/min | merge-only candidates/min |")
    print("|---|---|---|---|---|")
    for name, (m, t) in (("in-memory (merge_into)", mem), ("disk (merge, reload)", disk)):
        print(f"| {name} | {m:.3f} | {t:.3f} | {60 / t:.1f} | {60 / m:.0f} |")


if __name__ == "__main__":
    main()
