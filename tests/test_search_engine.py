"""modelglue.search: search space, journal-first scoring, strategies, backends.

Strategies run on a synthetic fitness (WeightDistanceScorer: scores from the merged
weights, no model run), so every test takes a second or so.
"""
from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from modelglue.errors import ModelGlueError
from modelglue.search import SearchSpace, WeightDistanceScorer, nondominated, search
from modelglue.search.testing import random_family


@pytest.fixture(scope="session")
def fam(tmp_path_factory) -> list[Path]:
    return random_family(tmp_path_factory.mktemp("search_family"), n=3)


class CountingScorer(WeightDistanceScorer):
    """The synthetic scorer, counting every (recipe, split) it is asked to score."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: Counter = Counter()

    def __call__(self, recipe, split):
        self.calls[(json.dumps(recipe, sort_keys=True), split)] += 1
        return super().__call__(recipe, split)


def scorer_for(fam: list[Path], counting: bool = False) -> WeightDistanceScorer:
    base, f0, f1, f2 = fam
    targets = {"t1": {f0: 0.6, f1: 0.4}, "t2": {f2: 0.7, base: 0.3}}
    return (CountingScorer if counting else WeightDistanceScorer)(targets, split_noise=0.05)


# ------------------------------------------------------------------ the search space

def test_space_rounds_normalises_and_hashes(fam):
    space = SearchSpace(fam, precision=2)
    a = space.candidate([0.3, 0.3, 0.3, 0.3])
    b = space.candidate([0.5001, 0.5, 0.4999, 0.5])
    assert a.key == b.key and a.weights == ((0.25,),) * 4  # a normalised linear merge ignores scale
    assert space.candidate([1, 0, 0, 0]).key == space.single(0).key  # the model itself
    c = space.candidate([0.0, 0.0, 1.0, 1.0])
    assert c.nonzero() == 2 and len(c.recipe["models"]) == 2  # zero weights leave the recipe
    assert not space.candidate([0, 0, 0, 0]).feasible


def test_space_base_methods_layer_groups_and_density(fam):
    base, *fts = fam
    space = SearchSpace(fam, method="ties", base=base, layer_groups=2, search_density=True)
    # ties normalises its weights, so its scale is searched as lambda: 3 x 2 weights, 3 densities, lambda
    assert space.members == [str(p.resolve()) for p in fts] and space.dim == 3 * 2 + 3 + 1
    cand = space.decode(space.x0())
    assert cand.recipe["base_model"] == str(base.resolve())
    assert cand.recipe["models"][1]["parameters"] == {"weight": [0.5, 0.5], "density": 0.5}
    assert cand.recipe["parameters"] == {"lambda": 1.0}
    assert np.allclose(space.encode(cand), space.x0())
    # the box is the one the registry declares: task arithmetic reaches past weight 1
    ta = SearchSpace(fam, method="task_arithmetic", base=base)
    assert ta.dim == 3 and ta.bounds().tolist() == [[0.0, 1.5]] * 3
    dare = SearchSpace(fam, method="dare_ties", base=base)  # densities searched by default
    assert dare.dim == 6 and not dare.search_lambda
    with pytest.raises(ModelGlueError, match="needs --base"):
        SearchSpace(fts, method="ties")
    with pytest.raises(ModelGlueError, match="no density"):
        SearchSpace(fam, method="linear", search_density=True)


def test_space_recipe_merges(fam):
    """The recipes the space writes are valid for the engine, and weights matter."""
    from modelglue.merge import InMemoryMerger

    base, *fts = fam
    merger = InMemoryMerger()
    space = SearchSpace(fam, method="dare_ties", base=base, search_density=True)
    sd1 = merger.state_dict(space.decode(np.array([0.2, 0.9, 0.5, 0.5, 0.5, 0.5])).recipe, seed=0)
    sd2 = merger.state_dict(space.decode(np.array([0.9, 0.2, 0.5, 0.5, 0.5, 0.5])).recipe, seed=0)
    name = next(k for k in sd1 if "q_proj" in k)
    assert not np.allclose(sd1[name].numpy(), sd2[name].numpy())


# ------------------------------------------------------------------ strategies

@pytest.mark.parametrize("strategy", ["uniform", "heuristic-average", "heuristic-coefficient",
                                      "heuristic-similarity", "cmaes", "pareto"])
def test_strategy_runs_and_writes_outputs(fam, tmp_path, strategy):
    scorer = scorer_for(fam, counting=True)
    res = search(fam, None, tmp_path / "out", scorer=scorer, strategy=strategy, budget=24, progress=False,
                 grid=[0.3, 0.5, 0.7])
    out = tmp_path / "out"
    assert len(res.history) <= 24
    # a candidate is never scored twice (per split)
    assert max(scorer.calls.values()) == 1
    rows = sqlite3.connect(out / "journal.sqlite").execute("SELECT key, split FROM scores").fetchall()
    assert len(rows) == len(set(rows)) == sum(scorer.calls.values())
    data = json.loads((out / "results.json").read_text())
    assert data["best"]["test"]["scores"] and len(data["candidates"]) == len(res.history)
    assert (out / "best.yml").read_text().startswith("merge_method:")
    assert (out / "convergence.png").stat().st_size > 1000
    singles = [v.fitness for k, (v, _) in res.baselines.items() if k.startswith("single:")]
    if strategy.startswith("heuristic"):
        assert res.best.fitness >= max(singles)  # greedy never drops below its start
    if strategy == "pareto":
        assert len(res.front) >= 3 and (out / "pareto.png").exists()
        assert len(data["front"]) == len(res.front) and all("nonzero_models" in p for p in data["front"])


def test_search_beats_uniform_on_synthetic_fitness(fam, tmp_path):
    runs = {s: search(fam, None, tmp_path / s, scorer=scorer_for(fam), strategy=s, budget=48, progress=False,
                      baselines=False).best.fitness
            for s in ("uniform", "heuristic-coefficient", "cmaes")}
    assert runs["uniform"] < runs["heuristic-coefficient"]
    assert runs["uniform"] < runs["cmaes"]


def test_heuristic_average_keeps_only_improvements(fam, tmp_path):
    res = search(fam, None, tmp_path / "o", scorer=scorer_for(fam), strategy="heuristic-average", progress=False)
    fits = [r.fitness for r in res.history]
    n = len(fam)
    assert len(res.history) == n + (n - 1)  # every single model, then one trial per addition
    kept = [fits[:n][int(np.argmax(fits[:n]))]]
    for f in fits[n:]:
        if f >= kept[-1]:
            kept.append(f)
    assert res.best.fitness == kept[-1]


def test_nondominated():
    from modelglue.search.context import Record
    from modelglue.search.space import Candidate

    def rec(a, b, i):
        return Record(Candidate(((1.0,),), None, {"m": i}, f"k{i}"), "validation", {"x": a, "y": b}, 0.0, index=i)

    recs = [rec(0.1, 0.9, 0), rec(0.5, 0.5, 1), rec(0.4, 0.4, 2), rec(0.9, 0.1, 3), rec(0.5, 0.5, 4)]
    front = nondominated(recs, ["x", "y"])
    assert [r.index for r in front] == [0, 1, 3]


def test_same_seed_same_result_and_seed_matters(fam, tmp_path):
    kw = dict(scorer=scorer_for(fam), strategy="cmaes", budget=20, progress=False, baselines=False)
    a = search(fam, None, tmp_path / "a", seed=3, **kw)
    b = search(fam, None, tmp_path / "b", seed=3, **kw)
    c = search(fam, None, tmp_path / "c", seed=4, **kw)
    assert [r.candidate.key for r in a.history] == [r.candidate.key for r in b.history]
    assert [r.candidate.key for r in a.history] != [r.candidate.key for r in c.history]


def test_resume_in_process_scores_nothing_twice(fam, tmp_path):
    """Resume with a larger budget: it ends where a fresh search with that budget ends
    (the screening share grows with the budget, so the path may differ from the first
    run's), and whatever the first run scored comes from the journal."""
    s1 = scorer_for(fam, counting=True)
    kw = dict(strategy="cmaes", progress=False, baselines=False, seed=1)
    first = search(fam, None, tmp_path / "o", scorer=s1, budget=10, **kw)
    s2 = scorer_for(fam, counting=True)
    second = search(fam, None, tmp_path / "o", scorer=s2, budget=25, resume=True, **kw)
    singles = [r.candidate.key for r in first.history if r.candidate.is_single]
    assert len(singles) == len(fam) and singles == [r.candidate.key for r in second.history[:len(fam)]]
    first_keys = set(s1.calls)
    assert not first_keys & set(s2.calls)
    full = search(fam, None, tmp_path / "full", scorer=scorer_for(fam), budget=25, **kw)
    assert [r.candidate.key for r in full.history] == [r.candidate.key for r in second.history]
    assert full.best.candidate.key == second.best.candidate.key


def test_refuses_to_clobber_or_resume_other_settings(fam, tmp_path):
    kw = dict(scorer=scorer_for(fam), strategy="uniform", progress=False, baselines=False)
    search(fam, None, tmp_path / "o", **kw)
    with pytest.raises(ModelGlueError, match="--resume"):
        search(fam, None, tmp_path / "o", **kw)
    with pytest.raises(ModelGlueError, match="settings differ"):
        search(fam, None, tmp_path / "o", resume=True, seed=5, **kw)


def test_bad_inputs_are_one_line_errors(fam, tmp_path):
    with pytest.raises(ModelGlueError, match="unknown --strategy"):
        search(fam, None, tmp_path / "a", scorer=scorer_for(fam), strategy="nope")
    with pytest.raises(ModelGlueError, match="not found"):
        search([tmp_path / "missing"], "add", tmp_path / "b", strategy="uniform")
    with pytest.raises(ModelGlueError, match="task-weights"):
        search(fam, None, tmp_path / "c", scorer=scorer_for(fam), task_weights={"zzz": 1.0})
    with pytest.raises(ModelGlueError, match="two tasks"):
        search(fam, None, tmp_path / "d", scorer=WeightDistanceScorer({"t": {fam[1]: 1.0}}), strategy="pareto")


# ------------------------------------------------------------------ Ray

def test_ray_and_local_backends_agree(fam, tmp_path, ray_exclusive):  # the lock: cluster tests stop every Ray process
    pytest.importorskip("ray")
    kw = dict(strategy="cmaes", budget=12, popsize=4, progress=False, baselines=False, seed=7)
    local = search(fam, None, tmp_path / "local", scorer=scorer_for(fam), backend="local", **kw)
    remote = search(fam, None, tmp_path / "ray", scorer=scorer_for(fam), backend="ray", workers=2, **kw)
    assert remote.best.candidate.key == local.best.candidate.key
    assert [r.candidate.key for r in remote.history] == [r.candidate.key for r in local.history]
    assert [r.scores for r in remote.history] == [r.scores for r in local.history]
    workers = {w for (w,) in sqlite3.connect(tmp_path / "ray" / "journal.sqlite").execute("SELECT worker FROM scores")}
    assert workers <= {"ray-0", "ray-1"} and workers


def test_layer_groups_with_an_all_zero_group_are_infeasible_not_errors(fam, tmp_path):
    space = SearchSpace(fam, layer_groups=2)
    assert not space.candidate([[0.0, 0.5], [0.0, 0.5], [0.0, 0.1], [0.0, 0.0]]).feasible
    assert space.candidate([[0.1, 0.5], [0.0, 0.5], [0.0, 0.1], [0.0, 0.0]]).feasible
    res = search(fam, None, tmp_path / "o", scorer=scorer_for(fam), strategy="cmaes", layer_groups=2, budget=16,
                 sigma=0.6, progress=False, baselines=False)
    assert res.best.candidate.feasible and len(res.best.candidate.weights[0]) == 2


def test_cmaes_warm_started_from_heuristic_is_never_worse(fam, tmp_path):
    kw = dict(progress=False, baselines=False)
    heur = search(fam, None, tmp_path / "h", scorer=scorer_for(fam), strategy="heuristic-average", **kw)
    warm = search(fam, None, tmp_path / "w", scorer=scorer_for(fam), strategy="cmaes", init="heuristic", budget=20,
                  **kw)
    assert [r.candidate.key for r in warm.history[:len(heur.history)]] == [r.candidate.key for r in heur.history]
    assert warm.best.fitness >= heur.best.fitness
