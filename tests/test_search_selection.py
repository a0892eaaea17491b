"""Issue "merges that beat their members": the search never returns less than it scored,
chooses the merge method by validation score, and spends its budget in full-validation
evaluations while screening many more candidates on subsets.

The fitness is synthetic (WeightDistanceScorer: how close the merged weights are to a
target mixture of the inputs), so the right answer is known exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelglue.search import WeightDistanceScorer, search
from modelglue.search.testing import random_family


@pytest.fixture(scope="module")
def fam(tmp_path_factory) -> list[Path]:
    return random_family(tmp_path_factory.mktemp("selection_family"), n=3)


def test_a_single_model_that_wins_is_returned_and_said_plainly(fam, tmp_path):
    base, f0, f1, f2 = fam
    # the fitness peaks exactly at f1: no merge can beat it
    res = search(fam, None, tmp_path / "o", scorer=WeightDistanceScorer({"t": {f1: 1.0}}), base=base,
                 strategy="cmaes", budget=15, progress=False)
    scored = [r.fitness for r in res.history]
    assert res.best.fitness == max(scored) == pytest.approx(1.0)
    assert res.best.candidate.is_single and res.best.candidate.origin == "single:ft1"
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["single_model_wins"] is True and data["best_method"] is None
    assert "a single model wins: ft1" in (tmp_path / "o" / "summary.txt").read_text()


@pytest.mark.parametrize("strategy", ["cmaes", "heuristic-average", "heuristic-coefficient", "pareto"])
def test_search_never_returns_less_than_it_scored(fam, tmp_path, strategy):
    base, f0, f1, f2 = fam
    scorer = WeightDistanceScorer({"t1": {f0: 0.7, f1: 0.3}, "t2": {f2: 1.0}}, split_noise=0.05)
    res = search(fam, None, tmp_path / "o", scorer=scorer, base=base, strategy=strategy, budget=16,
                 grid=[0.3, 0.6], progress=False)
    assert res.best.fitness == max(r.fitness for r in res.history)
    singles = [r.fitness for r in res.history if r.candidate.is_single]
    assert len(singles) == len(fam) and res.best.fitness >= max(singles)


def test_method_selection_picks_task_arithmetic_when_the_fitness_rewards_it(fam, tmp_path):
    """Both tasks peak at base + d0 + d_k (full-weight task vectors, summed): linear and
    normalising averages cannot reach it, task arithmetic can."""
    base, f0, f1, f2 = fam
    targets = {"t1": {f0: 1.0, f1: 1.0, base: -1.0}, "t2": {f0: 1.0, f2: 1.0, base: -1.0}}
    res = search(fam, None, tmp_path / "o", scorer=WeightDistanceScorer(targets), base=base, strategy="cmaes",
                 budget=30, progress=False)
    assert res.methods == ["linear", "task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties", "della"]
    linear = max(r.fitness for r in res.history + res.screened if r.candidate.method == "linear")
    singles = max(r.fitness for r in res.history if r.candidate.is_single)
    assert res.best.candidate.method == "task_arithmetic"
    assert res.best.fitness > max(linear, singles) + 0.1
    # the winner puts (near) full weight on at least two task vectors
    assert sorted(res.best.candidate.flat_weights())[-2] >= 0.8
    # and the same search with linear only stays below it
    lin = search(fam, None, tmp_path / "lin", scorer=WeightDistanceScorer(targets), base=base, strategy="cmaes",
                 method="linear", budget=30, progress=False)
    assert lin.methods == ["linear"] and lin.best.fitness < res.best.fitness - 0.1


def test_budget_counts_full_evaluations_and_subsets_cost_their_fraction(fam, tmp_path):
    base, f0, f1, f2 = fam
    scorer = WeightDistanceScorer({"t1": {f0: 0.5, f1: 0.5}, "t2": {f2: 0.6, f0: 0.4}})
    res = search(fam, None, tmp_path / "o", scorer=scorer, base=base, strategy="cmaes", budget=20, progress=False)
    fractions = [r.fraction for r in res.screened]
    assert res.budget_used == pytest.approx(len(res.history) + sum(fractions)) and res.budget_used <= 20 + 1e-9
    assert fractions and all(0 < f < 1 for f in fractions)
    # many more candidates explored than the budget of full evaluations
    distinct = {r.candidate.key for r in res.history + res.screened}
    assert len(distinct) > 3 * 20
    # successive halving: what reached the full split was screened first, and subsets nest
    screened_keys = {r.candidate.key for r in res.screened}
    merges = [r for r in res.history if not r.candidate.is_single]
    assert merges and all(r.candidate.key in screened_keys for r in merges)
    # without subsets, every candidate costs 1
    full = search(fam, None, tmp_path / "f", scorer=scorer, base=base, strategy="cmaes", budget=20,
                  multi_fidelity=False, progress=False)
    assert not full.screened and len(full.history) == 20


def test_subset_scores_use_the_first_fraction_of_each_task(tmp_path):
    """MergeScorer's subset split: the first ceil(f * n) examples of each task (a prefix,
    so a smaller subset nests inside a larger one)."""
    from modelglue.search import MergeScorer

    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1), "split": "validation"}) + "\n"
                             for i in range(64)))
    scorer = MergeScorer([str(jsonl)], tmp_path, limit=40)
    whole = scorer.tasks_for("validation")[0].examples
    quarter = scorer.tasks_for("validation@0.25")[0].examples
    assert len(whole) == 40 and quarter == whole[:10]
    assert scorer.smallest_subset() == pytest.approx(16 / 40)


def test_without_base_the_most_central_model_is_the_base(fam, tmp_path):
    """A user who lists a family without --base still gets the task-vector methods: the
    base of a family of fine-tunes is the model in the middle of them."""
    base, f0, f1, f2 = fam
    targets = {"t1": {f0: 1.0, f1: 1.0, base: -1.0}}
    res = search([f2, f0, base, f1], None, tmp_path / "o", scorer=WeightDistanceScorer(targets), strategy="cmaes",
                 budget=12, progress=False)
    assert "task_arithmetic" in res.methods and res.notes and "base" in res.notes[0]
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert Path(data["base"]) == base.resolve()
    assert "no --base given: base" in (tmp_path / "o" / "summary.txt").read_text()
