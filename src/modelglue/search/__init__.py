"""Selective merging and merge-coefficient search (Model-GLUE heuristics, CMA-ES, Pareto).

    from modelglue.search import search
    res = search(["zoo/a_base", "zoo/a_gentle_add", "zoo/a_harsh_rev"], "add,rev", "out/s",
                 strategy="cmaes", budget=40)
    res.best.candidate.recipe      # a mergekit recipe dict (also out/s/best.yml)
    res.best_test.scores           # the chosen merge on the test split

Pieces, from the outside in: `run.py` (driver, `SearchConfig`), `strategies.py`,
`context.py` (journal-first scoring, budget), `space.py` (vector <-> recipe),
`scorers.py` (recipe -> task scores), `backends.py` (local / Ray), `journal.py`
(SQLite), `report.py` (files and plots). See docs/search.md.
"""
from __future__ import annotations

from modelglue.search.backends import LocalBackend, RayBackend, make_backend
from modelglue.search.context import Objective, Record, SearchContext
from modelglue.search.journal import Journal
from modelglue.search.run import DEFAULT_BUDGET, SearchConfig, SearchResult, run_search, search
from modelglue.search.scorers import MergeScorer, Scorer, WeightDistanceScorer
from modelglue.search.space import Candidate, SearchSpace, recipe_key
from modelglue.search.strategies import STRATEGIES, nondominated

__all__ = ["Candidate", "DEFAULT_BUDGET", "Journal", "LocalBackend", "MergeScorer", "Objective", "RayBackend",
           "Record", "STRATEGIES", "Scorer", "SearchConfig", "SearchContext", "SearchResult", "SearchSpace",
           "WeightDistanceScorer", "make_backend", "nondominated", "recipe_key", "run_search", "search"]
