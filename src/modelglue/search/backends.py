"""Where candidates are scored: in this process, or on a Ray cluster.

Backends only score; they never decide what to score. Strategies generate candidates
deterministically from the seed and the scores, so the same seed gives the same search
on any backend. `run` yields results as they complete, so each one can be journaled
the moment it exists.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

from modelglue.errors import ModelGlueError


@dataclass(frozen=True)
class Job:
    key: str
    split: str  # "validation", "test", or "validation@0.25": the first quarter of each task's examples
    recipe: dict[str, Any]


def subset_split(split: str, fraction: float) -> str:
    """The split name of a subset: the first `fraction` of each task's examples (nested:
    a smaller subset is a prefix of a larger one, which successive halving relies on)."""
    return split if fraction >= 1 else f"{split}@{fraction:.6g}"


def parse_split(split: str) -> tuple[str, float]:
    """("validation@0.25") -> ("validation", 0.25); a plain split is its whole set."""
    name, _, frac = split.partition("@")
    if not frac:
        return name, 1.0
    try:
        fraction = float(frac)
    except ValueError:
        raise ModelGlueError(f"bad split {split!r} (expected NAME or NAME@FRACTION)") from None
    if not 0 < fraction <= 1:
        raise ModelGlueError(f"bad split {split!r}: the fraction must lie in (0, 1]")
    return name, fraction


@dataclass(frozen=True)
class JobResult:
    job: Job
    scores: dict[str, float]
    seconds: float
    worker: str


class Backend(Protocol):
    name: str

    def run(self, scorer: Any, jobs: Sequence[Job]) -> Iterator[JobResult]: ...

    def close(self) -> None: ...


class LocalBackend:
    """Score one candidate after another in this process."""

    name = "local"

    def run(self, scorer: Any, jobs: Sequence[Job]) -> Iterator[JobResult]:
        for job in jobs:
            start = time.perf_counter()
            scores = scorer(job.recipe, job.split)
            yield JobResult(job, scores, time.perf_counter() - start, "local")

    def close(self) -> None:
        pass


class RayBackend:
    """Score a batch of candidates in parallel on Ray actors.

    Each actor holds its own copy of the scorer (and so its own resident model), built
    on its first job; a batch (one CMA-ES generation) is spread over the actors.
    `address=None` starts a local Ray instance sized to `num_workers` CPUs.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_workers: int = 2, cpus_per_worker: float = 1.0):
        try:
            import ray
        except ImportError:
            raise ModelGlueError("--backend ray needs Ray: pip install 'modelglue[ray]'") from None
        self.ray = ray
        self.address, self.num_workers, self.cpus = address, max(1, num_workers), cpus_per_worker
        self._actors: list[Any] = []
        self._scorer_ref = None
        self._scorer_id: int | None = None
        self._started_ray = False

    def _start(self, scorer: Any) -> None:
        ray = self.ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                                          configure_logging=False)
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs["num_cpus"] = max(1, int(self.num_workers * self.cpus))
            # Workers must import modelglue from the same source tree as the driver.
            src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(
                p for p in (src, os.environ.get("PYTHONPATH", "")) if p), "OMP_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false"}}
            try:
                ray.init(**kwargs)
            except Exception as exc:  # a bad address, a cluster of another version, ...
                raise ModelGlueError(f"cannot start or reach Ray ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
            self._started_ray = True
        if self._scorer_id != id(scorer):
            for a in self._actors:
                ray.kill(a)
            worker_cls = ray.remote(num_cpus=self.cpus)(_RayWorker)
            self._scorer_ref = ray.put(scorer)
            self._actors = [worker_cls.remote(self._scorer_ref, i) for i in range(self.num_workers)]
            self._scorer_id = id(scorer)

    def run(self, scorer: Any, jobs: Sequence[Job]) -> Iterator[JobResult]:
        if not jobs:
            return
        self._start(scorer)
        ray = self.ray
        pending: dict[Any, Job] = {}
        queue = list(jobs)
        idle = list(self._actors)
        busy: dict[Any, Any] = {}
        while queue or pending:
            while queue and idle:
                actor = idle.pop(0)
                job = queue.pop(0)
                ref = actor.score.remote(job.recipe, job.split)
                pending[ref] = job
                busy[ref] = actor
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            job = pending.pop(ref)
            idle.append(busy.pop(ref))
            try:
                scores, seconds, worker = ray.get(ref)
            except Exception as exc:
                cause = getattr(exc, "cause", None) or exc
                if isinstance(cause, ModelGlueError):
                    raise ModelGlueError(str(cause)) from None
                raise ModelGlueError(f"a Ray worker failed: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}") from None
            yield JobResult(job, scores, seconds, worker)

    def close(self) -> None:
        for a in self._actors:
            try:
                self.ray.kill(a)
            except Exception:
                pass
        self._actors = []
        if self._started_ray and self.ray.is_initialized():
            self.ray.shutdown()


class _RayWorker:
    """A Ray actor holding one scorer (and, once used, its resident model)."""

    def __init__(self, scorer: Any, index: int):
        import torch

        torch.set_num_threads(1)  # one CPU per worker: leave the others to the other workers
        self.scorer, self.name = scorer, f"ray-{index}"

    def score(self, recipe: dict[str, Any], split: str) -> tuple[dict[str, float], float, str]:
        start = time.perf_counter()
        scores = self.scorer(recipe, split)
        return scores, time.perf_counter() - start, self.name


def make_backend(name: str, address: str | None = None, num_workers: int = 2) -> Backend:
    if name == "local":
        if address:
            raise ModelGlueError("--ray-address needs --backend ray")
        return LocalBackend()
    if name == "ray":
        return RayBackend(address, num_workers)
    raise ModelGlueError(f"unknown --backend {name!r} (use local or ray)")
