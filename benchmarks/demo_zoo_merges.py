"""Do the demo zoo's family-A fine-tunes merge well? (issue 15, the demo-zoo half)

    python benchmarks/demo_zoo_merges.py --zoo PATH [--seed N] [--scale full] [--json OUT]

Builds the zoo at PATH first if it is missing. Then scores, on the test split of every
built-in task (the same numbers as the zoo's scores.json):

  - every family-A single model (test mean and per task);
  - task arithmetic (lambda 1) of the two best gentle fine-tunes at weight 1 each;
  - task arithmetic of all gentle fine-tunes at weight 1 and at weight 1/k;
  - TIES of all gentle fine-tunes (density 0.5, weight 1);
  - the linear average of all of family A (base, gentle and harsh).

Merges run in memory into one resident model (`MergeScorer`: no disk), one thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _row(scores: dict[str, float]) -> dict:
    return {"mean": sum(scores.values()) / len(scores), "scores": scores}


def run(zoo: Path, limit: int | None = None) -> dict:
    from modelglue.evaluate.tasks import BUILTIN_TASKS
    from modelglue.search.scorers import MergeScorer

    manifest = json.loads((zoo / "zoo.json").read_text())
    fam_a = [e for e in manifest["models"] if e["family"] == "A"]
    base = str(zoo / next(e["path"] for e in fam_a if e["role"] == "base"))
    gentle = [e["name"] for e in fam_a if e["role"] == "gentle"]
    path = {e["name"]: str(zoo / e["path"]) for e in fam_a}
    scorer = MergeScorer(list(BUILTIN_TASKS), base, limit=limit)

    def score(recipe):
        return _row(scorer(recipe, "test"))

    def linear(names, weight=1.0):
        return {"merge_method": "linear", "dtype": "float32",
                "models": [{"model": path[n], "parameters": {"weight": weight}} for n in names]}

    def task_vectors(method, names, weight, **params):
        return {"merge_method": method, "base_model": base, "dtype": "float32",
                "models": [{"model": path[n], "parameters": {"weight": weight, **params}}
                           for n in names if path[n] != base]}

    rows: dict[str, dict] = {}
    for e in fam_a:
        rows[e["name"]] = {**score(linear([e["name"]])), "kind": f"single ({e['role']})"}
    best2 = sorted(gentle, key=lambda n: rows[n]["mean"], reverse=True)[:2]
    k = len(gentle)
    merges = {
        f"TA pair {'+'.join(best2)} w=1": task_vectors("task_arithmetic", best2, 1.0),
        f"TA all {k} gentle w=1": task_vectors("task_arithmetic", gentle, 1.0),
        f"TA all {k} gentle w=1/{k}": task_vectors("task_arithmetic", gentle, round(1 / k, 4)),
        f"TIES all {k} gentle d=0.5 w=1": task_vectors("ties", gentle, 1.0, density=0.5),
        f"linear average of family A ({len(fam_a)})": linear([e["name"] for e in fam_a]),
    }
    for name, recipe in merges.items():
        rows[name] = {**score(recipe), "kind": "merge"}
    best_single = max(rows[e["name"]]["mean"] for e in fam_a)
    best_pair_member = max(rows[n]["mean"] for n in best2)
    return {"zoo": str(zoo), "scale": manifest["scale"], "seed": manifest["seed"],
            "build_seconds": manifest.get("build_seconds"), "limit": limit, "rows": rows,
            "best_single": best_single, "best_pair_member": best_pair_member, "pair": best2}


def format_report(res: dict) -> str:
    rows = res["rows"]
    tasks = list(next(iter(rows.values()))["scores"])
    width = max(len(n) for n in rows) + 2
    out = [f"{'model / merge':<{width}}" + "".join(f"{t:>7}" for t in tasks) + "    mean   vs best"]
    for name, r in rows.items():
        ref = res["best_pair_member"] if name.startswith("TA pair") else res["best_single"]
        delta = "" if r["kind"] != "merge" else f"  {r['mean'] - ref:+.3f}"
        out.append(f"{name:<{width}}" + "".join(f"{r['scores'][t]:7.3f}" for t in tasks)
                   + f"  {r['mean']:6.3f}" + delta)
    out.append(f"(vs best: a pair against its better member, other merges against the best family-A "
               f"single, {res['best_single']:.3f}; test split, {res['limit'] or 'all'} examples per task)")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", required=True, type=Path, help="a demo zoo (built there if missing)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the zoo to build (if missing)")
    ap.add_argument("--scale", default="full", choices=["full", "tiny"], help="scale of the zoo to build")
    ap.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    if not (args.zoo / "zoo.json").is_file():
        from modelglue.demo import build_demo_zoo

        t0 = time.time()
        build_demo_zoo(args.zoo, seed=args.seed, scale=args.scale, force=args.zoo.exists())
        print(f"built in {time.time() - t0:.0f} s wall", file=sys.stderr)
    t0 = time.time()
    res = run(args.zoo, args.limit)
    res["bench_seconds"] = round(time.time() - t0, 1)
    print(format_report(res))
    print(f"zoo built in {res['build_seconds']} s (training); merges scored in {res['bench_seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
