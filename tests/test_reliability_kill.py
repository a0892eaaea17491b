"""Issue 9, parts 3 and 4: `modelglue merge` killed at random points, and a full disk.

After a SIGKILL the output directory either does not exist or is complete (loads, has
every tensor, all finite, bit-identical to an uninterrupted run); the next run succeeds
and removes the hidden temporary directory the killed one left. SIGTERM unwinds and
cleans up at once. A disk that fills at any point of the write gives one clear line and
leaves nothing behind.

Set MODELGLUE_RELIABILITY_LOG=FILE to record the counts (RELIABILITY.md).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_reliability_support import (
    CLI_ARGS, ENV, Zygote, shared_zygote, assert_clean_failure, build_llama, build_zoo, leftovers, load_and_check,
)

STATS: dict[str, object] = {}


@pytest.fixture(scope="module")
def zygote():
    z = shared_zygote()
    yield z
    log = os.environ.get("MODELGLUE_RELIABILITY_LOG")
    if log and STATS:
        old = json.loads(Path(log).read_text()) if Path(log).exists() else {}
        Path(log).write_text(json.dumps({**old, **STATS}, indent=1, sort_keys=True))


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, Path]:
    """Three Llamas of ~5M parameters (21 MB each): a ties merge takes about a second."""
    root = tmp_path_factory.mktemp("big")
    return {n: build_llama(root / n, seed=i, hidden=256, layers=8, vocab=64) for i, n in enumerate(("base", "ft1", "ft2"))}


def ties_recipe(m: dict[str, Path]) -> str:
    return (f"merge_method: ties\nbase_model: {m['base']}\nmodels:\n"
            f"  - model: {m['ft1']}\n    parameters: {{weight: 0.7, density: 0.5}}\n"
            f"  - model: {m['ft2']}\n    parameters: {{weight: 0.5, density: 0.3}}\n")


def linear_recipe(m: dict[str, Path]) -> str:
    return (f"merge_method: linear\nmodels:\n  - model: {m['ft1']}\n    parameters: {{weight: 1}}\n"
            f"  - model: {m['ft2']}\n    parameters: {{weight: 1}}\n")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def wait_for_temp_dir(out: Path, pid_alive, timeout: float = 30) -> bool:
    """Poll until the merge has created its hidden temporary sibling (the write has begun)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and pid_alive():
        if any(out.parent.glob(f".{out.name}.tmp-*")):
            return True
        time.sleep(0.002)
    return False


@pytest.mark.slow
def test_sigkill_at_random_points_leaves_nothing_or_a_complete_model(big, zygote, tmp_path):
    (tmp_path / "ties.yml").write_text(ties_recipe(big))
    t0 = time.monotonic()
    ref_res = zygote.run(["merge", "ties.yml", "ref", "-q"], cwd=tmp_path, tag="ref")
    duration = time.monotonic() - t0  # fork to exit
    assert ref_res.rc == 0, ref_res.stderr
    reference = load_and_check(tmp_path / "ref")

    rng = random.Random(9)
    kills, complete, absent, temp_left = 0, 0, 0, 0
    out = tmp_path / "out"
    for i in range(5):
        pid, _, _ = zygote.spawn(["merge", "ties.yml", "out", "-q"], cwd=tmp_path, tag=f"k{i}")
        if i == 0:  # once, as soon as the write has begun: a kill certainly mid-merge
            wait_for_temp_dir(out, lambda: _alive(pid))
        else:  # else anywhere, before or after the merge ends
            time.sleep(rng.uniform(0, duration * 1.1))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        rc = zygote.wait(pid)
        if rc == -signal.SIGKILL:
            kills += 1
        if out.exists():
            assert same(load_and_check(out), reference), "a killed merge left a wrong output"
            complete += 1
            shutil.rmtree(out)  # start the next round from scratch
        else:
            absent += 1
        temp_left += len(list(tmp_path.glob(".out.tmp-*")))
    assert kills >= 1, "the kill after the write began landed after the merge finished"

    # a rerun succeeds, gives the same model and removes the dead runs' temporary directories
    res = zygote.run(["merge", "ties.yml", "out", "-q"], cwd=tmp_path, tag="rerun")
    assert res.rc == 0, res.stderr
    assert same(load_and_check(out), reference)
    assert leftovers(out) == ["out"], leftovers(out)
    STATS.update(kill_merge_forked=kills, kill_merge_complete=complete, kill_merge_absent=absent,
                 kill_merge_temp_dirs_left=temp_left, kill_merge_duration_s=round(duration, 2))


@pytest.mark.slow
def test_sigkill_during_overwrite_keeps_old_or_new(big, zygote, tmp_path):
    """--overwrite onto an existing model: after a kill OUT is the old model or the new one,
    complete either way (or, in the instant between two renames, absent)."""
    (tmp_path / "ties.yml").write_text(ties_recipe(big))
    (tmp_path / "lin.yml").write_text(linear_recipe(big))
    t0 = time.monotonic()
    assert zygote.run(["merge", "ties.yml", "new", "-q"], cwd=tmp_path).rc == 0
    duration = time.monotonic() - t0
    assert zygote.run(["merge", "lin.yml", "out", "-q"], cwd=tmp_path).rc == 0
    new, old = load_and_check(tmp_path / "new"), load_and_check(tmp_path / "out")
    rng = random.Random(4)
    outcomes = []
    for i in range(2):
        if i:
            assert zygote.run(["merge", "lin.yml", "out", "-q", "--overwrite"], cwd=tmp_path, tag=f"o{i}").rc == 0
        pid, _, _ = zygote.spawn(["merge", "ties.yml", "out", "-q", "--overwrite"], cwd=tmp_path, tag=f"k{i}")
        wait_for_temp_dir(tmp_path / "out", lambda: True, timeout=10)
        time.sleep(rng.uniform(duration * 0.3, duration * 2.5))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        zygote.wait(pid)
        out = tmp_path / "out"
        if out.exists():
            got = load_and_check(out)
            assert same(got, old) or same(got, new)
            outcomes.append("old" if same(got, old) else "new")
        else:
            outcomes.append("absent")
    res = zygote.run(["merge", "ties.yml", "out", "-q", "--overwrite"], cwd=tmp_path, tag="final")
    assert res.rc == 0, res.stderr
    assert same(load_and_check(tmp_path / "out"), new)
    assert leftovers(tmp_path / "out") == ["out"]
    STATS.update(kill_overwrite_forked=len(outcomes), kill_overwrite_outcomes=outcomes)


@pytest.mark.slow
def test_sigkill_console_script_then_rerun(big, zygote, tmp_path):
    """The same through the installed console script: kill it mid-write, rerun it."""
    (tmp_path / "ties.yml").write_text(ties_recipe(big))
    out = tmp_path / "out"
    proc = subprocess.Popen(CLI_ARGS + ["merge", "ties.yml", "out", "-q"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = wait_for_temp_dir(out, lambda: proc.poll() is None, timeout=60)
    time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert started and proc.returncode == -signal.SIGKILL
    assert not out.exists() or load_and_check(out)
    left = list(tmp_path.glob(".out.tmp-*"))
    rerun = zygote.run(["merge", "ties.yml", "out", "-q", "--overwrite"], cwd=tmp_path)
    assert rerun.rc == 0, rerun.stderr
    load_and_check(out)
    assert leftovers(out) == ["out"]
    STATS.update(kill_merge_console=1, kill_merge_console_temp_left_before_rerun=len(left))


def test_sigterm_unwinds_and_cleans_up(big, zygote, tmp_path):
    (tmp_path / "ties.yml").write_text(ties_recipe(big))
    out = tmp_path / "out"
    pid, _, err = zygote.spawn(["merge", "ties.yml", "out", "-q"], cwd=tmp_path, tag="term")
    assert wait_for_temp_dir(out, lambda: True, timeout=10)
    time.sleep(0.1)
    os.kill(pid, signal.SIGTERM)
    rc = zygote.wait(pid)
    if rc == 0:  # finished before the signal: then it must be complete
        load_and_check(out)
        pytest.skip("merge finished before SIGTERM arrived")
    assert rc == 130, err.read_text()
    assert err.read_text().strip() == "interrupted"
    assert leftovers(out) == [], leftovers(out)
    STATS.update(sigterm_merge=1)


# ----------------------------------------------------------------------------- disk full


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_fails_cleanly(big, zygote, small_fs, tmp_path):
    """21 MB of weights into a 2 MB filesystem."""
    (tmp_path / "ties.yml").write_text(ties_recipe(big))
    out = small_fs / "merged"
    res = zygote.run(["merge", "ties.yml", out, "-q"], cwd=tmp_path)
    line = assert_clean_failure(res, out, "No space left on device", str(out))
    assert list(small_fs.iterdir()) == []  # the partial temporary directory is gone too
    STATS["disk_full_message"] = line


def test_disk_full_at_every_point_of_the_write(zygote, small_fs, tmp_path):
    """A tiny model into filesystems of growing size, so the disk fills in every phase: the
    first shard, the config, the tokenizer/generation files, the model card. Every run either
    fails cleanly (one line, nothing left) or succeeds with a complete model."""
    zoo = build_zoo(tmp_path.parent / "reliability-zoo-kill")
    (tmp_path / "lin.yml").write_text(
        f"merge_method: linear\nmodels:\n  - model: {zoo['a']}\n    parameters: {{weight: 1}}\n"
        f"  - model: {zoo['b']}\n    parameters: {{weight: 1}}\n")
    failures, successes, messages = 0, 0, set()
    for kb in range(4, 64, 4):
        subprocess.run(["mount", "-o", f"remount,size={kb}k", str(small_fs)], check=True)
        out = small_fs / "merged"
        res = zygote.run(["merge", "lin.yml", out, "-q"], cwd=tmp_path, tag=f"s{kb}")
        if res.rc == 0:
            load_and_check(out)
            successes += 1
            break
        line = assert_clean_failure(res, out, "No space left on device", str(out))
        assert list(small_fs.iterdir()) == []
        messages.add(line.replace(str(small_fs), "SMALL"))
        failures += 1
    assert successes == 1 and failures >= 3
    STATS.update(disk_full_runs=failures + successes, disk_full_messages=sorted(messages))
