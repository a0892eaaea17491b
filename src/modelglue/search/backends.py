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
    error: str | None = None  # the candidate failed on every attempt: recorded as failed, not scored


class Backend(Protocol):
    name: str

    def check(self, scorer: Any, paths: Sequence[str], device: str) -> None: ...

    def run(self, scorer: Any, jobs: Sequence[Job]) -> Iterator[JobResult]: ...

    def close(self) -> None: ...


class LocalBackend:
    """Score one candidate after another in this process."""

    name = "local"

    def check(self, scorer: Any, paths: Sequence[str], device: str) -> None:
        pass  # the driver has checked the paths itself

    def run(self, scorer: Any, jobs: Sequence[Job]) -> Iterator[JobResult]:
        for job in jobs:
            start = time.perf_counter()
            scores = scorer(job.recipe, job.split)
            yield JobResult(job, scores, time.perf_counter() - start, "local")

    def close(self) -> None:
        pass


def _lost_worker(exc: BaseException, ray: Any) -> bool:
    """A worker died (OOM kill, preempted node, ...) rather than the scorer failing."""
    lost = tuple(getattr(ray.exceptions, n) for n in ("RayActorError", "WorkerCrashedError", "NodeDiedError",
                                                       "ObjectLostError", "OwnerDiedError") if hasattr(ray.exceptions, n))
    return isinstance(exc, lost)


class RayBackend:
    """Score a batch of candidates in parallel on Ray actors, on a local instance or a cluster.

    Each actor holds its own copy of the scorer (and so its own resident model), built on
    its first job; a batch (one CMA-ES generation) is spread over the actors. Workers get
    this package the Ray way (`runtime_env` `py_modules`), so a cluster's nodes need the
    dependencies (torch, transformers, ...) but not modelglue's source. Fault tolerance:
    an actor that dies is restarted by Ray (`max_restarts`) and its job goes to the next
    free worker; a candidate whose scorer raises is retried, and after `max_attempts`
    failures is returned as failed (journaled with its error). Bad input (a
    ModelGlueError) stops the search at once. We dispatch with `ray.wait` rather than
    `ray.util.ActorPool`: the pool cannot requeue a job whose actor died.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_workers: int = 2, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, max_attempts: int = 3, max_restarts: int = 3):
        try:
            import ray
        except ImportError:
            raise ModelGlueError("--backend ray needs Ray: pip install 'modelglue[ray]'") from None
        if num_workers < 1 or cpus_per_worker <= 0 or gpus_per_worker < 0 or max_attempts < 1:
            raise ModelGlueError("--workers and --worker-cpus must be positive, --worker-gpus not negative")
        self.ray = ray
        self.address, self.num_workers = address, num_workers
        self.cpus, self.gpus = cpus_per_worker, gpus_per_worker
        self.max_attempts, self.max_restarts = max_attempts, max_restarts
        self._actors: list[Any] = []
        self._scorer_ref: Any = None
        self._scorer_id: int | None = None
        self._started_ray = False

    def _init(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        import modelglue

        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                                      configure_logging=False)
        if self.address:
            kwargs["address"] = self.address
        else:  # a private instance of our size, never a cluster that `ray start` left running here
            kwargs["address"] = "local"
            kwargs["num_cpus"] = max(1, int(-(-self.num_workers * self.cpus // 1)))
            if self.gpus:
                kwargs["num_gpus"] = self.num_workers * self.gpus
        # the package travels with the job (uploaded once, cached on each node); one torch
        # thread per CPU the worker was given
        kwargs["runtime_env"] = {"py_modules": [modelglue], "env_vars": {
            "OMP_NUM_THREADS": str(max(1, int(self.cpus))), "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1"}}
        try:
            ray.init(**kwargs)
        except Exception as exc:  # a bad address, a cluster of another version, ...
            raise ModelGlueError(f"cannot start or reach Ray ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        self._started_ray = True

    def _start(self, scorer: Any) -> None:
        self._init()
        if self._scorer_id == id(scorer) and self._actors:
            return
        ray = self.ray
        for a in self._actors:
            ray.kill(a)
        worker_cls = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=self.max_restarts,
                                max_task_retries=0)(_RayWorker)
        # kept referenced: Ray rebuilds a restarted actor from this very object
        self._scorer_ref = ray.put(scorer)
        self._actors = [worker_cls.remote(self._scorer_ref, i, self.cpus) for i in range(self.num_workers)]
        self._scorer_id = id(scorer)

    def check(self, scorer: Any, paths: Sequence[str], device: str) -> None:
        """Before the first candidate: every worker can read every model path and has the
        device it was asked for; else one line naming the worker, its node and the problem."""
        self._start(scorer)
        ray = self.ray
        try:
            reports = ray.get([a.check.remote(list(paths), device) for a in self._actors], timeout=600)
        except Exception as exc:
            raise ModelGlueError(f"a Ray worker could not start: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        for node, problem in reports:
            if problem:
                raise ModelGlueError(f"Ray worker on node {node}: {problem}")

    def run(self, scorer: Any, jobs: Sequence[Job]) -> Iterator[JobResult]:
        if not jobs:
            return
        self._start(scorer)
        ray = self.ray
        queue = list(jobs)
        attempts: dict[str, int] = {}
        lost = [0] * len(self._actors)  # deaths per actor: past max_restarts Ray gives up on it
        idle = list(range(len(self._actors)))
        pending: dict[Any, tuple[Job, int]] = {}  # ref -> (job, actor index)
        # A call to an actor that Ray is restarting fails at once (max_task_retries=0), so a
        # lost actor rejoins the pool only when a probe, which Ray retries until the actor
        # is back, has answered: ref -> actor index
        probes: dict[Any, int] = {}
        while queue or pending:
            while queue and idle:
                i = idle.pop(0)
                job = queue.pop(0)
                pending[self._actors[i].score.remote(job.recipe, job.split)] = (job, i)
            if not pending and not probes:
                raise ModelGlueError(f"all Ray workers were lost (each more than {self.max_restarts} times)")
            done, _ = ray.wait([*pending, *probes], num_returns=1)
            if done[0] in probes:
                i = probes.pop(done[0])
                try:
                    ray.get(done[0])
                    idle.append(i)
                except Exception:  # Ray gave up restarting it: it stays out of the pool
                    pass
                continue
            job, i = pending.pop(done[0])
            try:
                scores, seconds, worker = ray.get(done[0])
            except Exception as exc:
                cause = getattr(exc, "cause", None) or exc
                if isinstance(cause, ModelGlueError):
                    raise ModelGlueError(str(cause)) from None
                attempts[job.key] = attempts.get(job.key, 0) + 1
                dead = _lost_worker(exc, ray)
                if not dead:
                    idle.append(i)
                else:
                    lost[i] += 1
                    if lost[i] <= self.max_restarts:
                        probes[self._actors[i].pid.options(max_task_retries=-1).remote()] = i
                error = "its worker was lost" if dead else f"{type(cause).__name__}: {cause}".splitlines()[0]
                if attempts[job.key] < self.max_attempts:
                    queue.insert(0, job)  # to the next free worker
                else:
                    yield JobResult(job, {}, 0.0, f"ray-{i}", error=f"failed {self.max_attempts} times: {error}")
                continue
            idle.append(i)
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

    def __init__(self, scorer: Any, index: int, cpus: float = 1.0):
        import torch

        torch.set_num_threads(max(1, int(cpus)))  # leave the other CPUs to the other workers
        self.scorer, self.name = scorer, f"ray-{index}"

    def score(self, recipe: dict[str, Any], split: str) -> tuple[dict[str, float], float, str]:
        start = time.perf_counter()
        scores = self.scorer(recipe, split)
        return scores, time.perf_counter() - start, self.name

    def check(self, paths: list[str], device: str) -> tuple[str, str | None]:
        import socket

        node = socket.gethostname()
        for p in paths:
            if not os.path.isdir(p) or not os.access(p, os.R_OK):
                return node, f"cannot read model directory {p} (use shared storage or the same path on every node)"
            if not os.path.isfile(os.path.join(p, "config.json")):
                return node, f"{p} has no config.json"
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                return node, f"no CUDA device for --device {device} (ask for GPUs with --worker-gpus)"
        return node, None

    def pid(self) -> int:
        return os.getpid()


def make_backend(name: str, address: str | None = None, num_workers: int = 2, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0) -> Backend:
    if name == "local":
        if address:
            raise ModelGlueError("--ray-address needs --backend ray")
        return LocalBackend()
    if name == "ray":
        return RayBackend(address, num_workers, cpus_per_worker, gpus_per_worker)
    raise ModelGlueError(f"unknown --backend {name!r} (use local or ray)")
