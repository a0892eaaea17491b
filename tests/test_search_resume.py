"""Kill a running search with SIGKILL, resume it, and check that nothing journaled
before the kill is scored again and that the result equals an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from modelglue.search import WeightDistanceScorer, search
from modelglue.search.testing import random_family

ENTRY = textwrap.dedent("""
    import json, os, sys, time
    from modelglue.search import WeightDistanceScorer, search

    out, log, delay, *models = sys.argv[1:]
    delay = float(delay)

    class SlowLoggingScorer(WeightDistanceScorer):
        # logs each scoring as it starts, then takes `delay` seconds: a kill lands mid-search
        def __call__(self, recipe, split):
            with open(log, "a") as f:
                f.write(json.dumps([recipe, split], sort_keys=True) + "\\n")
            time.sleep(delay)
            return super().__call__(recipe, split)

    base, f0, f1, f2 = models
    scorer = SlowLoggingScorer({"t1": {f0: 0.6, f1: 0.4}, "t2": {f2: 0.7, base: 0.3}}, split_noise=0.05)
    search(models, None, out, scorer=scorer, strategy="cmaes", budget=20, popsize=4, seed=11,
           progress=False, resume=os.environ.get("RESUME") == "1")
""")


def _run(entry: Path, out: Path, log: Path, delay: float, models: list[Path], resume: bool) -> subprocess.Popen:
    env = {**os.environ, "RESUME": "1" if resume else "0"}
    return subprocess.Popen([sys.executable, str(entry), str(out), str(log), str(delay), *map(str, models)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _journal(out: Path) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(out / "journal.sqlite")
    try:
        return db.execute("SELECT key, split, recipe FROM scores ORDER BY seq").fetchall()
    finally:
        db.close()


def test_sigkill_then_resume(tmp_path):
    models = random_family(tmp_path / "fam", n=3)
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    out = tmp_path / "killed"
    log1, log2 = tmp_path / "log1.jsonl", tmp_path / "log2.jsonl"

    proc = _run(entry, out, log1, 0.25, models, resume=False)
    deadline = time.time() + 120
    rows: list = []
    while time.time() < deadline and proc.poll() is None:
        if (out / "journal.sqlite").exists():
            try:
                rows = _journal(out)
            except sqlite3.OperationalError:  # the table is being created
                rows = []
            if len(rows) >= 6:
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"the search ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()  # an interrupted search never looks complete
    before = {(json.dumps(json.loads(recipe), sort_keys=True), split) for _, split, recipe in _journal(out)}
    assert len(before) >= 6

    proc = _run(entry, out, log2, 0.0, models, resume=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    rescored = [tuple(json.loads(line)) for line in log2.read_text().splitlines()]
    again = [r for r in rescored if (json.dumps(r[0], sort_keys=True), r[1]) in before]
    assert not again, "a journaled candidate was scored again"
    rows = _journal(out)
    assert len(rows) == len({(k, s) for k, s, _ in rows})

    assert rescored, "the resumed run had nothing left to do: kill earlier"

    # the same search, uninterrupted (in this process: the scorer's numbers are identical)
    base, f0, f1, f2 = (str(m) for m in models)
    scorer = WeightDistanceScorer({"t1": {f0: 0.6, f1: 0.4}, "t2": {f2: 0.7, base: 0.3}}, split_noise=0.05)
    ref = tmp_path / "uninterrupted"
    search([base, f0, f1, f2], None, ref, scorer=scorer, strategy="cmaes", budget=20, popsize=4, seed=11,
           progress=False)
    a, b = (json.loads((d / "results.json").read_text()) for d in (out, ref))
    assert a["best"]["key"] == b["best"]["key"] and a["best"]["validation"] == b["best"]["validation"]
    assert [c["key"] for c in a["candidates"]] == [c["key"] for c in b["candidates"]]
    assert [c["scores"] for c in a["candidates"]] == [c["scores"] for c in b["candidates"]]
