"""The one door through which strategies get scores: journal first, backend second.

`SearchContext.score(candidates)` returns a `Record` per candidate. A candidate already
in the journal (this run, or the run that `--resume` continues) is not scored again;
the rest go to the backend in one batch (a CMA-ES generation scores in parallel on Ray)
and each result is journaled as soon as it arrives.

Multi-fidelity: `score(..., fraction=f)` scores on the first fraction f of each task's
validation examples and costs f of the budget (a full evaluation costs 1), so `--budget`
counts full-validation evaluations however they are spent. Only full-fidelity records
enter `history` (what a search returns and reports); subset scores are `screened`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from modelglue.errors import ModelGlueError
from modelglue.search.backends import Backend, Job, subset_split
from modelglue.search.journal import Journal
from modelglue.search.space import Candidate, SearchSpace

FIDELITY_ETA = 4  # successive halving: each rung scores 4x the examples of the one below
MAX_RUNGS = 3


def fidelity_rungs(smallest: float, eta: int = FIDELITY_ETA, max_rungs: int = MAX_RUNGS) -> list[float]:
    """Fractions of the validation split to screen at, smallest first, ending at 1."""
    rungs = [1.0]
    while len(rungs) < max_rungs and rungs[0] / eta >= smallest - 1e-9:
        rungs.insert(0, rungs[0] / eta)
    return rungs


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
    fraction: float = 1.0  # share of the split's examples it was scored on
    error: str | None = None  # failed on every attempt (fitness -inf)

    def to_json(self) -> dict[str, Any]:
        c = self.candidate
        return {"index": self.index, "key": c.key, "origin": c.origin, "split": self.split, "feasible": c.feasible,
                "fraction": self.fraction, "error": self.error,
                **c.params(), "nonzero_models": c.nonzero(), "scores": self.scores, "fitness": self.fitness,
                "seconds": round(self.seconds, 4)}


@dataclass
class SearchContext:
    space: SearchSpace  # the primary space (heuristics average in it)
    scorer: Any
    backend: Backend
    journal: Journal
    objective: Objective
    budget: float  # full-validation evaluations
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    on_record: Callable[[Record], None] | None = None
    spaces: dict[str, SearchSpace] = field(default_factory=dict)  # method -> space; default {space.method: space}
    rungs: list[float] = field(default_factory=lambda: [1.0])  # fidelities to screen at (fidelity_rungs)
    # one line of progress (budget, best, elapsed, ETA) at most every `log_every` seconds:
    # for logs and pipes, where a bar cannot redraw
    log: Callable[[str], None] | None = None
    log_every: float = 15.0

    def __post_init__(self) -> None:
        self.spaces = self.spaces or {self.space.method: self.space}
        self.history: list[Record] = []  # distinct full-validation candidates, in order of first proposal
        self.screened: list[Record] = []  # subset scores, in order
        self._seen: dict[tuple[str, float], Record] = {}
        self._cost = 0.0
        self.scored_now = 0  # candidates actually scored by this process (not from the journal)
        self.chosen: Record | None = None  # a strategy's own pick (heuristics); else the best in history
        bar = self.progress and self.log is None and sys.stderr.isatty()
        if self.progress and not bar and self.log is None:
            self.log = lambda line: print(f"search: {line}", file=sys.stderr, flush=True)
        self._bar = tqdm(total=self.budget, desc="search", unit="eval", disable=not bar, leave=False,
                         bar_format="{l_bar}{bar}| {n:.1f}/{total:g} evals [{elapsed}<{remaining}]")
        self._t0 = self._last_log = time.perf_counter()

    @property
    def used(self) -> float:
        """Budget spent: full evaluations plus the fractions of the subset ones."""
        return self._cost

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget - self._cost)

    def score(self, candidates: Sequence[Candidate], split: str = "validation", *,
              count: bool = True, fraction: float = 1.0) -> list[Record]:
        """Scores for each candidate, in order, on `split` (or the first `fraction` of it).
        New validation candidates cost `fraction` of the budget (repeats are free); past
        the budget, BudgetExhausted is raised *after* the affordable ones are scored, so a
        partial generation is never wasted. `count=False` scores outside the search
        (baselines, test split): no budget, no history.
        """
        track = split == "validation" and count
        sub = subset_split(split, fraction)
        affordable, found, todo, exhausted = self._triage(candidates, sub, track, fraction)
        self._run_jobs(todo, sub, fraction, found)
        out = self._in_proposal_order(affordable, found, track, fraction)
        self._progress_line()
        if exhausted:
            raise BudgetExhausted
        return out

    def _triage(self, candidates: Sequence[Candidate], sub: str, track: bool, fraction: float
                ) -> tuple[list[Candidate], dict[str, Record], dict[str, Candidate], bool]:
        """Split the affordable candidates into those already known (this batch's repeats,
        the journal's, infeasible ones: `found`) and those to score (`todo`); stops at the
        first one the budget cannot pay for (`exhausted`), keeping the proposal order."""
        found: dict[str, Record] = {}  # key -> record, for this batch
        todo: dict[str, Candidate] = {}
        affordable: list[Candidate] = []
        spend = 0.0
        for cand in candidates:
            if (track and (cand.key, fraction) in self._seen) or cand.key in found or cand.key in todo:
                affordable.append(cand)
                continue
            if track and spend + fraction > self.remaining + 1e-9:
                return affordable, found, todo, True  # nothing after the first unaffordable one
            spend += fraction if track else 0.0
            affordable.append(cand)
            row = self.journal.get(cand.key, sub) if cand.feasible else None
            if not cand.feasible:
                found[cand.key] = Record(cand, sub, {}, float("-inf"), fraction=fraction)
            elif row is not None:
                fit = float("-inf") if row.error else self.objective(row.scores)
                found[cand.key] = Record(cand, sub, row.scores, fit, row.seconds, cached=True, fraction=fraction,
                                         error=row.error)
            else:
                todo[cand.key] = cand
        return affordable, found, todo, False

    def _run_jobs(self, todo: dict[str, Candidate], sub: str, fraction: float, found: dict[str, Record]) -> None:
        """Score `todo` on the backend as one batch, journaling each result as it arrives."""
        jobs = [Job(c.key, sub, c.recipe) for c in todo.values()]
        for res in self.backend.run(self.scorer, jobs):  # completion order: journal at once
            cand = todo[res.job.key]
            self.journal.put(cand.key, sub, cand.recipe, cand.params(), res.scores, res.seconds, cand.origin,
                             res.worker, res.error)
            self.scored_now += 1
            fit = float("-inf") if res.error else self.objective(res.scores)
            found[cand.key] = Record(cand, sub, res.scores, fit, res.seconds, fraction=fraction, error=res.error)

    def _in_proposal_order(self, affordable: list[Candidate], found: dict[str, Record], track: bool,
                           fraction: float) -> list[Record]:
        """The records in proposal order, whatever order the backend finished in (same on
        any backend); a tracked new one is charged to the budget and enters history
        (full fidelity) or `screened` (a subset)."""
        out = []
        for cand in affordable:
            if track and (cand.key, fraction) in self._seen:
                out.append(self._seen[(cand.key, fraction)])
                continue
            rec = found[cand.key]
            if track:
                self._charge(rec, fraction)
            out.append(rec)
        return out

    def _charge(self, rec: Record, fraction: float) -> None:
        self._seen[(rec.candidate.key, fraction)] = rec
        self._cost += fraction
        self._bar.update(fraction)
        if fraction >= 1:
            rec.index = len(self.history)
            self.history.append(rec)
            if self.on_record:
                self.on_record(rec)
        else:
            rec.index = len(self.screened)
            self.screened.append(rec)

    def _progress_line(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.log is None or (not force and now - self._last_log < self.log_every) or self._cost <= 0:
            return
        self._last_log = now
        elapsed = now - self._t0
        eta = elapsed / self._cost * self.remaining
        best = max((r.fitness for r in self.history if r.candidate.feasible), default=float("nan"))
        self.log(f"{self._cost:.1f}/{self.budget:g} evaluations ({len(self.history)} full, {len(self.screened)} "
                 f"on subsets), best validation {best:.3f}, {elapsed:.0f}s elapsed, about {eta:.0f}s left")

    def close(self) -> None:
        self._progress_line(force=True)
        self._bar.close()
