"""The search driver: settings -> strategy -> journal -> best merge + report files.

    from modelglue.search import SearchConfig, run_search
    result = run_search(SearchConfig(models=["zoo/a_base", "zoo/a_gentle_add"], tasks="add,rev",
                                     strategy="cmaes", out_dir="out/search", budget=40))
    result.best.candidate.recipe, result.best_test.scores

The search sees only the validation split. It returns the best candidate it scored on
the full validation split, single models included (a search never returns less than
what it has seen), and says so plainly when a single model wins. When it ends, the
chosen merge (and, with baselines on, every single model and the uniform merge) is
scored on the test split.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from modelglue.errors import ModelGlueError
from modelglue.io.lora import model_directory
from modelglue.search.backends import make_backend
from modelglue.search.context import BudgetExhausted, Objective, Record, SearchContext, fidelity_rungs
from modelglue.search.journal import Journal
from modelglue.search.report import write_outputs
from modelglue.search.space import SearchSpace, portfolio
from modelglue.search.strategies import STRATEGIES, get_strategy, nondominated

DEFAULT_BUDGET = {"uniform": 1, "heuristic-average": 1000, "heuristic-coefficient": 1000,
                  "heuristic-similarity": 1000, "cmaes": 40, "pareto": 60}


@dataclass
class SearchConfig:
    """Everything that defines a search. Fields mirror `modelglue search` options."""

    models: Sequence[str | Path]
    tasks: str | Sequence[str] | None
    out_dir: str | Path
    strategy: str = "cmaes"
    base: str | Path | None = None
    method: str = "auto"  # auto: choose among the portfolio (space.AUTO_METHODS) by validation score
    budget: float | None = None  # full-validation evaluations (a subset costs its fraction); default per strategy
    backend: str = "local"
    ray_address: str | None = None
    workers: int = 2
    worker_cpus: float = 1.0  # Ray resources per worker
    worker_gpus: float = 0.0
    resume: bool = False
    seed: int = 0
    limit: int | None = None  # examples per task
    save_model: bool = False
    task_weights: dict[str, float] | None = None
    layer_groups: int = 1
    search_density: bool | None = None  # None: for the methods that declare a searched density
    precision: int = 2
    popsize: int | None = None
    sigma: float | None = None
    init: str = "screen"  # cmaes starts: screen | uniform | best-single | heuristic
    multi_fidelity: bool = True  # screen on subsets of the validation examples first
    grid: Sequence[float] | None = None
    similarity_order: str = "descending"
    pareto_points: int = 5
    baselines: bool = True
    device: str = "cpu"
    threads: int | None = 1  # torch threads of the scorer (1: fastest on a shared CPU)
    progress: bool = True
    parameters: dict[str, Any] = field(default_factory=dict)  # extra recipe-level parameters
    log: Any = None  # callable(str): progress lines (default: a bar on a terminal, lines otherwise)

    def identity(self, scorer_desc: dict[str, Any]) -> dict[str, Any]:
        """What must not change between a run and its --resume (budget may grow)."""
        keep = ("models", "base", "method", "strategy", "seed", "task_weights", "layer_groups", "search_density",
                "precision", "popsize", "sigma", "init", "grid", "similarity_order", "pareto_points", "parameters",
                "multi_fidelity")
        d = {k: v for k, v in asdict(self).items() if k in keep}
        d["models"] = [str(Path(m).resolve()) for m in self.models]
        d["base"] = str(Path(self.base).resolve()) if self.base else None
        d["grid"] = list(self.grid) if self.grid else None
        d["scorer"] = scorer_desc
        return json.loads(json.dumps(d))


@dataclass
class SearchResult:
    config: SearchConfig
    tasks: list[str]
    best: Record
    best_test: Record | None
    history: list[Record]
    front: list[Record]
    front_test: list[Record | None]
    baselines: dict[str, tuple[Record, Record | None]]  # label -> (validation, test)
    scored_now: int  # candidates scored by this process (the rest came from the journal)
    out_dir: Path
    seconds: float
    screened: list[Record] = field(default_factory=list)  # subset scores (multi-fidelity)
    methods: list[str] = field(default_factory=list)  # the portfolio searched
    budget_used: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the search decided for the user (an inferred base, ...)
    summary: str = ""

    @property
    def verdict(self) -> str:
        """One plain sentence: what won, and whether merging beat every single model."""
        singles = [r for r in self.history if r.candidate.is_single and np.isfinite(r.fitness)]
        c = self.best.candidate
        if c.is_single:
            return (f"a single model wins: {c.origin.split(':', 1)[1]} (validation {self.best.fitness:.3f}); "
                    f"none of the {len(self.history) - len(singles)} merges scored higher")
        if not singles:
            return f"best: {c.describe()} (validation {self.best.fitness:.3f})"
        top = max(singles, key=lambda r: r.fitness)
        return (f"the merge beats every single model on validation: {self.best.fitness:.3f} vs "
                f"{top.fitness:.3f} ({top.candidate.origin.split(':', 1)[1]}), {c.describe()}")


def run_search(config: SearchConfig, scorer: Any = None) -> SearchResult:
    """Run (or resume) a search and write its outputs to config.out_dir."""
    start = time.perf_counter()
    budget = _check_config(config)
    notes: list[str] = []
    if config.method == "auto" and config.base is None:
        config = replace(config, base=_central_model(config.models))
        if config.base is not None:
            notes.append(f"no --base given: {Path(config.base).name}, the most central model of the family, "
                         "is the base of the task-vector methods")
    methods = portfolio(config.method, config.base is not None)
    spaces = {m: SearchSpace(config.models, method=m, base=config.base, layer_groups=config.layer_groups,
                             search_density=config.search_density if m == config.method else None,
                             precision=config.precision, merge_seed=config.seed,
                             extra_parameters=dict(config.parameters))
              for m in methods}
    space = spaces[methods[0]]
    scorer = scorer if scorer is not None else _default_scorer(config, space)
    tasks = list(scorer.task_names())
    notes += _task_notes(config)
    objective = Objective(tasks, config.task_weights)
    if config.strategy == "pareto" and len(tasks) < 2:
        raise ModelGlueError("strategy pareto needs at least two tasks")
    out = Path(config.out_dir)
    journal = _open_journal(config, scorer, out)
    backend = make_backend(config.backend, config.ray_address, config.workers, config.worker_cpus, config.worker_gpus)
    options = {"popsize": config.popsize, "sigma": config.sigma, "init": config.init, "grid": config.grid,
               "order": config.similarity_order, "points": config.pareto_points}
    smallest = scorer.smallest_subset() if config.multi_fidelity and hasattr(scorer, "smallest_subset") else 1.0
    ctx = SearchContext(space, scorer, backend, journal, objective, budget, seed=config.seed, options=options,
                        progress=config.progress, spaces=spaces, rungs=fidelity_rungs(smallest), log=config.log)
    try:
        # every worker must see every model before the first candidate (a cluster's nodes)
        backend.check(scorer, sorted({str(Path(m).resolve()) for m in list(config.models) + [config.base] if m}),
                      config.device)
        best, front = _search(ctx, config, tasks)
        # the test split, never seen by the search
        best_test = ctx.score([best.candidate], "test", count=False)[0]
        front_test = ctx.score([r.candidate for r in front], "test", count=False) if front else []
        baselines = _score_baselines(ctx, space) if config.baselines else {}
    finally:
        backend.close()
        journal.close()
    result = SearchResult(config, tasks, best, best_test, list(ctx.history), front, list(front_test), baselines,
                          ctx.scored_now, out, time.perf_counter() - start, list(ctx.screened), methods, ctx.used,
                          notes)
    write_outputs(result, space)
    return result


def _check_config(config: SearchConfig) -> float:
    """Refuse a bad strategy, a missing model or a budget below 1; returns the budget."""
    get_strategy(config.strategy)
    for m in list(config.models) + ([config.base] if config.base else []):
        if not model_directory(m).is_dir():  # a MODEL+ADAPTER reference names its model's directory
            raise ModelGlueError(f"model directory not found: {m}")
    budget = config.budget if config.budget is not None else DEFAULT_BUDGET[config.strategy]
    if budget < 1:
        raise ModelGlueError("--budget must be at least 1")
    return budget


def _default_scorer(config: SearchConfig, space: SearchSpace) -> Any:
    """Merge in memory and evaluate on config.tasks (the scorer a search uses by default)."""
    if not config.tasks:
        raise ModelGlueError("--tasks is required")
    from modelglue.search.scorers import MergeScorer

    return MergeScorer(config.tasks, space.base_path or space.members[0], limit=config.limit,
                       device=config.device, merge_seed=config.seed, threads=config.threads)


def _task_notes(config: SearchConfig) -> list[str]:
    """What the user should know about the task files (e.g. one without split markers)."""
    if not config.tasks:
        return []
    from modelglue.evaluate import unmarked_split

    specs = config.tasks.split(",") if isinstance(config.tasks, str) else list(config.tasks)
    return [n for n in (unmarked_split(t.strip()) for t in specs if str(t).strip().endswith(".jsonl")) if n]


def _open_journal(config: SearchConfig, scorer: Any, out: Path) -> Journal:
    """The journal in `out` (a new one, or the one --resume continues)."""
    if out.exists() and not config.resume and any(out.iterdir()):
        raise ModelGlueError(f"{out} is not empty: pass --resume to continue its search, or choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    journal = Journal(out / Journal.FILENAME, config.identity(scorer.describe()), resume=config.resume)
    (out / "results.json").unlink(missing_ok=True)  # written last: its presence means "complete"
    return journal


def _search(ctx: SearchContext, config: SearchConfig, tasks: list[str]) -> tuple[Record, list[Record]]:
    """Run the strategy until it ends or the budget is spent; the best record and the
    Pareto front (pareto strategy only)."""
    try:
        get_strategy(config.strategy)(ctx)
    except BudgetExhausted:
        pass
    finally:
        ctx.close()
    feasible = [r for r in ctx.history if r.candidate.feasible and np.isfinite(r.fitness)]
    if not feasible:
        raise ModelGlueError("no feasible candidate was scored (raise --budget?)")
    # the best full-validation score wins, single models included; a heuristic's
    # pick is that best too, but keeps its own on a tie (it may merge more models)
    best = max(feasible, key=lambda r: (r.fitness, -r.index))
    if ctx.chosen is not None and ctx.chosen.fitness >= best.fitness:
        best = ctx.chosen
    front = nondominated(ctx.history, tasks) if config.strategy == "pareto" else []
    return best, front


def _score_baselines(ctx: SearchContext, space: SearchSpace) -> dict[str, tuple[Record, Record | None]]:
    """Every single model (the base too, when it is not a member) and the uniform merge,
    on validation and test, outside the budget."""
    refs = [space.single(i) for i in range(space.n)] + [space.uniform()]
    if space.base_path is not None and space.base_path not in space.members:
        refs.insert(0, space.single_path(space.base_path))  # ties/dare: the base is a model too
    vals = ctx.score(refs, "validation", count=False)
    tests = ctx.score(refs, "test", count=False)
    return {c.origin: (v, t) for c, v, t in zip(refs, vals, tests)}


def _central_model(models: Sequence[str | Path]) -> str | None:
    """The base of a family of fine-tunes, when none is given: the model with the highest
    mean weight cosine to the others (the base sits in the middle of its fine-tunes).
    None when the models are not one weight-compatible family."""
    from modelglue.zoo import analyze_zoo

    if len(models) < 3:
        return None  # of two models neither is more central
    analysis = analyze_zoo([str(m) for m in models], plots=False)
    if len(analysis.groups) != 1 or analysis.similarity[0] is None:
        return None
    return analysis.paths[analysis.similarity[0].most_central()]


def search(models: Sequence[str | Path], tasks: str | Sequence[str] | None, out_dir: str | Path, *,
           scorer: Any = None, **options: Any) -> SearchResult:
    """Keyword form of `run_search(SearchConfig(...))`."""
    unknown = sorted(set(options) - set(SearchConfig.__dataclass_fields__))
    if unknown:
        raise ModelGlueError(f"unknown search option {unknown[0]!r}")
    return run_search(SearchConfig(models=list(models), tasks=tasks, out_dir=out_dir, **options), scorer=scorer)


__all__ = ["DEFAULT_BUDGET", "STRATEGIES", "SearchConfig", "SearchResult", "run_search", "search"]
