"""Search outputs: best recipe YAML, results.json, plots, the summary table, the model.

results.json is written last (atomically): a directory holding it is a finished search.
Plots use matplotlib's object API (no pyplot, no display needed).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelglue.io.paths import atomic_write
from modelglue.recipe import recipe_to_yaml

if TYPE_CHECKING:  # run.py imports this module: its SearchResult is named, not imported
    from modelglue.search.context import Record
    from modelglue.search.space import SearchSpace


def _mean(rec: "Record | None") -> float | None:
    if rec is None or not rec.scores:
        return None
    return float(np.mean(list(rec.scores.values())))


def _entry(val: "Record", test: "Record | None") -> dict:
    c = val.candidate
    return {"origin": c.origin, "key": c.key, "recipe": c.recipe, **c.params(), "nonzero_models": c.nonzero(),
            "validation": {"scores": val.scores, "fitness": val.fitness, "mean": _mean(val)},
            "test": None if test is None else {"scores": test.scores, "mean": _mean(test)}}


def write_outputs(result: "SearchResult", space: "SearchSpace") -> None:
    out, cfg = result.out_dir, result.config
    best = result.best
    atomic_write(out / "best.yml", recipe_to_yaml(best.candidate.recipe))
    files = ["best.yml", "journal.sqlite"]
    if cfg.save_model:
        from modelglue.merge import merge

        merge(best.candidate.recipe, out / "model", seed=cfg.seed, overwrite=True)
        files.append("model/")
    files.append(plot_convergence(result, out / "convergence.png"))
    if result.front:
        files.append(plot_front(result, out / "pareto.png"))
    result.summary = summary_table(result, space)
    atomic_write(out / "summary.txt", result.summary + "\n")
    files.append("summary.txt")
    payload = {
        "strategy": cfg.strategy, "method": cfg.method, "methods_searched": result.methods,
        "best_method": best.candidate.method if not best.candidate.is_single else None,
        "single_model_wins": best.candidate.is_single, "verdict": result.verdict, "seed": cfg.seed,
        "budget_used": round(result.budget_used, 4), "full_evaluations": len(result.history),
        "subset_evaluations": len(result.screened), "notes": result.notes,
        "tasks": result.tasks, "task_weights": cfg.task_weights, "models": [space.label(i) for i in range(space.n)],
        "model_paths": space.members, "base": space.base_path, "scored_by_this_run": result.scored_now,
        "seconds": round(result.seconds, 2),
        "best": _entry(best, result.best_test),
        "front": [_entry(v, t) for v, t in zip(result.front, result.front_test)],
        "baselines": {k: _entry(v, t) for k, (v, t) in result.baselines.items()},
        "candidates": [_json_safe(r.to_json()) for r in result.history],
        "screened": [_json_safe(r.to_json()) for r in result.screened],
        "files": files + ["results.json"],
    }
    atomic_write(out / "results.json", json.dumps(_json_safe(payload), indent=1) + "\n")


def _json_safe(obj):
    """-inf fitness (infeasible candidates) is not JSON: write null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def summary_table(result: "SearchResult", space: "SearchSpace") -> str:
    tasks = result.tasks
    rows = [(label, v, t) for label, (v, t) in result.baselines.items()]
    rows += [(f"front[{i}]", v, t) for i, (v, t) in enumerate(zip(result.front, result.front_test))]
    rows.append((f"best ({result.config.strategy})", result.best, result.best_test))
    short = [t if len(t) <= 10 else t[:9] + "~" for t in tasks]
    head = ["merge", "models"] + [f"val:{t}" for t in short] + ["val fit", "test mean"]
    body = [[label, str(v.candidate.nonzero())] + [f"{v.scores.get(k, float('nan')):.3f}" for k in tasks]
            + [f"{v.fitness:.3f}", "-" if _mean(t) is None else f"{_mean(t):.3f}"] for label, v, t in rows]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]
    sub = f" + {len(result.screened)} on validation subsets" if result.screened else ""
    lines += [""] + [f"note: {n}" for n in result.notes] + [f"best: {result.best.candidate.describe()}",
              result.verdict,
              f"({len(result.history)} full evaluations{sub}, budget used {result.budget_used:.1f}, "
              f"{result.scored_now} scored by this run, {result.seconds:.1f}s; methods: {', '.join(result.methods)})"]
    return "\n".join(lines)


def plot_convergence(result: "SearchResult", path: Path) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.add_subplot()
    hist = [r for r in result.history if np.isfinite(r.fitness)]
    xs = [r.index + 1 for r in hist]
    ys = [r.fitness for r in hist]
    methods = sorted({r.candidate.method for r in hist if not r.candidate.is_single})
    for k, m in enumerate(methods):
        pts = [(x, y) for x, y, r in zip(xs, ys, hist) if r.candidate.method == m and not r.candidate.is_single]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, alpha=0.6, color=f"C{k % 10}", label=m)
    pts = [(x, y) for x, y, r in zip(xs, ys, hist) if r.candidate.is_single]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, marker="s", color="black", label="single model")
    ax.step(xs, np.maximum.accumulate(np.array(ys, dtype=float)), where="post", color="crimson", label="best so far")
    singles = [v.fitness for k, (v, _) in result.baselines.items() if k.startswith("single:")]
    if singles:
        ax.axhline(max(singles), color="gray", ls="--", lw=1, label="best single model")
    if "uniform" in result.baselines:
        ax.axhline(result.baselines["uniform"][0].fitness, color="gray", ls=":", lw=1, label="uniform merge")
    ax.set(xlabel="candidates scored on the full validation split", ylabel="validation fitness",
           title=f"{result.config.strategy} ({result.config.method})")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path.name


def plot_front(result: "SearchResult", path: Path) -> str:
    from matplotlib.figure import Figure

    t0, t1 = result.tasks[0], result.tasks[1]
    fig = Figure(figsize=(5.6, 5.0), dpi=110)
    ax = fig.add_subplot()
    pts = [r for r in result.history if r.candidate.feasible and r.scores]
    ax.scatter([r.scores[t0] for r in pts], [r.scores[t1] for r in pts], s=10, alpha=0.3, color="C0",
               label="candidates")
    fx = [r.scores[t0] for r in result.front]
    fy = [r.scores[t1] for r in result.front]
    ax.plot(fx, fy, "-o", color="C3", label=f"Pareto front ({len(result.front)})")
    for r in result.front:
        ax.annotate(str(r.candidate.nonzero()), (r.scores[t0], r.scores[t1]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    for k, (v, _) in result.baselines.items():
        ax.scatter([v.scores[t0]], [v.scores[t1]], marker="s" if k.startswith("single:") else "D", s=30,
                   color="black" if k.startswith("single:") else "C2")
        ax.annotate(k.split(":", 1)[-1], (v.scores[t0], v.scores[t1]), fontsize=7, xytext=(3, -9),
                    textcoords="offset points")
    ax.set(xlabel=f"{t0} (validation)", ylabel=f"{t1} (validation)")
    ax.set_title("Pareto front (numbers: models with non-zero weight)", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path.name
