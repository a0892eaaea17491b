"""Issue 17, item 6: what mergekit 0.1.5 silently drops (unknown keys anywhere, parameters
a method does not read) runs as in mergekit with one warning line each; `--strict` /
strict=True refuses it. Outputs are checked against mergekit's own on committed fixtures
(tests/data/mergekit_golden/chat_templates, made by benchmarks/golden_chat_templates.py)."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelglue.errors import ModelGlueError
from modelglue.merge import merge
from modelglue.recipe import load_recipe

GOLDEN = Path(__file__).resolve().parent / "data" / "mergekit_golden" / "chat_templates"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text()) if (GOLDEN / "manifest.json").is_file() else {}
M = {n: str(GOLDEN / "models" / n) for n in ("ct_base", "ct_ft", "ct_a")}

# recipe -> the warnings (substrings, in order) modelglue prints, one line per ignored key
EXPECTED = {
    "ignored_keys_models.yml": [
        "unknown key 'align_weights'", "unknown key 'dype' (did you mean 'dtype'?)",
        "unknown key 'int8_mask' (a parameter of ties: put it under 'parameters:')",
        "unknown key 'normalize' (a parameter of ties",
        "models[1]: unknown key 'revision'",
        "models[1].parameters.densty: parameter 'densty' is not used by 'ties' (did you mean 'density'?)",
        "models[1].parameters.t: parameter 't' is not used by 'ties'",
        "models[1].parameters.lambda: 'ties' reads 'lambda' once per tensor",
        "models[2].parameters.weight: unknown key 'fliter' in a condition (did you mean 'filter'?)",
        "parameters.align_weights: parameter 'align_weights' is not used by 'ties'",
        "models[0].parameters.weight: 'ties' does not read 'weight' for the base model",
        "models[0].parameters.density: 'ties' does not read 'density' for the base model",
    ],
    "ignored_keys_slices.yml": [
        "unknown key 'out_type' (did you mean 'out_dtype'?)",
        "slices[0]: key 'residual_weight' (mergekit 0.1.5 accepts it and never uses it)",
        "slices[0].sources[0]: unknown key 'revision'",
        "slices[0].sources[0].parameters.t: 'slerp' reads 't' once per tensor",
        "slices[0].parameters.weight: parameter 'weight' is not used by 'slerp'",
    ],
}


def _warnings(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("warning:")]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ignored_keys_run_as_in_mergekit_with_one_warning_each(name, tmp_path, capsys):
    expected = GOLDEN / MANIFEST["recipes"][name]["output"]
    out = merge(GOLDEN / name, tmp_path / "out")
    ours, theirs = load_file(out / "model.safetensors"), load_file(expected / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype, k  # `dype: float16` / `out_type` changed nothing
        torch.testing.assert_close(ours[k], theirs[k], atol=1e-6, rtol=0)
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == len(EXPECTED[name]), "\n".join(lines)
    for part in EXPECTED[name]:
        assert sum(part in ln for ln in lines) == 1, (part, lines)
    assert all(ln.startswith(f"warning: {GOLDEN / name}: ") and ln.endswith(": ignored, as mergekit does")
               for ln in lines), lines


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_strict_refuses_the_first_ignored_key_in_one_line(name, tmp_path, capsys):
    with pytest.raises(ModelGlueError, match="mergekit ignores this, and --strict refuses it") as err:
        merge(GOLDEN / name, tmp_path / "out", strict=True)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
    assert any(part in str(err.value) for part in EXPECTED[name])
    assert _warnings(capsys.readouterr().err) == []  # strict: the error only


def test_cli_prints_the_warnings_to_the_terminal_and_the_log(tmp_path):
    """`modelglue merge` with stderr going to a log file: the warning lines are there, the
    merge succeeds; with --strict it exits 2 with one error line and writes nothing."""
    cli = [sys.executable, "-c", "from modelglue.cli import main; main()", "merge"]
    with open(tmp_path / "merge.log", "w") as log:
        p = subprocess.run(cli + [GOLDEN / "ignored_keys_slices.yml", tmp_path / "out", "-q"], stderr=log,
                           stdout=subprocess.PIPE, text=True, timeout=300)
    text = (tmp_path / "merge.log").read_text()
    assert p.returncode == 0 and "merged into" in p.stdout
    assert len(_warnings(text)) == len(EXPECTED["ignored_keys_slices.yml"]) and "Traceback" not in text
    p = subprocess.run(cli + [GOLDEN / "ignored_keys_slices.yml", tmp_path / "strict", "-q", "--strict"],
                       capture_output=True, text=True, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "--strict" in lines[0]
    assert not (tmp_path / "strict").exists()


def _ties(**extra) -> dict:
    return {"merge_method": "ties", "base_model": M["ct_base"],
            "models": [{"model": M["ct_ft"], "parameters": {"weight": 1.0, "density": 0.5}},
                       {"model": M["ct_a"], "parameters": {"weight": 1.0, "density": 0.5}}], **extra}


def test_each_kind_warns_once_and_strict_refuses_it():
    cases = {
        "top-level key": (_ties(dype="float16"), "unknown key 'dype' (did you mean 'dtype'?)"),
        "models[] key": (_ties(models=[{"model": M["ct_ft"], "lora": "x", "parameters": {"weight": 1.0}}]),
                         "models[0]: unknown key 'lora'"),
        "unknown parameter": (_ties(parameters={"densty": 0.2}), "parameter 'densty' is not used by 'ties' (did you mean"),
        "other method's parameter": (_ties(parameters={"t": 0.2}), "parameter 't' is not used by 'ties'"),
        "condition key": (_ties(parameters={"lambda": [{"value": 1.0, "filters": "mlp"}]}),
                          "unknown key 'filters' in a condition (did you mean 'filter'?)"),
        "empty chat_template": (_ties(chat_template=""), "empty key 'chat_template'"),
    }
    for what, (recipe, part) in cases.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rec = load_recipe(recipe)
        assert len(rec.warnings) == 1 and part in rec.warnings[0], (what, rec.warnings)
        assert _warnings(err.getvalue()) == [f"warning: {rec.warnings[0]}"], what
        with pytest.raises(ModelGlueError, match="--strict refuses it") as exc:
            load_recipe(recipe, strict=True)
        assert part in str(exc.value), what


def test_a_clean_recipe_prints_nothing_and_what_mergekit_honours_is_still_refused(capsys):
    rec = load_recipe(_ties(), strict=True)
    assert rec.warnings == [] and capsys.readouterr().err == ""
    # mergekit honours `modules:` and a parameter value it can read: those stay errors
    with pytest.raises(ModelGlueError, match="'modules' is not supported"):
        load_recipe({**_ties(), "modules": {"text": {"models": []}}})
    with pytest.raises(ModelGlueError, match="density"):
        load_recipe(_ties(parameters={"density": 3.0}))
    with pytest.raises(ModelGlueError, match="filter must be a string"):
        load_recipe(_ties(parameters={"lambda": [{"value": 1.0, "filter": 3}]}))


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

junk_keys = st.dictionaries(st.sampled_from(["dype", "int8_mask", "normalize", "revision", "lora", "residual_weight",
                                             "x", "tokenizer_sourse"]), st.one_of(st.booleans(), st.text(max_size=4)),
                            max_size=3)
junk_params = st.dictionaries(st.sampled_from(["densty", "t", "lambda", "weight", "density", "gamma", "epsilon"]),
                              st.floats(0.1, 0.9), max_size=3)


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(junk_keys, junk_keys, junk_params, junk_params)
def test_strict_and_lenient_agree(top, per_model, model_params, shared):
    """Lenient loading succeeds exactly when strict loading succeeds or fails only on an
    ignored key, and a recipe that strict accepts has no warnings."""
    recipe = _ties(**top, parameters=shared)
    recipe["models"][0] = {**per_model, "model": M["ct_ft"], "parameters": {"weight": 1.0, **model_params}}
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            rec = load_recipe(recipe)
        except ModelGlueError as exc:
            lenient = str(exc)
        else:
            lenient = None
    try:
        strict = load_recipe(recipe, strict=True)
    except ModelGlueError as exc:
        assert lenient is not None or "--strict refuses it" in str(exc)
        if lenient is None:
            assert len(rec.warnings) >= 1 and len(_warnings(err.getvalue())) == len(rec.warnings)
    else:
        assert lenient is None and strict.warnings == [] and rec.warnings == []


def test_values_are_read_as_mergekit_reads_them(tmp_path):
    """mergekit's pydantic (lax mode) reads '0.6' and 5e-1 as numbers, 1 and 'yes' as true:
    the same recipe with plain values merges to the same tensors."""
    text = (f"merge_method: ties\nbase_model: {M['ct_base']}\nmodels:\n"
            f"  - model: {M['ct_ft']}\n    parameters: {{weight: '0.6', density: 5e-1}}\n"
            f"  - model: {M['ct_a']}\n    parameters: {{weight: 4E-1, density: [\"0.5\", 1]}}\n"
            "parameters: {normalize: 1, int8_mask: 'yes'}\n")
    plain = _ties(parameters={"normalize": True, "int8_mask": True})
    plain["models"][0]["parameters"] = {"weight": 0.6, "density": 0.5}
    plain["models"][1]["parameters"] = {"weight": 0.4, "density": [0.5, 1.0]}
    rec = load_recipe(text, strict=True)
    assert rec.warnings == [] and rec.parameters == {"normalize": True, "int8_mask": True}
    a, b = merge(text, tmp_path / "a"), merge(plain, tmp_path / "b")
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(ta[k], tb[k]) for k in tb)
    with pytest.raises(ModelGlueError, match="'normalize' must be true or false"):
        load_recipe(_ties(parameters={"normalize": 2}))


def test_a_revision_on_a_local_directory_is_ignored_with_a_warning(tmp_path):
    rec = load_recipe({**_ties(), "base_model": M["ct_base"] + "@main"})
    assert rec.base_model == Path(M["ct_base"]) and len(rec.warnings) == 1
    assert "base_model: revision 'main' of local directory" in rec.warnings[0]
    with pytest.raises(ModelGlueError, match="--strict refuses it"):
        load_recipe({**_ties(), "base_model": M["ct_base"] + "@main"}, strict=True)
    with pytest.raises(ModelGlueError, match="not found"):
        load_recipe({**_ties(), "base_model": M["ct_base"] + "-nope@main"})


def test_a_model_reference_mapping_keeps_its_lora_and_refuses_override_architecture():
    """mergekit's ModelReference as a mapping: {model: {path, revision}, lora: ...}; its
    `override_architecture` is honoured by mergekit and refused here, never dropped."""
    ref = {"model": {"path": M["ct_ft"], "revision": "v1"}, "colour": 1}
    rec = load_recipe({"merge_method": "linear", "models": [{"model": ref, "parameters": {"weight": 1.0}}]})
    assert rec.slices[0].sources[0].model == Path(M["ct_ft"])
    assert [w.split(": ", 2)[2] for w in rec.warnings] == [
        "unknown key 'colour' (did you mean 'lora'?): ignored, as mergekit does",
        f"revision 'v1' of local directory '{M['ct_ft']}': ignored, as mergekit does"]
    with pytest.raises(ModelGlueError, match="override_architecture is not supported"):
        load_recipe({"merge_method": "linear", "models": [{"model": {"model": M["ct_ft"], "override_architecture": "X"},
                                                          "parameters": {"weight": 1.0}}]})
