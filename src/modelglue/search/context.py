"""The one door through which strategies get scores: journal first, backend second.

`SearchContext.score(candidates)` returns a `Record` per candidate. A candidate already
in the journal (this run, or the run that `--resume` continues) is not scored again;
the rest go to the backend in one batch (a CMA-ES generation scores in parallel on Ray)
and each result is journaled as soon as it arrives.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from modelglue.errors import ModelGlueError
from modelglue.search.backends import Backend, Job
from modelglue.search.journal import Journal
from modelglue.search.space import Candidate, SearchSpace


class BudgetExhausted(Exception):
    """Raised inside a strategy when the candidate budget is spent; the driver stops there."""


@dataclass
class Objective:
    """Scalar fitness from per-task scores: a (weighted) mean, higher is better."""

    tasks: list[str]
    weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.weights:
            unknown = sorted(set(self.weights) - set(self.tasks))
            if unknown:
                raise ModelGlueError(f"--task-weights names unknown task {unknown[0]!r} (tasks: {', '.join(self.tasks)})")
            if any(w < 0 for w in self.weights.values()) or sum(self.weights.get(t, 0.0) for t in self.tasks) <= 0:
                raise ModelGlueError("--task-weights must be non-negative and not all zero")

    def vector(self, scores: dict[str, float]) -> np.ndarray:
        try:
            return np.array([scores[t] for t in self.tasks], dtype=float)
        except KeyError as exc:
            raise ModelGlueError(f"the scorer returned no score for task {exc.args[0]!r} (got {', '.join(scores)})") from None

    def __call__(self, scores: dict[str, float], weights: dict[str, float] | None = None) -> float:
        w = weights if weights is not None else self.weights
        v = self.vector(scores)
        if not w:
            return float(v.mean())
        ws = np.array([w.get(t, 0.0) for t in self.tasks], dtype=float)
        return float((ws * v).sum() / ws.sum())


@dataclass
class Record:
    """A candidate with its scores on one split."""

    candidate: Candidate
    split: str
    scores: dict[str, float]
    fitness: float
    seconds: float = 0.0
    cached: bool = False  # taken from the journal, not scored by this call
    index: int = -1  # order of first proposal in this search (validation records only)

    def to_json(self) -> dict[str, Any]:
        c = self.candidate
        return {"index": self.index, "key": c.key, "origin": c.origin, "split": self.split, "feasible": c.feasible,
                **c.params(), "nonzero_models": c.nonzero(), "scores": self.scores, "fitness": self.fitness,
                "seconds": round(self.seconds, 4)}


@dataclass
class SearchContext:
    space: SearchSpace
    scorer: Any
    backend: Backend
    journal: Journal
    objective: Objective
    budget: int
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    on_record: Callable[[Record], None] | None = None

    def __post_init__(self) -> None:
        self.history: list[Record] = []  # distinct validation candidates, in order of first proposal
        self._seen: dict[str, Record] = {}
        self.scored_now = 0  # candidates actually scored by this process (not from the journal)
        self.chosen: Record | None = None  # a strategy's own pick (heuristics); else the best in history
        self._bar = tqdm(total=self.budget, desc="search", unit="cand", disable=not self.progress, leave=False)

    @property
    def used(self) -> int:
        return len(self.history)

    @property
    def remaining(self) -> int:
        return max(0, self.budget - self.used)

    def score(self, candidates: Sequence[Candidate], split: str = "validation", *,
              count: bool = True) -> list[Record]:
        """Scores for each candidate, in order. New validation candidates count against the
        budget (repeats are free); past the budget, BudgetExhausted is raised *after*
        the affordable ones are scored, so a partial generation is never wasted.
        `count=False` scores outside the search (baselines, test split): no budget, no history.
        """
        track = split == "validation" and count
        found: dict[str, Record] = {}  # key -> record, for this batch
        todo: dict[str, Candidate] = {}
        affordable: list[Candidate] = []
        exhausted = False
        new = 0
        for cand in candidates:
            if track and cand.key in self._seen:
                affordable.append(cand)
                continue
            if cand.key in found or cand.key in todo:
                affordable.append(cand)
                continue
            if track and new >= self.remaining:
                exhausted = True
                break  # keep the proposal order: nothing after the first unaffordable one
            new += 1
            affordable.append(cand)
            row = self.journal.get(cand.key, split) if cand.feasible else None
            if not cand.feasible:
                found[cand.key] = Record(cand, split, {}, float("-inf"))
            elif row is not None:
                found[cand.key] = Record(cand, split, row.scores, self.objective(row.scores), row.seconds, cached=True)
            else:
                todo[cand.key] = cand
        jobs = [Job(c.key, split, c.recipe) for c in todo.values()]
        for res in self.backend.run(self.scorer, jobs):  # completion order: journal at once
            cand = todo[res.job.key]
            self.journal.put(cand.key, split, cand.recipe, cand.params(), res.scores, res.seconds, cand.origin,
                             res.worker)
            self.scored_now += 1
            found[cand.key] = Record(cand, split, res.scores, self.objective(res.scores), res.seconds)
        # history in proposal order, whatever order the backend finished in (same on any backend)
        out = []
        for cand in affordable:
            if track and cand.key in self._seen:
                out.append(self._seen[cand.key])
                continue
            rec = found[cand.key]
            if track:
                rec.index = len(self.history)
                self.history.append(rec)
                self._seen[cand.key] = rec
                self._bar.update()
                if self.on_record:
                    self.on_record(rec)
            out.append(rec)
        if exhausted:
            raise BudgetExhausted
        return out

    def lookup(self, cand: Candidate) -> Record | None:
        return self._seen.get(cand.key)

    def close(self) -> None:
        self._bar.close()
