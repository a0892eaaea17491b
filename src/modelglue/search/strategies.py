"""Search strategies: each proposes candidates through `SearchContext.score` and nothing else.

A strategy must be a deterministic function of (seed, options, scores): `--resume`
replays it from the start and gets the recorded scores back from the journal, so it
walks the same path and ends in the same place. Hence no wall-clock, no unordered sets,
and every random draw from a generator seeded by `ctx.seed`.

- uniform: all models, equal weights.
- heuristic-average / -coefficient / -similarity: the greedy selective merges of
  Model-GLUE (arXiv:2410.05357, sec. 3): add models one at a time, keep an addition
  only if the validation fitness does not drop.
- cmaes: method selection over the portfolio and CMA-ES over each method's coefficient
  box (as "Recycle them", arXiv:2412.04144), with screened starts, multi-fidelity
  generations and restarts so that small budgets reach full-weight task vectors.
- pareto: a sweep of scalarised CMA-ES runs over task-weightings, each warm-started
  from the best merge under its weighting; returns the non-dominated front.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from modelglue.errors import ModelGlueError
from modelglue.search.context import FIDELITY_ETA, Record, SearchContext
from modelglue.search.space import Candidate

INFEASIBLE = 1e6  # CMA-ES minimises; only ranks matter, so any value above every real one works


# ------------------------------------------------------------------ helpers

def _singles(ctx: SearchContext) -> list[Record]:
    return ctx.score([ctx.space.single(i) for i in range(ctx.space.n)])


def _by_fitness(records: list[Record]) -> list[int]:
    """Indices sorted best first; ties keep the input order (deterministic)."""
    return sorted(range(len(records)), key=lambda i: (-records[i].fitness, i))


def _average(ctx: SearchContext, kept: list[int], origin: str):
    w = [ctx.space.equal_weight(len(kept)) if i in kept else 0.0 for i in range(ctx.space.n)]
    return ctx.space.candidate(w, origin=origin)


def _weights_of(rec: Record) -> np.ndarray:
    return np.array([np.mean(w) for w in rec.candidate.weights], dtype=float)


# ------------------------------------------------------------------ uniform

def uniform(ctx: SearchContext) -> None:
    ctx.chosen = ctx.score([ctx.space.uniform()])[0]


# ------------------------------------------------------------------ Model-GLUE heuristics

def heuristic_average(ctx: SearchContext) -> None:
    """Greedy in order of each model's own validation fitness, best first: add the next
    model to an equal-weight average; keep it only if the fitness does not drop."""
    singles = _singles(ctx)
    order = _by_fitness(singles)
    kept, ctx.chosen = [order[0]], singles[order[0]]
    for i in order[1:]:
        rec = ctx.score([_average(ctx, kept + [i], f"heuristic-average:+{ctx.space.label(i)}")])[0]
        if rec.fitness >= ctx.chosen.fitness:
            kept, ctx.chosen = kept + [i], rec


def heuristic_coefficient(ctx: SearchContext) -> None:
    """As heuristic-average, but each addition tries a grid of coefficients c:
    new weights = (1 - c) * current + c * model_i; the best c is kept if it does not drop."""
    grid = [float(c) for c in ctx.options.get("grid") or (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
    if not grid or any(not 0 < c < 1 for c in grid):
        raise ModelGlueError("--grid: coefficients must lie strictly between 0 and 1")
    singles = _singles(ctx)
    order = _by_fitness(singles)
    ctx.chosen = singles[order[0]]
    current = np.eye(ctx.space.n)[order[0]]
    for i in order[1:]:
        e = np.eye(ctx.space.n)[i]
        cands = [ctx.space.candidate(list((1 - c) * current + c * e),
                                     origin=f"heuristic-coefficient:+{ctx.space.label(i)}@{c:g}")
                 for c in grid]
        recs = ctx.score(cands)
        best = recs[_by_fitness(recs)[0]]
        if best.fitness >= ctx.chosen.fitness:
            ctx.chosen, current = best, _weights_of(best)


def heuristic_similarity(ctx: SearchContext) -> None:
    """Start from the best single model; repeatedly try adding the remaining model whose
    weights are most (`order=descending`) or least (`ascending`) similar to the current
    merge, by cosine of the task vectors (relative to the base, or to the members' mean)."""
    order = ctx.options.get("order", "descending")
    if order not in ("ascending", "descending"):
        raise ModelGlueError("--similarity-order must be ascending or descending")
    singles = _singles(ctx)
    first = _by_fitness(singles)[0]
    kept, ctx.chosen = [first], singles[first]
    vectors = _WeightVectors(ctx)
    remaining = [i for i in range(ctx.space.n) if i != first]
    while remaining:
        cur = vectors.of_recipe(ctx.chosen.candidate.recipe)
        sims = [(vectors.cosine(cur, vectors.of_member(j)), j) for j in remaining]
        # ties broken by model order, so the walk is deterministic
        sims.sort(key=lambda sj: (-sj[0] if order == "descending" else sj[0], sj[1]))
        j = sims[0][1]
        remaining.remove(j)
        rec = ctx.score([_average(ctx, kept + [j], f"heuristic-similarity:+{ctx.space.label(j)}")])[0]
        if rec.fitness >= ctx.chosen.fitness:
            kept, ctx.chosen = kept + [j], rec


class _WeightVectors:
    """Flattened (subsampled) weights of members and merges, centred on the base or
    the members' mean: cosines of raw weights of one family are all ~1."""

    MAX_PER_TENSOR = 4096  # a strided sample per tensor keeps this cheap for big models

    def __init__(self, ctx: SearchContext):
        from modelglue.merge import InMemoryMerger

        self.space = ctx.space
        self.merger = InMemoryMerger()
        self.cache: dict[int, np.ndarray] = {}
        if ctx.space.base_path is not None:
            centre = {"merge_method": "linear", "models": [{"model": ctx.space.base_path, "parameters": {"weight": 1.0}}]}
        else:
            centre = {"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": 1.0}}
                                                           for m in ctx.space.members]}
        self.centre = self._flat(centre)

    def _flat(self, recipe: dict[str, Any]) -> np.ndarray:
        sd = self.merger.state_dict({**recipe, "dtype": "float32"})
        parts = []
        for name in sorted(sd):
            t = sd[name]
            if t.is_floating_point():
                flat = t.flatten()
                parts.append(flat[:: max(1, flat.numel() // self.MAX_PER_TENSOR)].double().numpy())
        return np.concatenate(parts)

    def of_recipe(self, recipe: dict[str, Any]) -> np.ndarray:
        return self._flat(recipe) - self.centre

    def of_member(self, i: int) -> np.ndarray:
        if i not in self.cache:
            self.cache[i] = self.of_recipe({"merge_method": "linear",
                                            "models": [{"model": self.space.members[i], "parameters": {"weight": 1.0}}]})
        return self.cache[i]

    @staticmethod
    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


# ------------------------------------------------------------------ small-budget machinery
#
# Fine-tuned skills often need (near) full weight on their task vector, and an average
# divides each by n: a search that starts at the uniform merge and moves in small steps
# rarely gets there within a few dozen evaluations. So the CMA-ES and Pareto strategies
#   1. score every single model (the floor: the search never returns less),
#   2. screen structured starts in every method of the portfolio (sum of task vectors,
#      the two or three best at full weight, ...) plus random points, by successive
#      halving over subsets of the validation examples (`ctx.rungs`),
#   3. run CMA-ES from the best start, each generation screened on the smallest subset
#      and its best quarter promoted to the full split, and restart from the next
#      method's best start when a run stalls, until the budget is spent.

SCREEN_SHARE = 0.4  # of the budget left after the singles, spent on screening starts
RANDOM_STARTS = 3  # random points per method among the screened starts
PATIENCE = 4  # CMA-ES generations without a new best on the full split before a restart


def _floor(ctx: SearchContext) -> dict[str, list[Record]]:
    """Every single model, scored on the full split; per method, aligned with its members."""
    return {method: ctx.score([space.single(i) for i in range(space.n)]) for method, space in ctx.spaces.items()}


def _structured_starts(space, order: list[int], rng: np.random.Generator) -> list:
    """Starts that reach what averaging cannot: best models at full weight, sums of task
    vectors; then random points of the box. `order`: members best first."""
    n, one = space.n, 1.0
    pick = lambda idx, rest=0.0: [one if i in idx else rest for i in range(n)]  # noqa: E731
    # A budget affords only the first few of each method's starts: the best two and three
    # members at full weight come first (each keeps its skill whole; adding weaker
    # members, harsh fine-tunes among them, more often hurts), then the sum of all.
    weights = []
    if n >= 2:
        weights.append(("top2", pick(order[:2])))
    if n >= 4:
        weights.append(("top3", pick(order[:3])))
    weights.append(("all", pick(range(n))))  # task arithmetic: the sum; normalising methods: the mean
    if n >= 2:
        weights.append(("best+half", pick(order[:1], 0.5)))
    if not space.normalizes and n > 2:
        weights.append(("mean", [1.0 / n] * n))
    cands = [space.candidate(w, origin=f"start:{space.method}:{tag}") for tag, w in weights]
    lo, hi = space.bounds()[:, 0], space.bounds()[:, 1]
    cands += [space.decode(rng.uniform(lo, hi), origin=f"start:{space.method}:random{k}") for k in range(RANDOM_STARTS)]
    return cands


def _best_first(records: list[Record], fitness: Callable[[Record], float]) -> list[Record]:
    ok = [r for r in records if r.candidate.feasible and np.isfinite(r.fitness)]
    return sorted(ok, key=lambda r: (-fitness(r), r.index))


def _halving(ctx: SearchContext, cands: list[Candidate], fitness: Callable[[Record], float]) -> list[Record]:
    """Successive halving over ctx.rungs: score all on the smallest subset, promote the
    best 1/eta to the next, ... ; returns the full-split records, best first."""
    pool = list({c.key: c for c in cands if c.feasible}.values())
    for k, fraction in enumerate(ctx.rungs):
        recs = ctx.score(pool, fraction=fraction)
        if fraction >= 1:
            return _best_first(recs, fitness)
        keep = max(2, math.ceil(len(pool) / FIDELITY_ETA))
        pool = [r.candidate for r in _best_first(recs, fitness)[:keep]]
    return []


def _screen_cost(ctx: SearchContext) -> float:
    """Budget one start costs in successive halving, on average."""
    return sum(f / FIDELITY_ETA ** k for k, f in enumerate(ctx.rungs))


def _starts(ctx: SearchContext, floor: dict[str, list[Record]], fitness: Callable[[Record], float]) -> list[Record]:
    """Screen the starts of every method (`--init`); the full-split records, best first."""
    init = ctx.options.get("init") or "screen"
    rng = np.random.default_rng(ctx.seed)
    per_method = []
    for method, space in ctx.spaces.items():
        order = sorted(range(space.n), key=lambda i: (-fitness(floor[method][i]), i))
        if init == "screen":
            per_method.append(_structured_starts(space, order, rng))
        elif init == "uniform":
            per_method.append([space.uniform()])
        elif init == "best-single":
            w = [1.0 if i == order[0] else 0.25 for i in range(space.n)]
            per_method.append([space.candidate(w, origin=f"start:{method}:best-single")])
        else:
            raise ModelGlueError("--init must be screen, uniform, best-single or heuristic")
    # interleaved (each method's first start, then each one's second, ...), so a budget
    # that affords few starts still tries every method
    cands = [c for rank in zip(*[p + [None] * (max(map(len, per_method)) - len(p)) for p in per_method])
             for c in rank if c is not None]
    affordable = max(len(ctx.spaces), int(SCREEN_SHARE * ctx.remaining / _screen_cost(ctx)))
    return _halving(ctx, cands[:affordable], fitness) if init == "screen" else \
        _best_first(ctx.score(cands), fitness)


def _run_cma(ctx: SearchContext, fitness: Callable[[Record], float], start: Record | Candidate, seed: int,
             tag: str, sub_budget: float | None = None) -> None:
    """One CMA-ES run in the space of `start`'s method (maximising `fitness`) until it
    converges, stalls for PATIENCE generations, or its budget is spent. With subsets,
    each generation is ranked on the smallest and its best quarter promoted."""
    from cmaes import CMA

    cand = start.candidate if isinstance(start, Record) else start
    space = ctx.spaces[cand.method]
    bounds = space.bounds()
    mean = np.clip(space.encode(cand), bounds[:, 0] + 1e-6, bounds[:, 1] - 1e-6)  # CMA needs a mean strictly inside
    sigma = float(ctx.options.get("sigma") or 0.25 * float(np.mean(bounds[:, 1] - bounds[:, 0])))
    cma = CMA(mean=mean, sigma=sigma, bounds=bounds, seed=seed, population_size=ctx.options.get("popsize"))
    low = ctx.rungs[0]
    promote = max(1, cma.population_size // 4)
    begin, stale, gen, since_best = ctx.used, 0, 0, 0
    best = max((fitness(r) for r in ctx.history if r.candidate.method == space.method and np.isfinite(r.fitness)),
               default=-np.inf)
    while not cma.should_stop():
        if sub_budget is not None and ctx.used >= begin + sub_budget:
            return
        xs = [cma.ask() for _ in range(cma.population_size)]
        cands = [space.decode(x, origin=f"{tag}:g{gen}") for x in xs]
        before = ctx.used
        recs = ctx.score(cands, fraction=low)  # raises BudgetExhausted when the whole budget is spent
        cma.tell([(x, -fitness(r) if np.isfinite(r.fitness) else INFEASIBLE) for x, r in zip(xs, recs)])
        full = recs if low >= 1 else ctx.score([r.candidate for r in _best_first(recs, fitness)[:promote]])
        top = max((fitness(r) for r in full if np.isfinite(r.fitness)), default=-np.inf)
        since_best = 0 if top > best else since_best + 1
        best = max(best, top)
        # rounding can make a converged population all repeats: stop rather than spin
        stale = stale + 1 if ctx.used == before else 0
        if stale >= 3 or since_best >= PATIENCE:
            return
        gen += 1


def _method_leaders(ctx: SearchContext, fitness: Callable[[Record], float]) -> list[Record]:
    """Each method's best merge, best method first: methods scored on the full split by
    that score, then those only screened on subsets, by their best subset score."""
    leaders: dict[str, Record] = {}
    for pool in (ctx.history, ctx.screened):
        for r in _best_first([r for r in pool if not r.candidate.is_single], fitness):
            leaders.setdefault(r.candidate.method, r)
    return sorted(leaders.values(), key=lambda r: (-r.fraction, -fitness(r), r.index))


def cmaes(ctx: SearchContext) -> None:
    """Method selection and CMA-ES on the validation fitness (see the machinery above):
    singles, screened starts per method, then CMA-ES runs from each method's best start
    in turn, best method first, until the budget is spent."""
    fit = lambda r: r.fitness  # noqa: E731
    if ctx.options.get("init") == "heuristic":
        # Model-GLUE's greedy average first (its candidates count against the budget),
        # then CMA-ES around its pick: the result is never worse than the heuristic's
        heuristic_average(ctx)
        assert ctx.chosen is not None
        first = ctx.chosen.candidate if not ctx.chosen.candidate.is_single else ctx.space.uniform()
        ctx.chosen = None  # the best of everything scored wins
        ctx.score([first])
        _run_cma(ctx, fit, first, ctx.seed, "cmaes")
    else:
        _starts(ctx, _floor(ctx), fit)
    for k in range(1, 100):  # restarts; the budget ends them (BudgetExhausted)
        leaders = _method_leaders(ctx, fit)
        if not leaders:
            return
        before = ctx.used
        _run_cma(ctx, fit, leaders[(k - 1) % len(leaders)], ctx.seed + k, f"cmaes:r{k}")
        if ctx.used == before and k >= len(leaders):
            return  # every method has converged: nothing new left to propose


# ------------------------------------------------------------------ Pareto

def _sweep_weights(n_tasks: int, points: int, seed: int) -> list[np.ndarray]:
    """Task-weightings to scalarise with, ordered so neighbours are close (warm starts)."""
    if n_tasks < 2:
        raise ModelGlueError("strategy pareto needs at least two tasks")
    if n_tasks == 2:
        return [np.array([1 - a, a]) for a in np.linspace(0.0, 1.0, max(2, points))]
    rng = np.random.default_rng(seed)
    ws = [np.eye(n_tasks)[i] for i in range(n_tasks)] + [np.full(n_tasks, 1 / n_tasks)]
    while len(ws) < points:
        ws.append(rng.dirichlet(np.ones(n_tasks)))
    return ws


def pareto(ctx: SearchContext) -> None:
    """Scalarisation sweep: the single models, the uniform merge and the screened starts
    of every method anchor the front; then for each task-weighting a short CMA-ES run
    from the best merge so far under that weighting, in its method. The front is taken
    over every candidate scored on the full split."""
    obj = ctx.objective
    points = int(ctx.options.get("points") or 5)
    sweep = _sweep_weights(len(obj.tasks), points, ctx.seed)
    floor = _floor(ctx)
    ctx.score([ctx.space.uniform()])
    _starts(ctx, floor, lambda r: r.fitness)
    per_point = max(1.0, ctx.remaining / len(sweep))
    for k, lam in enumerate(sweep):
        weights = dict(zip(obj.tasks, lam))
        fit = lambda r, w=weights: obj(r.scores, w) if r.candidate.feasible and r.scores else float("-inf")  # noqa: E731
        leaders = _method_leaders(ctx, fit)
        start = leaders[0] if leaders else ctx.space.uniform()
        _run_cma(ctx, fit, start, ctx.seed + k, f"pareto:w{k}", sub_budget=per_point)


def nondominated(records: list[Record], tasks: list[str]) -> list[Record]:
    """The Pareto front (maximising every task) among feasible records; of records with
    identical score vectors only the first is kept. Sorted by the first task."""
    pts = [(r, np.array([r.scores[t] for t in tasks])) for r in records if r.candidate.feasible and r.scores]
    front: list[tuple[Record, np.ndarray]] = []
    for r, v in pts:
        if any(np.all(u >= v) and np.any(u > v) for _, u in pts):
            continue
        if any(np.array_equal(u, v) for _, u in front):
            continue
        front.append((r, v))
    return [r for r, _ in sorted(front, key=lambda rv: (tuple(rv[1]), rv[0].index))]


STRATEGIES: dict[str, Callable[[SearchContext], None]] = {
    "uniform": uniform,
    "heuristic-average": heuristic_average,
    "heuristic-coefficient": heuristic_coefficient,
    "heuristic-similarity": heuristic_similarity,
    "cmaes": cmaes,
    "pareto": pareto,
}


def get_strategy(name: str) -> Callable[[SearchContext], None]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ModelGlueError(f"unknown --strategy {name!r} (known: {', '.join(STRATEGIES)})") from None
