"""Does `modelglue search` return a merge above its best member? The command a new user runs.

    python benchmarks/search_beats_members.py [--zoo DIR] [--family A] [--budget 60] [--seed 0]
                                              [--strategy cmaes] [--extra "--method linear"] [--json OUT]

Runs, as a subprocess, exactly `modelglue search --models <the family's model dirs>
--tasks all --strategy cmaes --budget 60 --out OUT` (no --base, no other tuning flag)
on one family of the demo zoo (default: the full zoo, built and cached on first use),
then reads OUT/results.json and prints the chosen merge against the best single model,
on validation (what the search saw) and on the test split (what it never saw), with
the evaluations spent and the wall time. `--extra` appends flags, for comparisons
(e.g. `--extra "--method linear --init uniform --no-multi-fidelity"`, the old defaults).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=None, help="demo zoo root (default: the cached full demo zoo)")
    ap.add_argument("--family", default="A")
    ap.add_argument("--budget", default="60")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--strategy", default="cmaes")
    ap.add_argument("--extra", default="", help="more search flags, quoted")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    zoo = args.zoo
    if zoo is None:
        from modelglue.demo import demo_zoo

        zoo = demo_zoo(scale="full")
    manifest = json.loads((zoo / "zoo.json").read_text())
    models = [str(zoo / m["name"]) for m in manifest["models"] if m["family"] == args.family]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "search"
        cmd = [sys.executable, "-m", "modelglue.cli", "search", "--models", *models, "--tasks", "all",
               "--strategy", args.strategy, "--budget", args.budget, "--seed", args.seed, "--out", str(out),
               "--quiet", *shlex.split(args.extra)]
        print("$ modelglue " + " ".join(shlex.quote(c) for c in cmd[3:]), flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        res = json.loads((out / "results.json").read_text())
    singles = {k: v for k, v in res["baselines"].items() if k.startswith("single:")}
    best_val = max(singles.values(), key=lambda e: e["validation"]["mean"])
    best_test = max(singles.values(), key=lambda e: e["test"]["mean"])
    best = res["best"]
    figures = {
        "family": args.family, "models": len(models), "budget": float(args.budget), "extra": args.extra,
        "verdict": res["verdict"], "best_method": res["best_method"], "nonzero_models": best["nonzero_models"],
        "merge_validation": best["validation"]["mean"], "merge_test": best["test"]["mean"],
        "best_member_by_validation": best_val["origin"], "its_test": best_val["test"]["mean"],
        "best_member_test": best_test["test"]["mean"], "best_member_on_test": best_test["origin"],
        "full_evaluations": res["full_evaluations"], "subset_evaluations": res["subset_evaluations"],
        "budget_used": res["budget_used"], "wall_s": round(wall, 1),
    }
    print(f"| family {args.family} ({len(models)} models), budget {args.budget} {args.extra} | validation | test |")
    print("|---|---|---|")
    print(f"| chosen: {best['origin']} ({res['best_method'] or 'single'}, {best['nonzero_models']} models) "
          f"| {best['validation']['mean']:.3f} | {best['test']['mean']:.3f} |")
    print(f"| best member on validation: {best_val['origin']} | {best_val['validation']['mean']:.3f} "
          f"| {best_val['test']['mean']:.3f} |")
    print(f"| difference (test) | | {best['test']['mean'] - best_test['test']['mean']:+.3f} vs the best member on "
          f"test ({best_test['origin']}) |")
    print(f"{res['verdict']}; {res['full_evaluations']} full + {res['subset_evaluations']} subset evaluations "
          f"(budget used {res['budget_used']}), {wall:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
