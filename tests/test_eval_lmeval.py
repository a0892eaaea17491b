"""lm-evaluation-harness: exported tasks score exactly what `modelglue eval` scores."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

from modelglue.evaluate import evaluate, load_model  # noqa: E402
from modelglue.evaluate.lmeval import export_lm_eval_tasks  # noqa: E402


def test_export_writes_yaml_and_data(tmp_path):
    names = export_lm_eval_tasks(tmp_path, tasks="add,rev")
    assert set(names) == {"modelglue_add", "modelglue_rev", "modelglue_add_val", "modelglue_rev_val"}
    cfg = json.loads((tmp_path / "modelglue_add.yaml").read_text())  # JSON is YAML
    assert cfg["output_type"] == "generate_until" and cfg["generation_kwargs"]["until"] == ["\n"]
    data = cfg["dataset_kwargs"]["data_files"]["test"]
    assert len(open(data).read().splitlines()) == 200


def test_lm_eval_score_equals_modelglue_score(tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model, tok = load_model(tiny_zoo / "a_sort")
    tasks = ["sort", "copy"]
    ours = evaluate(model, tok, tasks, split="test", limit=40)["scores"]
    theirs = evaluate(model, tok, [f"lm_eval:{t}" for t in tasks], split="test", limit=40)["scores"]
    for t in tasks:
        assert theirs[f"lm_eval:{t}"] == pytest.approx(ours[t]), t
    assert 0 < ours["sort"] < 1 or 0 < ours["copy"] < 1  # a non-trivial score, not 0 == 0



def test_cli_export_without_model(tmp_path):
    from click.testing import CliRunner

    from modelglue.cli import main

    res = CliRunner().invoke(main, ["eval", "--export-lm-eval", str(tmp_path / "x"), "--tasks", "copy"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x" / "modelglue_copy.yaml").is_file() and "lm_eval --include_path" in res.output
    res = CliRunner().invoke(main, ["eval"])
    assert res.exit_code == 2 and "error: give a MODEL_DIR" in res.output
