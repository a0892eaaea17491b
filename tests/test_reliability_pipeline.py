"""Issue 9, part 3 for the pipeline commands: `zoo analyze` and `glue` killed at random points.

After a SIGKILL, what the command leaves is either absent or complete (clusters.json and
results.json are written last, atomically), and a rerun succeeds with the same result as
an uninterrupted run; glue's rerun reuses what the killed run finished (journals, merged
and mixed models, cached scores).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from test_reliability_support import CLI_ARGS, ENV, build_llama

KILLS = 2  # random kill points per command (each also exercises the rerun)


def run(args: list[str], cwd: Path, env: dict) -> tuple[int, float]:
    t0 = time.monotonic()
    p = subprocess.run(CLI_ARGS + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.returncode, time.monotonic() - t0


def kill_after(args: list[str], cwd: Path, env: dict, delay: float) -> None:
    proc = subprocess.Popen(CLI_ARGS + args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=delay)  # finished before the kill point: fine, the check still holds
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_analyze_killed_leaves_nothing_or_complete_and_reruns(tmp_path):
    models = [build_llama(tmp_path / f"m{i}", seed=i % 2, hidden=128, layers=6, vocab=64) for i in range(4)]
    args = ["zoo", "analyze", *map(str, models), "-q"]
    run(args + ["--out", "ref"], tmp_path, ENV)
    duration = run(args + ["--out", "timed"], tmp_path, ENV)[1]
    reference = json.loads((tmp_path / "ref" / "clusters.json").read_text())["clusters"]
    rng = random.Random(0)
    for k in range(KILLS):
        out = tmp_path / f"killed{k}"
        kill_after(args + ["--out", out.name], tmp_path, ENV, rng.uniform(0.3, 0.95) * duration)
        if (out / "clusters.json").exists():  # complete: every output, and valid
            assert json.loads((out / "clusters.json").read_text())["clusters"] == reference
            assert (out / "similarity.json").is_file()
        run(args + ["--out", out.name], tmp_path, ENV)  # the rerun succeeds ...
        assert json.loads((out / "clusters.json").read_text())["clusters"] == reference  # ... with the same result


@pytest.mark.slow
def test_glue_killed_then_rerun_reuses_work_and_matches(tiny_zoo, tmp_path):
    zoo = tmp_path / "zoo.yml"
    zoo.write_text(f"models: [{tiny_zoo}]\ntasks: [add, sub, sort]\nbudget: 3\nlimit: 20\ntest_limit: 20\n"
                   "strategies: [heuristic-average]\nrouters: [hidden]\nbaselines: false\n")
    env = {**ENV, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # cold score cache: the kill lands mid-work
    duration = run(["glue", str(zoo), "--out", "ref", "-q"], tmp_path, env)[1]
    reference = json.loads((tmp_path / "ref" / "results.json").read_text())
    rng = random.Random(1)
    for k in range(KILLS):
        out = tmp_path / f"killed{k}"
        env_k = {**env, "XDG_CACHE_HOME": str(tmp_path / f"cache{k}")}
        kill_after(["glue", str(zoo), "--out", out.name, "-q"], tmp_path, env_k, rng.uniform(0.2, 0.9) * duration)
        if (out / "results.json").exists():  # written last: the run had finished everything
            assert (out / "report.html").is_file()
        run(["glue", str(zoo), "--out", out.name, "-q"], tmp_path, env_k)
        again = json.loads((out / "results.json").read_text())
        assert [(e["name"], e["test"]) for e in again["entries"]] == [(e["name"], e["test"]) for e in reference["entries"]]
        assert again["clusters"] == reference["clusters"]
