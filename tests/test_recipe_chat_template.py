"""Issue 17, item 3: `chat_template` as mergekit 0.1.5 writes it (named templates, inline
Jinja, `auto`), checked against mergekit's own outputs on committed fixtures
(tests/data/mergekit_golden/chat_templates, made by benchmarks/golden_chat_templates.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelglue.errors import ModelGlueError
from modelglue.merge import merge
from modelglue.recipe import load_recipe

GOLDEN = Path(__file__).resolve().parent / "data" / "mergekit_golden" / "chat_templates"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text()) if (GOLDEN / "manifest.json").is_file() else {}
CT_RECIPES = sorted(r for r in MANIFEST.get("recipes", {}) if r.startswith("ct_") and r != "ct_unknown_name.yml")
CHAT = [{"role": "system", "content": "hi"}, {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "how are you ?"}, {"role": "user", "content": "the world"}]


def _rendered(out: Path) -> tuple[str | None, str | None]:
    """The tokenizer's chat template and what it renders (None, None without a template)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    if not tok.chat_template:
        return None, None
    try:
        text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # mistral's template refuses a system turn followed by ... : same error both sides
        text = f"{type(exc).__name__}: {exc}"
    return tok.chat_template, text


@pytest.mark.parametrize("name", CT_RECIPES)
def test_chat_template_matches_mergekit(name, tmp_path):
    expected = GOLDEN / MANIFEST["recipes"][name]["output"]
    out = merge(GOLDEN / name, tmp_path / "out")
    ours, theirs = load_file(out / "model.safetensors"), load_file(expected / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for k in theirs:
        torch.testing.assert_close(ours[k], theirs[k], atol=1e-6, rtol=0)
    # the file transformers reads first, byte for byte, where mergekit writes one
    assert (out / "chat_template.jinja").is_file() == (expected / "chat_template.jinja").is_file()
    if (expected / "chat_template.jinja").is_file():
        assert (out / "chat_template.jinja").read_bytes() == (expected / "chat_template.jinja").read_bytes()
        assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())
    assert _rendered(out) == _rendered(expected)
    from transformers import AutoTokenizer

    a, b = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(expected)
    assert a.get_vocab() == b.get_vocab() and a.special_tokens_map == b.special_tokens_map


def test_named_templates_render_their_text(tmp_path):
    """A named template is the shipped file's text: what apply_chat_template produces is
    that template rendered (checked here on chatml by hand)."""
    out = merge(GOLDEN / "ct_chatml.yml", tmp_path / "out")
    _, text = _rendered(out)
    assert text == ("<|im_start|>system\nhi<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n"
                    "<|im_start|>assistant\nhow are you ?<|im_end|>\n<|im_start|>user\nthe world<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_unknown_template_name_is_refused_before_reading(tmp_path):
    """mergekit finds a bad name only after writing the weights, then writes no tokenizer
    at all (its fixture has none); modelglue refuses it up front, naming the templates."""
    assert not (GOLDEN / "mergekit_out" / "ct_unknown_name" / "tokenizer.json").exists()
    with pytest.raises(ModelGlueError, match=r"unknown chat_template 'zephyr'.*chatml.*'auto'") as err:
        merge(GOLDEN / "ct_unknown_name.yml", tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
    with pytest.raises(ModelGlueError, match="did you mean 'chatml'"):
        load_recipe({"merge_method": "linear", "models": [str(GOLDEN / "models" / "ct_base")], "chat_template": "chatlm"})
    with pytest.raises(ModelGlueError, match="chat_template must be"):
        load_recipe({"merge_method": "linear", "models": [str(GOLDEN / "models" / "ct_base")], "chat_template": 3})


def test_invalid_inline_jinja_is_written_with_a_warning(tmp_path, capsys):
    """mergekit writes an inline template without compiling it; so do we, with a warning."""
    bad = "{% for m in messages %}{{ m['content'] }}"  # no endfor
    rec = {"merge_method": "linear", "chat_template": bad,
           "models": [{"model": str(GOLDEN / "models" / n), "parameters": {"weight": 1.0}} for n in ("ct_base", "ct_ft")]}
    out = merge(rec, tmp_path / "out")
    assert (out / "chat_template.jinja").read_text() == bad
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "not valid Jinja" in warnings[0] and "line 1" in warnings[0]
    with pytest.raises(ModelGlueError, match="not valid Jinja.*--strict refuses it"):
        merge(rec, tmp_path / "strict", strict=True)


def test_auto_counts_stripped_templates_and_breaks_ties_by_order():
    """`auto`: ct_a (inline in tokenizer_config.json) and ct_a2 (the same text plus
    whitespace, in chat_template.jinja) count as one template; on a tie the earliest
    model wins (mergekit's pick then depends on its set order)."""
    from modelglue.chat_templates import auto_template, model_template

    m = GOLDEN / "models"
    a, b = model_template(m / "ct_a"), model_template(m / "ct_b")
    assert a and b and a != b and model_template(m / "ct_a2").strip() == a.strip() != model_template(m / "ct_a2")
    assert auto_template([m / "ct_b", m / "ct_a", m / "ct_a2"]) == a.strip()
    assert auto_template([m / "ct_b", m / "ct_a"]) == b.strip()
    assert auto_template([m / "ct_a", m / "ct_b"]) == a.strip()
    assert auto_template([m / "ct_base", m / "ct_ft"]) is None


def test_a_template_the_output_cannot_carry_is_an_ignored_key(tmp_path, capsys):
    """A model without tokenizer files as the donor (no tokenizer keys): the output gets
    no tokenizer, so `chat_template` changes nothing, as in mergekit. Like every key
    mergekit ignores it is one line in Recipe.warnings (printed once), refused by strict=True and by
    `modelglue merge --strict` (exit 2, one line naming the key, nothing written)."""
    import shutil
    import subprocess
    import sys

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(GOLDEN / "models" / "ct_base" / name, bare / name)
    rec = {"merge_method": "linear", "chat_template": "chatml",
           "models": [{"model": str(bare), "parameters": {"weight": 1.0}},
                      {"model": str(GOLDEN / "models" / "ct_ft"), "parameters": {"weight": 1.0}}]}
    warnings = load_recipe(rec).warnings
    assert len(warnings) == 1 and "chat_template: " in warnings[0] and str(bare) in warnings[0]
    capsys.readouterr()
    out = merge(rec, tmp_path / "out")
    assert [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")] == [f"warning: {warnings[0]}"]
    assert (out / "model.safetensors").is_file() and not (out / "chat_template.jinja").exists()
    with pytest.raises(ModelGlueError, match=r"chat_template: .*--strict refuses it") as err:
        load_recipe(rec, strict=True)
    assert "\n" not in str(err.value)
    # the donor is the base when there is one: a base with a tokenizer carries the template
    assert load_recipe({**rec, "base_model": str(GOLDEN / "models" / "ct_ft")}).warnings == []
    (tmp_path / "r.yml").write_text(json.dumps(rec))
    p = subprocess.run([sys.executable, "-c", "from modelglue.cli import main; main()", "merge", tmp_path / "r.yml",
                        tmp_path / "strict", "-q", "--strict"], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "chat_template" in lines[0]
    assert not (tmp_path / "strict").exists()
