"""Model-GLUE end to end: cluster the zoo, merge each cluster well, mix the clusters.

    analyze  -> compatibility groups and mergeable clusters            (modelglue.zoo)
    singles  -> every model scored on validation and test               (modelglue.evaluate)
    merge    -> per cluster: search strategies within the budget, keep the best
                on the validation mean, write the merged model          (modelglue.search, merge)
    mix      -> a model-level mixture of the cluster models that win at least one
                task, with the router that scores best on validation    (modelglue.mixture)
    report   -> test-split table against the baselines, plots, report.md/html, results.json

Every step writes its outputs atomically under --out and is reused on a rerun: analysis
and merged/mixed models by directory, searches through their journals, scores through
the evaluator's cache.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modelglue.errors import ModelGlueError

CONFIG_KEYS = {
    "models", "tasks", "budget", "limit", "test_limit", "strategies", "method", "routers", "threshold",
    "cluster_method", "seed", "base", "baselines", "layer_groups",
}


@dataclass
class GlueConfig:
    models: list[Path]
    tasks: list[str]
    out_dir: Path
    budget: int = 24  # scored candidates per search, per cluster
    limit: int | None = 100  # validation examples per task (search and selection)
    test_limit: int | None = None  # test examples per task (reporting)
    strategies: list[str] = field(default_factory=lambda: ["heuristic-average", "cmaes"])
    method: str = "linear"
    routers: list[str] = field(default_factory=lambda: ["hidden", "trained"])
    threshold: float = 0.95
    cluster_method: str = "hierarchical"
    seed: int = 0
    base: Path | None = None
    baselines: bool = True  # also build the merge-everything and FFN-MoE baselines
    layer_groups: int = 1


def load_glue_config(path: str | Path, out_dir: str | Path, **overrides: Any) -> GlueConfig:
    """Read ZOO.yml: models (a list of directories, or a folder holding them), tasks, and options."""
    path = Path(path)
    if not path.is_file():
        raise ModelGlueError(f"{path}: zoo file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ModelGlueError(f"{path}: YAML syntax error{at}") from None
    if not isinstance(raw, dict):
        raise ModelGlueError(f"{path}: expected a mapping with 'models' and 'tasks'")
    unknown = sorted(set(raw) - CONFIG_KEYS)
    if unknown:
        raise ModelGlueError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(CONFIG_KEYS))})")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("models", "tasks"):
        if not raw.get(key):
            raise ModelGlueError(f"{path}: missing key {key!r}")
    base_dir = path.parent

    def resolve(p: Any, key: str) -> Path:
        if not isinstance(p, (str, Path)):
            raise ModelGlueError(f"{path}: {key}: expected a path, got {p!r}")
        q = Path(p).expanduser()
        return q if q.is_absolute() or q.exists() else base_dir / q

    models = raw["models"] if isinstance(raw["models"], list) else [raw["models"]]
    from modelglue.zoo import expand_model_dirs

    model_dirs = expand_model_dirs([resolve(m, "models") for m in models])
    tasks = raw["tasks"] if isinstance(raw["tasks"], list) else str(raw["tasks"]).split(",")
    tasks = [str(resolve(t, "tasks")) if str(t).endswith(".jsonl") else str(t) for t in tasks]
    cfg = GlueConfig(models=[Path(m) for m in model_dirs], tasks=tasks, out_dir=Path(out_dir))
    for key in CONFIG_KEYS - {"models", "tasks"}:
        if key in raw and raw[key] is not None:
            value = raw[key]
            if key == "base":
                value = resolve(value, "base")
            elif key in ("strategies", "routers") and isinstance(value, str):
                value = [v.strip() for v in value.split(",")]
            setattr(cfg, key, value)
    _check_config(cfg, str(path))
    return cfg


def _check_config(cfg: GlueConfig, where: str) -> None:
    from modelglue.methods import get_method
    from modelglue.search.strategies import STRATEGIES

    if not isinstance(cfg.budget, int) or cfg.budget < 1:
        raise ModelGlueError(f"{where}: budget must be a positive integer")
    for s in cfg.strategies:
        if s not in STRATEGIES:
            raise ModelGlueError(f"{where}: unknown strategy {s!r} (known: {', '.join(sorted(STRATEGIES))})")
    get_method(cfg.method)
    for r in cfg.routers:
        if r not in ("hidden", "embed", "trained", "random"):
            raise ModelGlueError(f"{where}: unknown router {r!r} (known: hidden, embed, trained, random)")
    for lim in (cfg.limit, cfg.test_limit):
        if lim is not None and (not isinstance(lim, int) or lim < 1):
            raise ModelGlueError(f"{where}: limit must be a positive integer")


# ----------------------------------------------------------------------------- the pipeline


@dataclass
class Entry:
    """One row of the results table."""

    name: str
    kind: str  # single | cluster-merge | uniform-merge | merge-all | ffn-moe | model-glue
    path: str
    validation: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def test_mean(self) -> float:
        return sum(self.test.values()) / max(1, len(self.test))

    @property
    def validation_mean(self) -> float:
        return sum(self.validation.values()) / max(1, len(self.validation))


class _Log:
    def __init__(self, quiet: bool):
        self.quiet, self.t0 = quiet, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def run_glue(cfg: GlueConfig, *, quiet: bool = False) -> dict:
    """Run the whole pipeline into cfg.out_dir; returns the results (also results.json)."""
    from modelglue.evaluate import evaluate_dir
    from modelglue.zoo import analyze_zoo

    log = _Log(quiet)
    out = cfg.out_dir
    for m in cfg.models:
        if out.resolve() == m.resolve() or out.resolve().is_relative_to(m.resolve()):
            raise ModelGlueError(f"output directory {out} lies inside input model {m}")
    out.mkdir(parents=True, exist_ok=True)
    tasks = cfg.tasks
    score = lambda path, split: _scores(evaluate_dir(path, tasks, split=split, limit=cfg.limit if split == "validation" else cfg.test_limit))  # noqa: E731

    # 1. analysis
    log(f"analyzing {len(cfg.models)} models")
    analysis = analyze_zoo([str(m) for m in cfg.models], base=str(cfg.base) if cfg.base else None,
                           out_dir=out / "analysis", threshold=cfg.threshold, method=cfg.cluster_method)
    clusters = [[Path(p) for p in c] for c in analysis.cluster_paths]
    bases = [Path(p) for p in analysis.cluster_base_paths]
    log(f"{len(analysis.groups)} compatibility groups, {len(clusters)} clusters: "
        + "; ".join(", ".join(p.name for p in c) for c in clusters))

    # 2. every single model
    singles: list[Entry] = []
    for m in cfg.models:
        log(f"scoring {m.name}")
        singles.append(Entry(m.name, "single", str(m), score(m, "validation"), score(m, "test")))
    by_path = {Path(e.path).resolve(): e for e in singles}

    # 3. per cluster: the best merge found within the budget
    cluster_entries: list[Entry] = []
    uniform_entries: list[Entry] = []
    searches: list[dict] = []
    for k, (members, base) in enumerate(zip(clusters, bases)):
        if len(members) == 1:
            e = by_path[members[0].resolve()]
            cluster_entries.append(Entry(f"cluster{k}", "cluster-merge", e.path, e.validation, e.test, note="single member"))
            continue
        best = None
        for strategy in cfg.strategies:
            log(f"cluster {k}: {strategy} over {len(members)} models (budget {cfg.budget})")
            result = _search(members, base, cfg, strategy, out / "clusters" / f"cluster{k}" / f"search-{strategy}")
            searches.append({"cluster": k, "strategy": strategy, "dir": str(result.out_dir),
                             "validation": result.best.fitness, "scored_now": result.scored_now,
                             "nonzero_models": result.best.candidate.nonzero()})
            if best is None or result.best.fitness > best.best.fitness:
                best = result
            if "uniform" in result.baselines and not any(u.name == f"uniform{k}" for u in uniform_entries):
                val, test = result.baselines["uniform"]
                uniform_entries.append(Entry(f"uniform{k}", "uniform-merge", "", val.scores, test.scores if test else {},
                                             note=f"linear, equal weights over {len(members)} models"))
        recipe = best.best.candidate.recipe
        model_dir = _merge_once(recipe, out / "clusters" / f"cluster{k}" / "model", cfg.seed)
        log(f"cluster {k}: best is {best.config.strategy} (validation {best.best.fitness:.3f}), merged into {model_dir}")
        cluster_entries.append(Entry(f"cluster{k}", "cluster-merge", str(model_dir), score(model_dir, "validation"),
                                     score(model_dir, "test"), note=f"{best.config.strategy}, {cfg.method}, "
                                     f"{best.best.candidate.nonzero()} of {len(members)} models"))

    # 4. the mixture of cluster models, with the best router on validation
    final = _mix_clusters(cluster_entries, cfg, out, score, log)

    # 5. baselines that need building
    extra: list[Entry] = []
    if cfg.baselines:
        extra += _group_baselines(analysis, cfg, out, score, log)

    entries = singles + uniform_entries + extra + [e for e in cluster_entries if e.note != "single member"] + [final]
    best_single = max(singles, key=lambda e: e.test_mean)
    results = {
        "config": {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "models" else v)
                   for k, v in asdict(cfg).items()},
        "tasks": list(final.test) or list(singles[0].test),
        "clusters": [[str(p) for p in c] for c in clusters],
        "cluster_bases": [str(b) for b in bases],
        "groups": [[analysis.paths[i] for i in g] for g in analysis.groups],
        "searches": searches,
        "entries": [{**asdict(e), "test_mean": e.test_mean, "validation_mean": e.validation_mean} for e in entries],
        "best_single": {"name": best_single.name, "test_mean": best_single.test_mean},
        "final": {"name": final.name, "path": final.path, "test_mean": final.test_mean,
                  "gain_over_best_single": final.test_mean - best_single.test_mean},
        "seconds": round(time.perf_counter() - log.t0, 1),
    }
    from modelglue.glue_report import write_report

    write_report(results, out)
    log(f"report: {out / 'report.html'}")
    return results


def _scores(res: dict) -> dict[str, float]:
    return {k: float(v) for k, v in res["scores"].items()}


def _search(members: list[Path], base: Path, cfg: GlueConfig, strategy: str, out: Path):
    from modelglue.search import search

    return search([str(m) for m in members], cfg.tasks, out, strategy=strategy, base=str(base), method=cfg.method,
                  budget=cfg.budget, resume=True, seed=cfg.seed, limit=cfg.limit, layer_groups=cfg.layer_groups,
                  progress=False)


def _merge_once(recipe: dict, out: Path, seed: int) -> Path:
    """Merge unless `out` already holds this very recipe (a finished earlier run)."""
    from modelglue.merge import merge
    from modelglue.recipe import recipe_to_yaml

    saved = out / "mergekit_config.yml"
    if saved.is_file() and saved.read_text() == recipe_to_yaml(recipe):
        return out
    return merge(recipe, out, seed=seed, overwrite=True)


def _router_examples(experts: list[Entry], tasks: list[str], limit: int | None) -> list[dict]:
    """Validation prompts labelled with the expert that scores best on their task."""
    from modelglue.evaluate.tasks import load_tasks

    rows = []
    for task in load_tasks(tasks, "validation"):
        winner = max(range(len(experts)), key=lambda i: (experts[i].validation.get(task.name, 0.0), -i))
        for ex in task.examples[:limit]:
            rows.append({"prompt": ex["prompt"], "expert": winner})
    return rows


def _mix_clusters(cluster_entries: list[Entry], cfg: GlueConfig, out: Path, score, log) -> Entry:
    from modelglue.mixture import mix

    tasks = list(cluster_entries[0].validation)
    winners = {max(range(len(cluster_entries)), key=lambda i: (cluster_entries[i].validation.get(t, 0.0),
                                                               cluster_entries[i].validation_mean, -i)) for t in tasks}
    experts = [cluster_entries[i] for i in sorted(winners)]
    if len(experts) == 1:
        e = experts[0]
        log("one cluster model wins every task: no mixture needed")
        return Entry("model-glue", "model-glue", e.path, e.validation, e.test, note=f"= {e.name}")
    log(f"mixing {len(experts)} cluster models: {', '.join(e.name for e in experts)}")
    data = _router_examples(experts, cfg.tasks, cfg.limit)
    best: Entry | None = None
    for router in cfg.routers:
        target = out / "mixtures" / f"model-{router}"
        if not (target / "config.json").is_file():
            mix("model", [e.path for e in experts], target, router=router, router_data=data, seed=cfg.seed, overwrite=True)
        val = score(target, "validation")
        log(f"router {router}: validation mean {sum(val.values()) / max(1, len(val)):.3f}")
        cand = Entry("model-glue", "model-glue", str(target), val, {}, note=f"model-level mixture of "
                     f"{' + '.join(e.name for e in experts)}, router {router}")
        if best is None or cand.validation_mean > best.validation_mean:
            best = cand
    assert best is not None
    best.test = score(Path(best.path), "test")
    final = out / "final"
    _link_final(Path(best.path), final)
    return best


def _link_final(src: Path, final: Path) -> None:
    """out/final names the chosen model: a relative symlink (a copy where links fail)."""
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.is_dir():
        shutil.rmtree(final)
    try:
        final.symlink_to(os.path.relpath(src, final.parent), target_is_directory=True)
    except OSError:
        shutil.copytree(src, final)


def _group_baselines(analysis, cfg: GlueConfig, out: Path, score, log) -> list[Entry]:
    """Merge-everything of the largest compatible group, and an FFN-level MoE of it."""
    from modelglue.mixture import mix

    group = max(analysis.groups, key=len)
    members = [Path(analysis.paths[i]) for i in group]
    if len(members) < 2:
        return []
    entries = []
    recipe = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in members]}
    log(f"baseline: merge all {len(members)} models of the largest compatible group")
    merged = _merge_once(recipe, out / "baselines" / "merge-all", cfg.seed)
    entries.append(Entry("merge-all", "merge-all", str(merged), score(merged, "validation"), score(merged, "test"),
                         note=f"uniform linear merge of {len(members)} same-architecture models"))
    # FFN-level MoE of the group's specialists: the member that is best on each task (a
    # member that wins nothing would get no router prompts and only dilute the gates).
    singles = [Entry(m.name, "single", str(m), score(m, "validation")) for m in members]
    tasks = list(singles[0].validation)
    winners = sorted({max(range(len(singles)), key=lambda i: (singles[i].validation.get(t, 0.0), -i)) for t in tasks})
    experts = [singles[i] for i in winners]
    ffn = out / "baselines" / "ffn-moe"
    try:
        if len(experts) < 2:
            raise ModelGlueError("one model wins every task")
        if not (ffn / "config.json").is_file():
            log(f"baseline: FFN-level MoE of {len(experts)} experts: {', '.join(e.name for e in experts)}")
            data = _router_examples(experts, cfg.tasks, cfg.limit)
            base = analysis.group_bases[analysis.groups.index(group)] if analysis.group_bases else group[0]
            mix("ffn", [e.path for e in experts], ffn, router="hidden", router_data=data,
                base=analysis.paths[base], seed=cfg.seed, overwrite=True)
        entries.append(Entry("ffn-moe", "ffn-moe", str(ffn), score(ffn, "validation"), score(ffn, "test"),
                             note=f"Mixtral-style MoE of {len(experts)} task winners ({', '.join(e.name for e in experts)}), "
                                  "top-2, hidden-state router, attention from the group base"))
    except ModelGlueError as exc:  # e.g. an architecture Mixtral cannot hold: report, don't fail the pipeline
        log(f"baseline: FFN-level MoE skipped ({exc})")
    return entries


def demo_config(zoo_root: Path, out_dir: Path, quick: bool = False) -> GlueConfig:
    """The settings `modelglue demo` uses: every model of the demo zoo, every built-in task."""
    from modelglue.zoo import expand_model_dirs

    cfg = GlueConfig(models=[Path(p) for p in expand_model_dirs([str(zoo_root)])], tasks=["all"], out_dir=out_dir)
    if quick:  # for tests: a tiny zoo, small budgets, few examples
        cfg.budget, cfg.limit, cfg.test_limit = 6, 40, 60
        cfg.strategies, cfg.routers = ["heuristic-average", "cmaes"], ["hidden"]
    return cfg
