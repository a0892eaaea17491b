"""Model-GLUE end to end: cluster the zoo, merge each cluster well, mix the clusters.

    analyze  -> compatibility groups and mergeable clusters            (modelglue.zoo)
    singles  -> every model scored on validation and test               (modelglue.evaluate)
    merge    -> per cluster: search strategies (and, with method auto, merge methods)
                within the budget, keep the best on the validation mean (never below
                the cluster's best member), write the merged model      (modelglue.search, merge)
    align    -> clusters whose vocabularies differ only by added tokens or padding rows:
                one union-tokenizer merge, kept when it scores as well as the best of them
    mix      -> a model-level mixture of the cluster models that win at least one
                task, with the router that scores best on validation    (modelglue.mixture)
    ablate   -> each cluster merge vs its best member, and the same mixture built from
                each cluster's best member: what merging adds on top of routing
    pareto   -> the largest cluster's front on the two tasks its members trade off most
    report   -> test-split table against the baselines, plots, report.md/html, results.json

Every step writes its outputs atomically under --out and is reused on a rerun: analysis
and merged/mixed models by directory, searches through their journals, scores through
the evaluator's cache.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BeforeValidator, Field, StrictBool, StrictInt, TypeAdapter, ValidationError,
                      ValidationInfo)

from modelglue.errors import ModelGlueError, did_you_mean
from modelglue.io.paths import check_outside_inputs


def _positive(value: int, info: ValidationInfo) -> int:
    if value < 1:
        raise ValueError(f"{info.field_name} must be a positive integer")
    return value


def _strategies(names: list[str]) -> list[str]:
    from modelglue.search.strategies import STRATEGIES

    for name in names:
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}{did_you_mean(name, STRATEGIES)} "
                             f"(known: {', '.join(sorted(STRATEGIES))})")
    return names


def _method(name: str) -> str:
    from modelglue.methods import get_method

    if name != "auto":
        try:
            get_method(name)
        except ModelGlueError as exc:  # an unknown method: its one-line error, with a near match
            raise ValueError(f"method: {exc}") from None
    return name


def _near_zoo_file(p: Path, info: ValidationInfo) -> Path:
    """A relative path is the working directory's if it exists there, else ZOO.yml's folder's."""
    p = p.expanduser()
    return p if p.is_absolute() or p.exists() or info.context is None else info.context / p


def _tasks(tasks: list[str], info: ValidationInfo) -> list[str]:
    return [str(_near_zoo_file(Path(t), info)) if t.endswith(".jsonl") else t for t in tasks]


def _model_dirs(dirs: list[Path]) -> list[Path]:
    from modelglue.zoo import expand_model_dirs

    return [Path(m) for m in expand_model_dirs(dirs)]


_split = BeforeValidator(lambda v: [s.strip() for s in v.split(",")] if isinstance(v, str) else v)  # 'a, b'
Positive = Annotated[StrictInt, AfterValidator(_positive)]
ZooPath = Annotated[Path, AfterValidator(_near_zoo_file)]


@dataclass
class GlueConfig:
    """The settings of a Model-GLUE run: ZOO.yml's keys (all fields but out_dir), checked
    by pydantic against these annotations (`load_glue_config`)."""

    models: Annotated[list[ZooPath], BeforeValidator(lambda v: v if isinstance(v, list) else [v]),
                      Field(min_length=1), AfterValidator(_model_dirs)]
    tasks: Annotated[list[str], _split, Field(min_length=1), AfterValidator(_tasks)]
    out_dir: Path
    budget: Positive = 24  # full-validation evaluations per search, per cluster
    limit: Positive | None = 100  # validation examples per task (search and selection)
    test_limit: Positive | None = None  # test examples per task (reporting)
    strategies: Annotated[list[str], _split, AfterValidator(_strategies)] = \
        field(default_factory=lambda: ["heuristic-average", "cmaes"])
    # auto: choose among linear, task_arithmetic, ties, dare_ties, ... per cluster
    method: Annotated[str, AfterValidator(_method)] = "auto"
    routers: Annotated[list[Literal["hidden", "embed", "trained", "random"]], _split] = \
        field(default_factory=lambda: ["hidden", "trained"])
    threshold: Annotated[float, Field(ge=-1, le=1)] = 0.95
    cluster_method: Literal["hierarchical", "paper"] = "hierarchical"
    seed: StrictInt = 0
    base: ZooPath | None = None
    baselines: StrictBool = True  # also build the merge-everything and FFN-MoE baselines
    layer_groups: Positive = 1
    pareto: StrictBool = True  # a Pareto front of the largest cluster on its two most trading-off tasks
    # its budget: a front needs a short run per task weighting, more than one best merge
    # does (default 2.5 x budget: 60 for the default 24)
    pareto_budget: Positive | None = None


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
    keys = set(GlueConfig.__dataclass_fields__) - {"out_dir"}
    for key in sorted(set(map(str, raw)) - keys):
        raise ModelGlueError(f"{path}: unknown key {key!r}{did_you_mean(key, keys)}")
    raw = {k: v for k, v in {**raw, **overrides}.items() if v is not None}  # null: the default
    try:
        return TypeAdapter(GlueConfig).validate_python({**raw, "out_dir": Path(out_dir)}, context=path.parent)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        if err["type"] == "missing" or (err["type"] == "too_short" and key in ("models", "tasks")):
            raise ModelGlueError(f"{path}: missing key {key!r}") from None
        if err["type"] == "value_error":  # our validators' messages name the key
            raise ModelGlueError(f"{path}: {err['ctx']['error']}") from None
        raise ModelGlueError(f"{path}: {key}: {err['msg'][0].lower()}{err['msg'][1:]}") from None


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
    router: str = ""  # mixtures: the router chosen on validation

    @property
    def test_mean(self) -> float:
        return sum(self.test.values()) / max(1, len(self.test))

    @property
    def validation_mean(self) -> float:
        return sum(self.validation.values()) / max(1, len(self.validation))


class _Log:
    def __init__(self, quiet: bool):
        self.quiet, self.t0 = quiet, time.perf_counter()

    @property
    def on(self) -> bool:
        return not self.quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def run_glue(cfg: GlueConfig, *, quiet: bool = False) -> dict:
    """Run the whole pipeline into cfg.out_dir; returns the results (also results.json)."""
    from modelglue.evaluate import evaluate_dir, unmarked_split

    log = _Log(quiet)
    out = cfg.out_dir
    check_outside_inputs(out, cfg.models)
    out.mkdir(parents=True, exist_ok=True)
    score = lambda path, split: _scores(evaluate_dir(path, cfg.tasks, split=split, limit=cfg.limit if split == "validation" else cfg.test_limit))  # noqa: E731
    for t in cfg.tasks:
        if t.endswith(".jsonl") and (how := unmarked_split(t)):
            log(how)
    analysis = _analyze(cfg, out, log)  # 1. analysis
    clusters = [[Path(p) for p in c] for c in analysis.cluster_paths]
    bases = [Path(p) for p in analysis.cluster_base_paths]
    singles: list[Entry] = []  # 2. every single model
    for m in cfg.models:
        log(f"scoring {m.name}")
        singles.append(Entry(m.name, "single", str(m), score(m, "validation"), score(m, "test")))
    by_path = {Path(e.path).resolve(): e for e in singles}
    merged = _ClusterMerges()  # 3. per cluster: the best merge found within the budget
    for k, (members, base) in enumerate(zip(clusters, bases)):
        merged.add(k, members, base, by_path, cfg, out, score, log)
    # 3b. clusters that merge after aligning their vocabularies: a union-tokenizer merge
    aligned, mix_inputs = _aligned_merges(analysis, merged.entries, cfg, out, score, log)
    # 4. the mixture of cluster models, with the best router on validation
    final = _mix_clusters(mix_inputs, cfg, out, score, log)
    _link_final(Path(final.path), out / "final")
    # 5. ablations: what merging added on top of routing
    best_members = [_best_member(c, by_path) for c in clusters]
    ablation = _ablation(clusters, merged.entries, best_members, merged.chosen, final, cfg, out, score, log,
                         merged_any=any(a["kept"] for a in aligned))
    pareto = _pareto(clusters, bases, cfg, out, log) if cfg.pareto else None
    extra = _group_baselines(analysis, cfg, out, score, log) if cfg.baselines else []  # 6. baselines
    entries = singles + merged.uniform + extra + [e for e in merged.entries if e.note != "single member"] + \
        [a["entry"] for a in aligned if a["entry"] is not None] + [final]
    results = _results(cfg, analysis, singles, entries, final, log)
    results.update(searches=merged.searches, ablation=ablation, pareto=pareto,
                   aligned_merges=[{k: v for k, v in a.items() if k != "entry"} for a in aligned])
    from modelglue.glue_report import write_report

    write_report(results, out)
    log(f"report: {out / 'report.html'}")
    return results


def _analyze(cfg: GlueConfig, out: Path, log):
    """The zoo analysis (out/analysis), logged with how its clusters can be joined."""
    from modelglue.zoo import analyze_zoo

    log(f"analyzing {len(cfg.models)} models")
    analysis = analyze_zoo([str(m) for m in cfg.models], base=str(cfg.base) if cfg.base else None,
                           out_dir=out / "analysis", threshold=cfg.threshold, method=cfg.cluster_method)
    log(f"{len(analysis.groups)} compatibility groups, {len(analysis.clusters)} clusters: "
        + "; ".join(", ".join(Path(p).name for p in c) for c in analysis.cluster_paths))
    for line in _join_notes(analysis):
        log(line)
    return analysis


def _join_notes(analysis) -> list[str]:
    """How groups that cannot merge directly are joined: after aligning vocabularies (glue
    tries a union-tokenizer merge of their cluster models, see `_aligned_merges`), or
    only by the mixture."""
    levels = analysis.merge_levels()
    return [f"groups {' + '.join(map(str, fam['groups']))} merge after aligning vocabularies ({'; '.join(fam['why'])})"
            for fam in levels["after_alignment"]] + \
        [f"groups {m['groups'][0]} and {m['groups'][1]}: mix only ({m['why']})" for m in levels["mix_only"]]


class _ClusterMerges:
    """Each cluster's model (its best merge, or its best member) and the searches behind it."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.uniform: list[Entry] = []
        self.searches: list[dict] = []
        self.chosen: list[Any] = []  # the search's pick per multi-member cluster

    def add(self, k: int, members: list[Path], base: Path, by_path: dict[Path, Entry], cfg: GlueConfig, out: Path,
            score, log) -> None:
        if len(members) == 1:
            e = by_path[members[0].resolve()]
            self.entries.append(Entry(f"cluster{k}", "cluster-merge", e.path, e.validation, e.test, note="single member"))
            return
        best = None
        for strategy in cfg.strategies:
            log(f"cluster {k}: {strategy} over {len(members)} models (budget {cfg.budget})")
            result = _search(members, base, cfg, strategy, out / "clusters" / f"cluster{k}" / f"search-{strategy}",
                             log=(lambda line, s=strategy: log(f"cluster {k}: {s}: {line}")) if log.on else None)
            log(f"cluster {k}: {strategy}: {result.verdict}")
            self.searches.append(_search_row(k, strategy, result))
            if best is None or result.best.fitness > best.best.fitness:
                best = result
            if "uniform" in result.baselines and not any(u.name == f"uniform{k}" for u in self.uniform):
                val, test = result.baselines["uniform"]
                self.uniform.append(Entry(f"uniform{k}", "uniform-merge", "", val.scores, test.scores if test else {},
                                          note=f"linear, equal weights over {len(members)} models"))
        self.entries.append(_cluster_model(k, members, best, by_path, cfg, out, score, log))
        self.chosen.append(best.best.candidate)


def _aligned_merges(analysis, cluster_entries: list[Entry], cfg: GlueConfig, out: Path, score,
                    log) -> tuple[list[dict], list[Entry]]:
    """Per alignment family (groups whose vocabularies differ only by added tokens or
    padding rows): a linear, equal-weight merge of its cluster models with a union
    tokenizer (`tokenizer_source: union`), in out/aligned/familyF. It replaces them in the
    mixture when it scores at least as well on validation as the best of them (one expert
    instead of several); otherwise they stay apart and the mixture joins them. Returns
    one row per family and the entries to mix."""
    rows, mix_inputs = [], list(cluster_entries)
    for f, fam in enumerate(analysis.merge_levels()["after_alignment"]):
        ks = [c for c, g in enumerate(analysis.cluster_groups) if g in fam["groups"]]
        members = [cluster_entries[k] for k in ks]
        best = max(members, key=lambda e: e.validation_mean)
        recipe = {"merge_method": "linear", "tokenizer_source": "union", "dtype": "float32",
                  "models": [{"model": p, "parameters": {"weight": 1.0}} for p in dict.fromkeys(e.path for e in members)]}
        row = {"family": f, "groups": fam["groups"], "clusters": [f"cluster{k}" for k in ks], "kept": False,
               "path": "", "validation_mean": None, "best_member": best.name, "entry": None}
        log(f"aligned family {f}: union-tokenizer merge of {', '.join(e.name for e in members)}")
        try:
            model_dir = _merge_once(recipe, out / "aligned" / f"family{f}", cfg.seed)
        except ModelGlueError as exc:
            log(f"aligned family {f}: union merge failed ({exc}); the clusters stay apart")
            rows.append({**row, "note": f"union merge failed: {exc}"})
            continue
        val = score(model_dir, "validation")
        row.update(path=str(model_dir), validation_mean=sum(val.values()) / max(1, len(val)))
        row["kept"] = row["validation_mean"] >= best.validation_mean
        verdict = "replaces them in the mixture" if row["kept"] else "scores below the best of them: kept apart"
        row["note"] = (f"union-tokenizer merge of {' + '.join(e.name for e in members)}: validation "
                       f"{row['validation_mean']:.3f} vs {best.name} {best.validation_mean:.3f}, {verdict}")
        log(f"aligned family {f}: {row['note']}")
        if row["kept"]:
            entry = Entry(f"aligned{f}", "aligned-merge", str(model_dir), val, score(model_dir, "test"), note=row["note"])
            row["entry"] = entry
            at = next(i for i, e in enumerate(mix_inputs) if any(e is m for m in members))  # keep the order
            mix_inputs = [e for e in mix_inputs if all(e is not m for m in members)]
            mix_inputs.insert(at, entry)
        rows.append(row)
    return rows, mix_inputs


def _search_row(k: int, strategy: str, result) -> dict:
    cand = result.best.candidate
    return {"cluster": k, "strategy": strategy, "dir": str(result.out_dir), "validation": result.best.fitness,
            "scored_now": result.scored_now, "nonzero_models": cand.nonzero(), "verdict": result.verdict,
            "method": cand.method if not cand.is_single else None,
            "full_evaluations": len(result.history), "subset_evaluations": len(result.screened)}


def _results(cfg: GlueConfig, analysis, singles: list[Entry], entries: list[Entry], final: Entry, log) -> dict:
    """results.json (the searches, ablation and Pareto front are added by the caller)."""
    best_single = max(singles, key=lambda e: e.test_mean)
    return {
        "config": {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "models" else v)
                   for k, v in asdict(cfg).items()},
        "tasks": list(final.test) or list(singles[0].test),
        "clusters": analysis.cluster_paths,
        "cluster_bases": analysis.cluster_base_paths,
        "groups": [[analysis.paths[i] for i in g] for g in analysis.groups],
        "merge_levels": analysis.merge_levels(),
        "join_notes": _join_notes(analysis),
        "searches": [], "ablation": None, "pareto": None,
        "entries": [{**asdict(e), "test_mean": e.test_mean, "validation_mean": e.validation_mean} for e in entries],
        "best_single": {"name": best_single.name, "test_mean": best_single.test_mean},
        "final": {"name": final.name, "path": final.path, "test_mean": final.test_mean,
                  "gain_over_best_single": final.test_mean - best_single.test_mean},
        "seconds": round(time.perf_counter() - log.t0, 1),
    }


def _scores(res: dict) -> dict[str, float]:
    return {k: float(v) for k, v in res["scores"].items()}


def _search(members: list[Path], base: Path, cfg: GlueConfig, strategy: str, out: Path, log=None):
    from modelglue.search import search

    return search([str(m) for m in members], cfg.tasks, out, strategy=strategy, base=str(base), method=cfg.method,
                  budget=cfg.budget, resume=True, seed=cfg.seed, limit=cfg.limit, layer_groups=cfg.layer_groups,
                  progress=log is not None, log=log)


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


def _mix_clusters(cluster_entries: list[Entry], cfg: GlueConfig, out: Path, score, log, *,
                  name: str = "model", routers: list[str] | None = None) -> Entry:
    """The model-level mixture of the entries that win a task, with the router that
    scores best on validation (out/mixtures/<name>-<router>)."""
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
    for router in routers or cfg.routers:
        target = out / "mixtures" / f"{name}-{router}"
        if not (target / "config.json").is_file():
            mix("model", [e.path for e in experts], target, router=router, router_data=data, seed=cfg.seed, overwrite=True)
        val = score(target, "validation")
        log(f"router {router}: validation mean {sum(val.values()) / max(1, len(val)):.3f}")
        cand = Entry("model-glue", "model-glue", str(target), val, {}, note=f"model-level mixture of "
                     f"{' + '.join(e.name for e in experts)}, router {router}{_tokenizer_note(target)}", router=router)
        if best is None or cand.validation_mean > best.validation_mean:
            best = cand
    assert best is not None
    best.test = score(Path(best.path), "test")
    return best


def _tokenizer_note(mixture_dir: Path) -> str:
    """Say so when the mixture's experts each read their own tokenizer (it is driven through text)."""
    try:
        shared = json.loads((mixture_dir / "config.json").read_text()).get("shared_tokenizer", True)
    except (OSError, ValueError):
        return ""
    return "" if shared else "; each expert reads its own tokenizer (routed and scored through text)"


def _best_member(members: list[Path], by_path: dict[Path, Entry]) -> Entry:
    """The member with the best validation mean (first on ties)."""
    entries = [by_path[m.resolve()] for m in members]
    return max(entries, key=lambda e: (e.validation_mean, -entries.index(e)))


def _cluster_model(k: int, members: list[Path], best, by_path: dict[Path, Entry], cfg: GlueConfig, out: Path,
                   score, log) -> Entry:
    """The cluster's model: the search's best merge, written to disk, unless no merge
    beat the best member on validation; then the member itself (never a "merge" below it)."""
    member = _best_member(members, by_path)
    cand = best.best.candidate
    if cand.is_single:
        log(f"cluster {k}: no merge beat the best member {member.name} on validation; keeping it")
        return Entry(f"cluster{k}", "cluster-merge", member.path, member.validation, member.test,
                     note=f"best member alone ({member.name}): no merge scored higher on validation")
    model_dir = _merge_once(cand.recipe, out / "clusters" / f"cluster{k}" / "model", cfg.seed)
    val = score(model_dir, "validation")
    if sum(val.values()) / max(1, len(val)) < member.validation_mean:
        # the written model (in its output dtype) can differ a little from the one scored in memory
        log(f"cluster {k}: the written merge scores below {member.name} on validation; keeping the member")
        return Entry(f"cluster{k}", "cluster-merge", member.path, member.validation, member.test,
                     note=f"best member alone ({member.name}): the written merge scored lower on validation")
    log(f"cluster {k}: {best.config.strategy} wins (validation {best.best.fitness:.3f} vs best member "
        f"{member.validation_mean:.3f}): {cand.describe()}; merged into {model_dir}")
    return Entry(f"cluster{k}", "cluster-merge", str(model_dir), val, score(model_dir, "test"),
                 note=f"{best.config.strategy}, {cand.method}, {cand.nonzero()} of {len(members)} models: "
                      f"{cand.describe()}")


def _ablation(clusters: list[list[Path]], cluster_entries: list[Entry], best_members: list[Entry], chosen: list,
              final: Entry, cfg: GlueConfig, out: Path, score, log, merged_any: bool = False) -> dict:
    """Each cluster's model vs its best member (test), the share of non-zero weights of
    each chosen merge, and the final mixture vs the same mixture of best members."""
    rows, picks = [], iter(chosen)
    for k, (members, entry, member) in enumerate(zip(clusters, cluster_entries, best_members)):
        cand = next(picks) if len(members) > 1 else None
        merged = cand is not None and not cand.is_single and Path(entry.path) != Path(member.path)
        nonzero = cand.nonzero() if merged else 1
        rows.append({"cluster": f"cluster{k}", "members": len(members), "best_member": member.name,
                     "best_member_test": member.test_mean, "best_member_validation": member.validation_mean,
                     "cluster_model_test": entry.test_mean, "cluster_model_validation": entry.validation_mean,
                     "merged": merged, "method": cand.method if merged else None,
                     "nonzero_models": nonzero, "nonzero_share": nonzero / len(members),
                     "delta_test": entry.test_mean - member.test_mean})
    if not merged_any and all(Path(e.path) == Path(m.path) for e, m in zip(cluster_entries, best_members)):
        singles_mix = final  # no cluster was merged: the two mixtures are the same model
    else:
        log("ablation: the same mixture of each cluster's best member")
        singles_mix = _mix_clusters(best_members, cfg, out, score, log, name="best-members",
                                    routers=[final.router] if final.router else None)
    return {"clusters": rows,
            "mixture": {"of_cluster_models_test": final.test_mean, "of_best_members_test": singles_mix.test_mean,
                        "merging_adds_test": final.test_mean - singles_mix.test_mean,
                        "of_best_members_path": singles_mix.path}}


def _tradeoff_tasks(members: list[Path], cfg: GlueConfig, score) -> list[str] | None:
    """The two tasks the members trade off most: the pair (t1, t2) whose specialists
    differ and where max over members of (score on t1 - score on t2) spreads widest."""
    vals = [score(m, "validation") for m in members]
    tasks = list(vals[0])
    best_pair, spread = None, 0.0
    for i, a in enumerate(tasks):
        for b in tasks[i + 1:]:
            top_a = max(range(len(vals)), key=lambda j: vals[j][a])
            top_b = max(range(len(vals)), key=lambda j: vals[j][b])
            if top_a == top_b:
                continue
            gap = (vals[top_a][a] - vals[top_b][a]) + (vals[top_b][b] - vals[top_a][b])
            if gap > spread:
                best_pair, spread = [a, b], gap
    return best_pair


def _pareto(clusters: list[list[Path]], bases: list[Path], cfg: GlueConfig, out: Path, log) -> dict | None:
    """A Pareto search over the largest cluster on the two tasks its members trade off most."""
    from modelglue.evaluate import evaluate_dir

    k = max(range(len(clusters)), key=lambda i: (len(clusters[i]), -i))
    members = clusters[k]
    if len(members) < 2:
        return None
    score = lambda path, split: _scores(evaluate_dir(path, cfg.tasks, split=split, limit=cfg.limit))  # noqa: E731
    pair = _tradeoff_tasks(members, cfg, score)
    if pair is None:
        log("pareto: no two tasks trade off inside the largest cluster; skipped")
        return None
    budget = cfg.pareto_budget or round(2.5 * cfg.budget)
    log(f"pareto: cluster {k}, tasks {pair[0]} vs {pair[1]} (budget {budget})")
    from modelglue.search import search

    res = search([str(m) for m in members], _task_specs(cfg.tasks, pair), out / "clusters" / f"cluster{k}" / "pareto",
                 strategy="pareto", base=str(bases[k]), method=cfg.method, budget=budget, resume=True, seed=cfg.seed,
                 limit=cfg.limit, progress=log.on, log=(lambda line: log(f"pareto: {line}")) if log.on else None)
    return {"cluster": f"cluster{k}", "tasks": pair, "dir": str(res.out_dir), "plot": str(res.out_dir / "pareto.png"),
            "front": [{"validation": v.scores, "test": t.scores if t else {}, "describe": v.candidate.describe(),
                       "method": None if v.candidate.is_single else v.candidate.method,
                       "nonzero_models": v.candidate.nonzero()}
                      for v, t in zip(res.front, res.front_test)]}


def _task_specs(tasks: list[str], names: list[str]) -> list[str]:
    """The task specs (built-in names or JSONL paths) that give the named tasks."""
    from modelglue.evaluate.tasks import load_tasks

    picked = []
    for spec in tasks:
        if spec.startswith("lm_eval:"):
            if spec.split(":", 1)[1] in [n.split(":", 1)[-1] for n in names]:
                picked.append(spec)
            continue
        for t in load_tasks(spec, "validation"):
            if t.name in names:
                picked.append(t.name if t.source == "builtin" else t.source)
    return list(dict.fromkeys(picked))


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
