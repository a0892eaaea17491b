"""A search on a real two-node Ray cluster (`ray start --head` plus a second `ray start
--address` node, loopback only) survives a worker killed mid-generation, and ends where
the local backend ends with the same seed.

The module holds the `ray_exclusive` lock (conftest): `ray stop` ends every Ray process of
this user.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from modelglue.search import WeightDistanceScorer, search
from modelglue.search.testing import random_family

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(ray_exclusive):
    """HOST:PORT of a head node (1 CPU) joined by a second node (1 CPU)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}  # RAY_AUTH_MODE: conftest
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    # Ray puts AF_UNIX sockets under the temp dir, and their paths may not exceed 107 bytes:
    # pytest's own temp dirs under xdist (/tmp/pytest-of-root/pytest-24/popen-gw0/...) are
    # too deep for the joining node's plasma socket, so a short one
    tmp = Path(tempfile.mkdtemp(prefix="mg-ray-", dir="/tmp"))
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    def ray_start(*args: str) -> None:
        done = subprocess.run([ray_cli, "start", *args, *common], env=env, capture_output=True, text=True, timeout=180)
        if done.returncode:  # say why: `ray start` prints its reason on stdout or stderr
            pytest.fail(f"ray start {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

    try:
        ray_start("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={tmp}")
        ray_start(f"--address=127.0.0.1:{port}")
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def fam(tmp_path_factory) -> list[Path]:
    return random_family(tmp_path_factory.mktemp("ray_family"), n=3)


def _kill_one_worker_after(journal: Path, rows: int, killed: list[int]) -> None:
    """Once `rows` candidates are journaled, SIGKILL one scoring worker process."""
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            # read-only: a plain connect would create the file before the search does, and
            # the search would then refuse an existing journal
            n = sqlite3.connect(f"file:{journal}?mode=ro", uri=True).execute("SELECT COUNT(*) FROM scores").fetchone()[0]
        except sqlite3.Error:
            n = 0
        if n >= rows:
            out = subprocess.run(["pgrep", "-f", "ray::_RayWorker"], capture_output=True, text=True).stdout.split()
            if out:
                os.kill(int(out[0]), signal.SIGKILL)
                killed.append(int(out[0]))
                return
        time.sleep(0.05)


def test_two_node_search_survives_a_killed_worker(cluster, fam, tmp_path):
    base, f0, f1, f2 = fam
    targets = {"t1": {f0: 0.6, f1: 0.4}, "t2": {f2: 0.7, base: 0.3}}
    kw = dict(strategy="cmaes", base=base, budget=14, popsize=6, seed=5, progress=False, baselines=False)
    local = search(fam, None, tmp_path / "local", scorer=WeightDistanceScorer(targets), **kw)

    killed: list[int] = []
    watcher = threading.Thread(target=_kill_one_worker_after, args=(tmp_path / "ray" / "journal.sqlite", 8, killed))
    watcher.start()
    remote = search(fam, None, tmp_path / "ray", scorer=WeightDistanceScorer(targets, delay=0.3), backend="ray",
                    ray_address=cluster, workers=2, **kw)
    watcher.join()
    assert killed, "no worker was killed: the test did not exercise recovery"
    assert [r.candidate.key for r in remote.history] == [r.candidate.key for r in local.history]
    assert [r.candidate.key for r in remote.screened] == [r.candidate.key for r in local.screened]
    assert remote.best.candidate.key == local.best.candidate.key and remote.best.fitness == local.best.fitness
    rows = sqlite3.connect(tmp_path / "ray" / "journal.sqlite").execute("SELECT worker, error FROM scores").fetchall()
    assert {w for w, _ in rows} == {"ray-0", "ray-1"} and all(e is None for _, e in rows)


def test_a_worker_that_cannot_read_a_model_stops_the_search_in_one_line(cluster, fam, tmp_path):
    """The driver sees the models; the check runs on the workers. A path the driver can
    read but a worker cannot is what a cluster without shared storage looks like; here
    the model directory loses its read permission for everyone but root... so instead
    we point at a model that vanished after the driver's own check."""
    from modelglue.errors import ModelGlueError
    from modelglue.search.backends import RayBackend

    backend = RayBackend(cluster, num_workers=2)
    try:
        with pytest.raises(ModelGlueError, match=r"Ray worker on node .*cannot read model directory .*missing"):
            backend.check(WeightDistanceScorer({}), [str(fam[0]), str(tmp_path / "missing")], "cpu")
        with pytest.raises(ModelGlueError, match="no CUDA device"):
            backend.check(WeightDistanceScorer({}), [str(fam[0])], "cuda")
    finally:
        backend.close()


class FailingOnTies(WeightDistanceScorer):
    """Raises for every ties candidate (a scorer bug, an OOM on one shape, ...)."""

    def __call__(self, recipe, split):
        if recipe.get("merge_method") == "ties":
            raise RuntimeError("out of memory (simulated)")
        return super().__call__(recipe, split)


def test_a_candidate_that_keeps_failing_is_journaled_as_failed(cluster, fam, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    base, f0, f1, f2 = fam
    scorer = FailingOnTies({"t1": {f0: 0.5, f1: 0.5}})
    kw = dict(strategy="cmaes", base=base, budget=8, seed=2, progress=False, baselines=False)
    res = search(fam, None, tmp_path / "o", scorer=scorer, backend="ray", ray_address=cluster, workers=2, **kw)
    rows = sqlite3.connect(tmp_path / "o" / "journal.sqlite").execute(
        "SELECT recipe, error FROM scores WHERE error IS NOT NULL").fetchall()
    assert rows and all('"ties"' in recipe and "failed 3 times: RuntimeError: out of memory" in err
                        for recipe, err in rows)
    assert res.best.candidate.method != "ties" and res.best.fitness > 0
    # resuming does not score a failed candidate again: it stays failed, the path is the same
    again = search(fam, None, tmp_path / "o", scorer=scorer, resume=True, **kw)
    assert again.scored_now == 0 and again.best.candidate.key == res.best.candidate.key
