"""Run every search strategy on family A of the demo zoo; print a markdown table.

    python benchmarks/search_show.py [--zoo DIR | --scale full|tiny] [--out bench-out/search]
                                     [--limit 50] [--budget 60] [--backend local]
                                     [--method task_arithmetic --gentle --init best-single --sigma 0.2]

With a task-vector --method (task_arithmetic, ties, ...) a_base is the --base and the
fine-tunes are merged (only the gentle ones with --gentle); with linear, all of family A.

Each strategy is one `modelglue search` run (the command lines are printed, so the
table can be reproduced by hand); outputs (results.json, plots) go to OUT/<strategy>.
Re-running resumes each finished search from its journal, so nothing is re-scored.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", type=Path, default=None)
    ap.add_argument("--scale", default="full", choices=["full", "tiny"])
    ap.add_argument("--out", type=Path, default=Path("bench-out/search"))
    ap.add_argument("--tasks", default=None, help="default: the zoo's base tasks")
    ap.add_argument("--pareto-tasks", default="add,rev")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--backend", default="local")
    ap.add_argument("--strategies", default="uniform,heuristic-average,heuristic-coefficient,heuristic-similarity,cmaes,pareto")
    ap.add_argument("--method", default="linear")
    ap.add_argument("--gentle", action="store_true", help="merge only the gentle fine-tunes")
    ap.add_argument("--init", default=None, help="cmaes start (uniform, best-single, heuristic)")
    ap.add_argument("--sigma", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    zoo = args.zoo
    if zoo is None:
        from modelglue.demo import demo_zoo

        zoo = demo_zoo(scale=args.scale)
    manifest = json.loads((zoo / "zoo.json").read_text())
    fam = [m for m in manifest["models"] if m["family"] == "A" and (m["role"] != "harsh" or not args.gentle)]
    base = next(str(zoo / m["path"]) for m in fam if m["role"] == "base")
    models = [str(zoo / m["path"]) for m in sorted(fam, key=lambda m: m["role"] != "base")]
    method_args = ["--method", args.method, "--seed", str(args.seed)]
    if args.method != "linear":  # task vectors: a_base is the base, the fine-tunes are merged
        models.remove(base)
        method_args += ["--base", base]
    tasks = args.tasks or ",".join(manifest["base_tasks"])
    rows = {}
    for strategy in args.strategies.split(","):
        out = args.out / strategy
        cmd = ["modelglue", "search", "--models", *models, "--tasks", args.pareto_tasks if strategy == "pareto" else tasks,
               "--strategy", strategy, "--limit", str(args.limit), "--out", str(out), "--backend", args.backend, "-q",
               *method_args]
        if strategy in ("cmaes", "pareto"):
            cmd += ["--budget", str(args.budget)]
        if strategy == "cmaes" and args.init:
            cmd += ["--init", args.init]
        if strategy == "cmaes" and args.sigma:
            cmd += ["--sigma", str(args.sigma)]
        if (out / "journal.sqlite").exists():
            cmd.append("--resume")
        print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
        res = subprocess.run([sys.executable, "-m", "modelglue.cli", *cmd[1:]], capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-2000:], file=sys.stderr)
            sys.exit(res.returncode)
        print(res.stdout, flush=True)
        rows[strategy] = json.loads((out / "results.json").read_text())

    print("\n| strategy | tasks | candidates | models in best | val mean (search) | test mean |")
    print("|---|---|---|---|---|---|")
    for strategy, d in rows.items():
        b = d["best"]
        print(f"| {strategy} | {','.join(d['tasks'])} | {d['budget_used']} | {b['nonzero_models']} | "
              f"{b['validation']['mean']:.3f} | {b['test']['mean']:.3f} |")
    ref = next((d for s, d in rows.items() if s != "pareto"), None)
    if ref:
        print("\n| single model / baseline | val mean | test mean |\n|---|---|---|")
        for name, e in ref["baselines"].items():
            print(f"| {name} | {e['validation']['mean']:.3f} | {e['test']['mean']:.3f} |")
    if "pareto" in rows:
        d = rows["pareto"]
        t0, t1 = d["tasks"][:2]
        print(f"\nPareto front ({len(d['front'])} points, validation; test in brackets):\n")
        print(f"| {t0} | {t1} | test {t0} | test {t1} | non-zero models | weights |\n|---|---|---|---|---|---|")
        for p in d["front"]:
            w = ", ".join(f"{m}={sum(x) / len(x):.2f}" for m, x in zip(p["models"], p["weights"]) if sum(x) > 0)
            print(f"| {p['validation']['scores'][t0]:.3f} | {p['validation']['scores'][t1]:.3f} | "
                  f"{p['test']['scores'][t0]:.3f} | {p['test']['scores'][t1]:.3f} | {p['nonzero_models']} | {w} |")


if __name__ == "__main__":
    main()
