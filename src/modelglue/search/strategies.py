"""Search strategies: each proposes candidates through `SearchContext.score` and nothing else.

A strategy must be a deterministic function of (seed, options, scores): `--resume`
replays it from the start and gets the recorded scores back from the journal, so it
walks the same path and ends in the same place. Hence no wall-clock, no unordered sets,
and every random draw from a generator seeded by `ctx.seed`.

- uniform: all models, equal weights.
- heuristic-average / -coefficient / -similarity: the greedy selective merges of
  Model-GLUE (arXiv:2410.05357, sec. 3): add models one at a time, keep an addition
  only if the validation fitness does not drop.
- cmaes: CMA-ES over the coefficient box (as "Recycle them", arXiv:2412.04144).
- pareto: a sweep of scalarised CMA-ES runs over task-weightings, each warm-started
  from the previous optimum; returns the non-dominated front of everything scored.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from modelglue.errors import ModelGlueError
from modelglue.search.context import Record, SearchContext

INFEASIBLE = 1e6  # CMA-ES minimises; only ranks matter, so any value above every real one works


# ------------------------------------------------------------------ helpers

def _singles(ctx: SearchContext) -> list[Record]:
    return ctx.score([ctx.space.single(i) for i in range(ctx.space.n)])


def _by_fitness(records: list[Record]) -> list[int]:
    """Indices sorted best first; ties keep the input order (deterministic)."""
    return sorted(range(len(records)), key=lambda i: (-records[i].fitness, i))


def _average(ctx: SearchContext, kept: list[int], origin: str):
    w = [ctx.space.equal_weight(len(kept)) if i in kept else 0.0 for i in range(ctx.space.n)]
    dens = ctx.space.x0()[-ctx.space.n:] if ctx.space.search_density else None
    return ctx.space.candidate(w, dens, origin=origin)


def _weights_of(ctx: SearchContext, rec: Record) -> np.ndarray:
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
        cands = [ctx.space.candidate(list((1 - c) * current + c * e), None if not ctx.space.search_density else
                                     ctx.space.x0()[-ctx.space.n:], origin=f"heuristic-coefficient:+{ctx.space.label(i)}@{c:g}")
                 for c in grid]
        recs = ctx.score(cands)
        best = recs[_by_fitness(recs)[0]]
        if best.fitness >= ctx.chosen.fitness:
            ctx.chosen, current = best, _weights_of(ctx, best)


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


# ------------------------------------------------------------------ CMA-ES

def _run_cma(ctx: SearchContext, fitness: Callable[[Record], float], mean: np.ndarray, seed: int, tag: str,
             sub_budget: int | None = None) -> None:
    """One CMA-ES run (maximising `fitness`) until it converges or its budget is spent."""
    from cmaes import CMA

    space = ctx.space
    sigma = float(ctx.options.get("sigma") or 0.3 * space.max_weight)
    popsize = ctx.options.get("popsize")
    bounds = space.bounds()
    # CMA needs a mean strictly inside the box
    mean = np.clip(mean, bounds[:, 0] + 1e-6, bounds[:, 1] - 1e-6)
    cma = CMA(mean=mean, sigma=sigma, bounds=bounds, seed=seed, population_size=popsize)
    start, stale, gen = ctx.used, 0, 0
    while not cma.should_stop():
        xs = [cma.ask() for _ in range(cma.population_size)]
        cands = [space.decode(x, origin=f"{tag}:g{gen}") for x in xs]
        if sub_budget is not None and ctx.used >= start + sub_budget:
            return
        before = ctx.used
        recs = ctx.score(cands)  # raises BudgetExhausted when the whole budget is spent
        cma.tell([(x, -fitness(r) if np.isfinite(r.fitness) else INFEASIBLE) for x, r in zip(xs, recs)])
        # rounding can make a converged population all repeats: stop rather than spin
        stale = stale + 1 if ctx.used == before else 0
        if stale >= 3:
            return
        gen += 1


def cmaes(ctx: SearchContext) -> None:
    """CMA-ES on the validation fitness, starting from the uniform merge (scored first)."""
    space = ctx.space
    init = ctx.options.get("init", "uniform")
    if init == "uniform":
        mean = space.x0()
    elif init == "best-single":
        singles = _singles(ctx)
        mean = space.encode(singles[_by_fitness(singles)[0]].candidate) * 0.6 + space.x0() * 0.4
    elif init == "heuristic":
        # Model-GLUE's greedy average first (its candidates count against the budget),
        # then CMA-ES around its pick: the result is never worse than the heuristic's
        heuristic_average(ctx)
        assert ctx.chosen is not None
        mean = space.encode(ctx.chosen.candidate) * 0.7 + space.x0() * 0.3
        ctx.chosen = None  # the best of everything scored wins
    else:
        raise ModelGlueError("--init must be uniform, best-single or heuristic")
    ctx.score([space.decode(mean, origin="cmaes:init")])
    _run_cma(ctx, lambda r: r.fitness, mean, ctx.seed, "cmaes")


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
    """Scalarisation sweep: score the uniform merge and each single model, then for each
    task-weighting run a short CMA-ES warm-started from the best candidate so far under
    that weighting. The front is taken over every candidate scored."""
    space, obj = ctx.space, ctx.objective
    points = int(ctx.options.get("points") or 5)
    sweep = _sweep_weights(len(obj.tasks), points, ctx.seed)
    # The single models and the uniform merge anchor the front (a specialist is often
    # the extreme point of its own task) and give each weighting a good start.
    ctx.score([space.uniform()] + [space.single(i) for i in range(space.n)])
    per_point = max(1, ctx.remaining // len(sweep))
    for k, lam in enumerate(sweep):
        weights = dict(zip(obj.tasks, lam))
        fit = lambda r, w=weights: obj(r.scores, w) if r.candidate.feasible else float("-inf")  # noqa: E731
        # warm start: the best candidate so far under this weighting, pulled a little towards
        # the centre so CMA-ES does not start on the box's boundary
        best = max(ctx.history, key=lambda r: (fit(r), -r.index))
        mean = 0.8 * space.encode(best.candidate) + 0.2 * space.x0()
        _run_cma(ctx, fit, mean, ctx.seed + k, f"pareto:w{k}", sub_budget=per_point)


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
