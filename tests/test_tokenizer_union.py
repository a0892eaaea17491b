"""tokenizer_source (base | union | a model) and the tokenizer: block, against mergekit 0.1.5.

The golden recipes (manifest.json's `tokenizer_recipes`, built by benchmarks/make_golden.py
over the tiny models of benchmarks/golden_tokenizers.py) merge models whose vocabularies
differ: added tokens, shuffled ids with extra merges, padding rows past the tokenizer,
tokens past the rows, and a `tokens:` block with zero / model_token / forced sources and
pad_to_multiple_of. mergekit orders a union's new regular tokens by Rust hash-map
iteration (a different order each run), so rows are compared token by token through each
output's own tokenizer; where the ids agree the tensors must be bit-identical.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelglue import InMemoryMerger, merge
from modelglue.errors import ModelGlueError

GOLDEN = Path(__file__).resolve().parent / "data" / "mergekit_golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
TOKENIZER_RECIPES = sorted(MANIFEST.get("tokenizer_recipes", {}))
M = GOLDEN / "models"


def _vocab(model_dir: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True).get_vocab()


@contextlib.contextmanager
def _in_golden():
    old = os.getcwd()
    os.chdir(GOLDEN)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(recipe: str) -> Path:
        if recipe not in cache:
            out = tmp_path_factory.mktemp("tok") / Path(recipe).stem
            with _in_golden():
                merge(GOLDEN / recipe, out, seed=0)
            cache[recipe] = out
        return cache[recipe]

    return get


def test_golden_recipes_cover_the_features():
    recipes = {r: (GOLDEN / r).read_text() for r in TOKENIZER_RECIPES}
    text = "\n".join(recipes.values())
    for feature in ("tokenizer_source: union", "tokenizer_source: base", "tokenizer_source: models/",
                    "pad_to_multiple_of", "kind: zero", "kind: model_token", "force: true",
                    "merge_method: ties", "merge_method: slerp", "merge_method: linear"):
        assert feature in text, feature


@pytest.mark.parametrize("recipe", TOKENIZER_RECIPES, ids=[Path(r).stem for r in TOKENIZER_RECIPES])
def test_rows_match_mergekit_token_by_token(recipe, merged):
    ref_dir = GOLDEN / MANIFEST["tokenizer_recipes"][recipe]["output"]
    out = merged(recipe)
    ours, ref = load_file(out / "model.safetensors"), load_file(ref_dir / "model.safetensors")
    v_ours, v_ref = _vocab(out), _vocab(ref_dir)
    assert set(v_ours) == set(v_ref)
    assert set(ours) == set(ref)
    n = len(v_ref)
    same_ids = v_ours == v_ref
    for name, b in ref.items():
        a = ours[name]
        assert a.shape == b.shape, name
        if same_ids:  # mergekit's order: the same arithmetic, bit for bit
            assert torch.equal(a, b), f"{name}: max diff {(a - b).abs().max().item():.3g}"
        elif a.shape[0] == b.shape[0] and name.endswith(("embed_tokens.weight", "lm_head.weight")):
            tokens = list(v_ref)
            rows_a, rows_b = a[[v_ours[t] for t in tokens]], b[[v_ref[t] for t in tokens]]
            assert torch.equal(rows_a, rows_b), name
            # padding rows average the vocabulary rows, summed in id order: equal up to rounding
            torch.testing.assert_close(a[n:], b[n:], rtol=0, atol=1e-6)
        else:
            assert torch.equal(a, b), name
    cfg_ours, cfg_ref = (json.loads((d / "config.json").read_text()) for d in (out, ref_dir))
    assert cfg_ours["vocab_size"] == cfg_ref["vocab_size"] == ours["model.embed_tokens.weight"].shape[0]


@pytest.mark.parametrize("recipe", TOKENIZER_RECIPES, ids=[Path(r).stem for r in TOKENIZER_RECIPES])
def test_output_tokenizer_encodes_like_mergekits(recipe, merged):
    from transformers import AutoTokenizer

    out = merged(recipe)
    ref_dir = GOLDEN / MANIFEST["tokenizer_recipes"][recipe]["output"]
    ours = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    ref = AutoTokenizer.from_pretrained(str(ref_dir), local_files_only=True)
    for text in ("abcd ab gh<|im_start|>ij<tool> cd<|im_end|>", "<new>efab ba", "<s>hij</s>"):
        assert ours.convert_ids_to_tokens(ours(text).input_ids) == ref.convert_ids_to_tokens(ref(text).input_ids)


def test_union_adds_rows_a_model_lacks_from_the_models_that_have_them(merged):
    """tok_union_linear by hand: <|im_start|> is in tok_add and tok_add2 only, so tok_base's
    and tok_perm's aligned rows are the mean of theirs; 'gh' only in tok_perm: its row."""
    out = merged("tok_union_linear.yml")
    v = _vocab(out)
    emb = {m: load_file(M / m / "model.safetensors")["model.embed_tokens.weight"] for m in
           ("tok_base", "tok_add", "tok_add2", "tok_perm")}
    own = {m: _vocab(M / m) for m in emb}
    weights = {"tok_base": 1.0, "tok_add": 0.5, "tok_add2": 0.3, "tok_perm": 0.7}
    got = load_file(out / "model.safetensors")["model.embed_tokens.weight"]
    for token in ("<|im_start|>", "gh", "a", "abcd"):
        have = [m for m in emb if token in own[m]]
        default = sum(emb[m][own[m][token]] for m in have) / len(have) if "tok_base" not in have else \
            emb["tok_base"][own["tok_base"][token]]
        rows = {m: emb[m][own[m][token]] if token in own[m] else default for m in emb}
        expect = sum(weights[m] * rows[m] for m in emb) / sum(weights.values())
        torch.testing.assert_close(got[v[token]], expect, rtol=0, atol=1e-6)


def test_in_memory_union_merge_equals_the_written_one(merged):
    out = merged("tok_union_ties.yml")
    with _in_golden():
        state = InMemoryMerger().state_dict(GOLDEN / "tok_union_ties.yml", seed=0)
    written = load_file(out / "model.safetensors")
    assert set(state) == set(written)
    for name, t in written.items():
        assert torch.equal(state[name], t), name


def _linear(*models: str, **extra) -> dict:
    return {"merge_method": "linear", "base_model": str(M / models[0]),
            "models": [{"model": str(M / m), "parameters": {"weight": 1.0}} for m in models], "dtype": "float32", **extra}


@pytest.mark.parametrize("extra, words", [
    ({"tokenizer_source": "nope/nowhere"}, ["tokenizer_source", "nope/nowhere", "not found"]),
    ({"tokenizer": {"tokens": {"<x>": {"source": str(M / "tok_add2")}}}}, ["tokens['<x>']", "not one of the recipe's models"]),
    ({"tokenizer": {"tokens": {"<x>": {"source": {"kind": "model_token", "model": str(M / "tok_add")}}}}},
     ["exactly one of 'token' or 'token_id'"]),
    ({"tokenizer": {"tokens": {"<x>": {"source": {"kind": "random"}}}}}, ["kind must be 'zero' or 'model_token'"]),
    ({"tokenizer": {"pad_to_multiple_of": 0}}, ["pad_to_multiple_of", "positive integer"]),
    ({"tokenizer": {"source": "union", "extra": 1}}, ["tokenizer", "unknown key 'extra'"]),
    ({"tokenizer": {"source": "union"}, "tokenizer_source": "union"}, ["either 'tokenizer_source' or a 'tokenizer' block"]),
    ({"tokenizer": {"tokens": {"<x>": {"source": {"kind": "model_token", "model": str(M / "tok_add"), "token": "zz"}}}}},
     ["tokens['<x>']", "'zz' is not in"]),
    ({"tokenizer": {"tokens": {"<x>": {"source": {"kind": "model_token", "model": str(M / "tok_add"), "token_id": 99}}}}},
     ["tokens['<x>']", "token id 99 is out of range"]),
    ({"tokenizer": {"tokens": {"<x>": {"source": str(M / "tok_add")}}}}, ["tokens['<x>']", "does not have this token"]),
    ({"tokenizer": {"tokens": {"<x>": None}}}, ["tokens['<x>']", "needs a 'source'"]),
])
def test_bad_tokenizer_configs_fail_in_one_line_before_writing(tmp_path, extra, words):
    out = tmp_path / "out"
    with pytest.raises(ModelGlueError) as exc:
        merge(_linear("tok_base", "tok_add", **extra), out)
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_different_vocabularies_without_a_tokenizer_key_say_how_to_align(tmp_path):
    with pytest.raises(ModelGlueError, match=r"different vocabularies.*tokenizer_source: union"):
        merge(_linear("tok_base", "tok_add"), tmp_path / "out")


def test_cli_runs_a_union_recipe_and_refuses_a_bad_one(tmp_path):
    from click.testing import CliRunner

    from modelglue.cli import main

    good = tmp_path / "good.yml"
    good.write_text(json.dumps(_linear("tok_base", "tok_perm", tokenizer_source="union")))
    res = CliRunner().invoke(main, ["merge", str(good), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == len(_vocab(tmp_path / "out")) == 21
    bad = tmp_path / "bad.yml"
    bad.write_text(json.dumps(_linear("tok_base", "tok_perm", tokenizer={"tokens": {"gh": {"source": str(M / "tok_pad")}}})))
    res = CliRunner().invoke(main, ["merge", str(bad), str(tmp_path / "out2")])
    assert res.exit_code == 2
    assert "not one of the recipe's models" in res.output and not (tmp_path / "out2").exists()


def test_merge_into_a_live_model_needs_the_output_vocabulary(merged):
    """InMemoryMerger.merge_into writes a union merge into a model with the output's rows,
    and refuses in one line a model that still has an input's vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out = merged("tok_union_slerp.yml")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(out)))
    with _in_golden():
        InMemoryMerger().merge_into(model, GOLDEN / "tok_union_slerp.yml")
    written = load_file(out / "model.safetensors")
    state = model.state_dict()
    for name, t in written.items():
        assert torch.equal(state[name], t), name
    small = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(M / "tok_base")))
    with _in_golden(), pytest.raises(ModelGlueError, match=r"embed_tokens.weight' is \[21, 16\], the target's is \[19, 16\]"):
        InMemoryMerger().merge_into(small, GOLDEN / "tok_union_slerp.yml")
