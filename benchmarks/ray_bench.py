"""Candidates per minute on the local backend and on Ray with 1 and 2 workers, same run.

    python benchmarks/ray_bench.py [--zoo DIR] [--family A] [--tasks add,rev,sort] [--limit 40] [--n 24]

Scores the same `--n` random linear merges of one demo-zoo family (real in-memory merge
+ evaluation, `MergeScorer`) three ways: in this process (`LocalBackend`), on a local Ray
instance with one worker, and with two workers (one CPU each). Each backend is warmed up
on one candidate first (Ray start-up and each worker's resident model are reported
apart, not counted per candidate). Ray's overhead per candidate = (1-worker time - local
time) / n. Default zoo: the cached tiny demo zoo.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=None)
    ap.add_argument("--family", default="A")
    ap.add_argument("--tasks", default="add,rev,sort")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--n", type=int, default=24)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import torch

    from modelglue.search import MergeScorer, SearchSpace
    from modelglue.search.backends import Job, LocalBackend, RayBackend

    torch.set_num_threads(1)
    zoo = args.zoo
    if zoo is None:
        from modelglue.demo import demo_zoo

        zoo = demo_zoo(scale="tiny")
    manifest = json.loads((zoo / "zoo.json").read_text())
    models = [str(zoo / m["name"]) for m in manifest["models"] if m["family"] == args.family]
    space = SearchSpace(models, method="linear")
    rng = np.random.default_rng(0)
    cands = [space.decode(rng.uniform(0, 1, space.dim)) for _ in range(args.n + 1)]
    jobs = [Job(c.key, "validation", c.recipe) for c in cands]
    scorer = MergeScorer(args.tasks, models[0], limit=args.limit)

    def timed(backend) -> tuple[float, float, list]:
        start = time.perf_counter()
        list(backend.run(scorer, jobs[:1]))  # start-up: Ray, workers, resident models
        warm = time.perf_counter() - start
        start = time.perf_counter()
        results = sorted(backend.run(scorer, jobs[1:]), key=lambda r: r.job.key)
        return warm, time.perf_counter() - start, [r.scores for r in results]

    rows = {}
    rows["local"] = timed(LocalBackend())
    for workers in (1, 2):
        backend = RayBackend(None, num_workers=workers)
        try:
            rows[f"ray, {workers} worker{'s' * (workers > 1)}"] = timed(backend)
        finally:
            backend.close()
    same = all(r[2] == rows["local"][2] for r in rows.values())
    print(f"{args.n} candidates, family {args.family} ({len(models)} models), tasks {args.tasks}, limit {args.limit}, "
          f"{os.cpu_count()} CPUs; identical scores on every backend: {same}")
    print("| backend | start-up (s) | time for n (s) | candidates / min | vs local |")
    print("|---|---|---|---|---|")
    base = rows["local"][1]
    for name, (warm, t, _) in rows.items():
        print(f"| {name} | {warm:.1f} | {t:.1f} | {60 * args.n / t:.0f} | {base / t:.2f}x |")
    print(f"Ray overhead per candidate (1 worker vs local): {(rows['ray, 1 worker'][1] - base) / args.n * 1000:.0f} ms")


if __name__ == "__main__":
    main()
