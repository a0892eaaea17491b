"""`modelglue search` end to end on the tiny demo zoo (real merges, real evaluation)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelglue.cli import main

LIMIT = "6"  # examples per task: enough to exercise the evaluator, fast on 2 cores


@pytest.fixture(scope="module")
def family_a(tiny_zoo) -> list[str]:
    manifest = json.loads((Path(tiny_zoo) / "zoo.json").read_text())
    models = [m for m in manifest["models"] if m["family"] == "A"]
    base = next(m for m in models if m["role"] == "base")
    others = [m for m in models if m["role"] != "base"]
    return [str(Path(tiny_zoo) / base["path"])] + [str(Path(tiny_zoo) / m["path"]) for m in others]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_search_cli_heuristic_then_resume(family_a, tmp_path):
    out = tmp_path / "s"
    args = ["search", "--models", *family_a[:3], "--tasks", "add,rev", "--strategy", "heuristic-average",
            "--limit", LIMIT, "--out", str(out), "-q"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert "best (heuristic-average)" in res.output
    data = json.loads((out / "results.json").read_text())
    assert data["best"]["test"]["scores"].keys() == {"add", "rev"}
    assert set(data["baselines"]) == {f"single:{Path(m).name}" for m in family_a[:3]} | {"uniform"}
    for f in ("best.yml", "convergence.png", "journal.sqlite", "summary.txt"):
        assert (out / f).exists(), f
    # a finished search resumed: everything comes from the journal, same answer
    res2 = invoke(*args, "--resume")
    assert res2.exit_code == 0, res2.output
    data2 = json.loads((out / "results.json").read_text())
    assert data2["scored_by_this_run"] == 0 and data2["best"]["key"] == data["best"]["key"]
    # without --resume the directory is refused, in one line
    res3 = invoke(*args)
    assert res3.exit_code == 2 and res3.output.count("\n") == 1 and "--resume" in res3.output


def test_search_cli_ties_cmaes_pareto_saves_model(family_a, tmp_path):
    out = tmp_path / "p"
    res = invoke("search", "--models", *family_a[1:3], "--base", family_a[0], "--method", "ties",
                 "--search-density", "--tasks", "add,rev", "--strategy", "pareto", "--budget", "8",
                 "--popsize", "4", "--pareto-points", "2", "--limit", LIMIT, "--no-baselines", "--save-model",
                 "--out", str(out), "-q")
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert data["front"] and (out / "pareto.png").exists()
    assert data["best"]["recipe"]["merge_method"] in ("ties", "linear")
    assert (out / "model" / "config.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--method", "ties"], "needs --base"),
    (["--strategy", "pareto"], "two tasks"),
    (["--task-weights", "add=x"], "task-weights"),
])
def test_search_cli_bad_input_one_line(family_a, tmp_path, extra, message):
    res = invoke("search", "--models", *family_a[:2], "--tasks", "add", "--out", str(tmp_path / "o"), *extra)
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error:") and res.output.count("\n") == 1 and message in res.output


def test_search_cli_missing_model(tmp_path):
    res = invoke("search", "--models", str(tmp_path / "nope"), "--tasks", "add", "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "not found" in res.output and res.output.count("\n") == 1
