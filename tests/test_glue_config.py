"""ZOO.yml, checked by pydantic against GlueConfig's annotations: every key typed and
ranged, each problem one line naming the key (a near match for a misspelt key or name),
relative paths found next to the file. No models are read: a directory with a
config.json is enough."""
from __future__ import annotations

from pathlib import Path

import pytest

from modelglue.errors import ModelGlueError
from modelglue.glue import load_glue_config


@pytest.fixture
def zoo_dir(tmp_path: Path) -> Path:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    (tmp_path / "mine.jsonl").write_text("")
    return tmp_path


def _load(zoo_dir: Path, text: str, **overrides):
    (zoo_dir / "zoo.yml").write_text("models: [a, b]\ntasks: [add]\n" + text)
    return load_glue_config(zoo_dir / "zoo.yml", zoo_dir / "out", **overrides)


@pytest.mark.parametrize("text, message", [
    ("budgett: 3\n", "zoo.yml: unknown key 'budgett' (did you mean 'budget'?)"),
    ("out_dir: x\n", "zoo.yml: unknown key 'out_dir'"),  # --out says where, not the file
    ("budget: 0\n", "zoo.yml: budget must be a positive integer"),
    ("budget: true\n", "zoo.yml: budget: input should be a valid integer"),
    ("layer_groups: 0\n", "zoo.yml: layer_groups must be a positive integer"),
    ("threshold: high\n", "zoo.yml: threshold: input should be a valid number"),
    ("threshold: 1.5\n", "zoo.yml: threshold: input should be less than or equal to 1"),
    ("cluster_method: papr\n", "zoo.yml: cluster_method: input should be 'hierarchical' or 'paper'"),
    ("seed: x\n", "zoo.yml: seed: input should be a valid integer"),
    ("baselines: maybe\n", "zoo.yml: baselines: input should be a valid boolean"),
    ("routers: hidden, embd\n", "zoo.yml: routers[1]: input should be 'hidden', 'embed', 'trained' or 'random'"),
    ("strategies: [cmaess]\n", "zoo.yml: unknown strategy 'cmaess' (did you mean 'cmaes'?)"),
    ("method: tiess\n", "zoo.yml: method: unknown merge_method 'tiess' (did you mean 'ties'?)"),
])
def test_each_bad_key_is_one_line_naming_it(zoo_dir, text, message):
    with pytest.raises(ModelGlueError) as err:
        _load(zoo_dir, text)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(str(zoo_dir / message.split(": ", 1)[0]) + ": " + message.split(": ", 1)[1])


def test_missing_or_empty_models_and_tasks(zoo_dir):
    for text in ("tasks: [add]\n", "models: []\ntasks: [add]\n", "models: [a]\ntasks:\n"):
        (zoo_dir / "zoo.yml").write_text(text)
        with pytest.raises(ModelGlueError, match=r"zoo.yml: missing key '(models|tasks)'$"):
            load_glue_config(zoo_dir / "zoo.yml", zoo_dir / "out")


def test_values_paths_and_overrides(zoo_dir, monkeypatch):
    monkeypatch.chdir(zoo_dir.parent)  # relative paths are found next to the zoo file
    cfg = _load(zoo_dir, "tasks: add, mine.jsonl\nrouters: hidden, random\nbase: a\nlimit: null\nthreshold: 0.9\n"
                "baselines: false\n", budget=5)
    assert cfg.models == [zoo_dir / "a", zoo_dir / "b"] and cfg.base == zoo_dir / "a"
    assert cfg.tasks == ["add", str(zoo_dir / "mine.jsonl")] and cfg.routers == ["hidden", "random"]
    assert (cfg.budget, cfg.limit, cfg.threshold, cfg.baselines, cfg.out_dir) == (5, 100, 0.9, False, zoo_dir / "out")
