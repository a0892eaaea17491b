"""Model-level mixtures: a router picks one whole expert per prompt."""
from __future__ import annotations

import json

import pytest
import torch

from modelglue.errors import ModelGlueError
from modelglue.mixture import mix
from modelglue.mixture.testing import make_tiny_expert

DIGITS = [f"{i}+{3 * i + 2}=" for i in range(12)]
LETTERS = ["abcdefghijklmnop"[i:i + 4 + i % 3] for i in range(12)]
ROUTE = [{"prompt": p, "expert": "llama"} for p in DIGITS] + [{"prompt": p, "expert": "qwen"} for p in LETTERS]


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_experts")
    # Different architectures and widths: only a model-level mixture can join these.
    return [make_tiny_expert(root / "llama", seed=0),
            make_tiny_expert(root / "qwen", arch="qwen3", seed=1, hidden_size=48, num_layers=3)]


@pytest.fixture(scope="module")
def mixture_dir(experts, tmp_path_factory):
    out = tmp_path_factory.mktemp("mm") / "mixture"
    rep = mix("model", experts, out, router="trained", router_data=ROUTE)
    assert rep.routing_accuracy == 1.0 and rep.n_test == 6
    return out


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_round_trip_and_routed_logits_match_each_expert(experts, mixture_dir):
    import modelglue  # noqa: F401  (registers the mixture types)
    from transformers import AutoModelForCausalLM

    mixture, tok = _load(mixture_dir)
    assert type(mixture).__name__ == "ModelMixtureForCausalLM"
    refs = [AutoModelForCausalLM.from_pretrained(p).eval() for p in experts]
    prompts = ["5+17=", "bcdefg", "11+35=", "ijklm"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    route = mixture.route(enc["input_ids"], enc["attention_mask"])
    assert route.tolist() == [0, 1, 0, 1]
    with torch.no_grad():
        logits = mixture(**enc).logits
        for i, e in enumerate(route.tolist()):
            ref = refs[e](input_ids=enc["input_ids"][i:i + 1], attention_mask=enc["attention_mask"][i:i + 1]).logits
            assert (logits[i, :, : ref.shape[-1]] - ref[0]).abs().max().item() < 1e-5


def test_batched_generation_groups_rows_by_expert(experts, mixture_dir):
    from transformers import AutoModelForCausalLM

    mixture, tok = _load(mixture_dir)
    refs = [AutoModelForCausalLM.from_pretrained(p).eval() for p in experts]
    prompts = ["ab", "5+17=", "cdefgh", "123+4="]
    enc = tok(prompts, return_tensors="pt", padding=True)  # left padding (the tokenizer's side)
    out = mixture.generate(**enc, max_new_tokens=6, do_sample=False)
    route = mixture.route(enc["input_ids"], enc["attention_mask"]).tolist()
    assert sorted(set(route)) == [0, 1]
    for i, e in enumerate(route):
        one = tok([prompts[i]], return_tensors="pt")
        ref = refs[e].generate(**one, max_new_tokens=6, do_sample=False)[0, one["input_ids"].shape[1]:]
        got = out[i, enc["input_ids"].shape[1]:][: len(ref)]
        assert torch.equal(got, ref), (i, e)


def test_evaluator_decoding_uses_the_routed_cache(experts, mixture_dir):
    from modelglue.evaluate import greedy_generate
    from transformers import AutoModelForCausalLM

    mixture, tok = _load(mixture_dir)
    refs = [AutoModelForCausalLM.from_pretrained(p).eval() for p in experts]
    prompts = ["5+17=", "bcdefg"]
    got = greedy_generate(mixture, tok, prompts, 5)
    assert got == [greedy_generate(refs[0], tok, prompts[:1], 5)[0], greedy_generate(refs[1], tok, prompts[1:], 5)[0]]


@pytest.mark.parametrize("router", ["hidden", "embed", "random"])
def test_training_free_routers(experts, tmp_path, router):
    rep = mix("model", experts, tmp_path / "m", router=router, router_data=ROUTE)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "modelglue_model_mixture" and cfg["router"]["kind"] == router
    assert rep.routing_accuracy is not None
    if router == "hidden":
        assert rep.routing_accuracy_train >= 0.9


def test_labels_from_best_scoring_expert(experts, tmp_path):
    # No expert given: each prompt goes to the expert that scores its completion best.
    rows = [{"prompt": p, "completion": "7"} for p in DIGITS[:4]]
    rows += [{"prompt": p, "expert": 0} for p in DIGITS[4:8]] + [{"prompt": p, "expert": 1} for p in LETTERS[:4]]
    rep = mix("model", experts, tmp_path / "m", router="trained", router_data=rows)
    assert sum(rep.details["labelled_by_best_score"]) == 4


def test_router_data_file_and_errors(experts, tmp_path):
    data = tmp_path / "route.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROUTE) + "\n")
    mix("model", experts, tmp_path / "ok", router="embed", router_data=data)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "expert": "nobody"}\n')
    with pytest.raises(ModelGlueError, match="unknown expert 'nobody'"):
        mix("model", experts, tmp_path / "o1", router="hidden", router_data=bad)
    bad.write_text('{"prompt": "x", "expert": 0}\nnot json\n')
    with pytest.raises(ModelGlueError, match=r"bad.jsonl:2: invalid JSON"):
        mix("model", experts, tmp_path / "o2", router="hidden", router_data=bad)
    with pytest.raises(ModelGlueError, match="no prompt for expert 1"):
        mix("model", experts, tmp_path / "o3", router="hidden", router_data=[{"prompt": "1+1=", "expert": 0}])
    with pytest.raises(ModelGlueError, match="uniform"):
        mix("model", experts, tmp_path / "o4", router="uniform")
    assert not (tmp_path / "o3").exists() and not any(p.name.startswith(".o") for p in tmp_path.iterdir())


def test_cli_mix(experts, tmp_path):
    from click.testing import CliRunner

    from modelglue.cli import main

    data = tmp_path / "route.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROUTE) + "\n")
    runner = CliRunner()
    res = runner.invoke(main, ["mix", "--level", "model", "--experts", str(experts[0]), "--experts", str(experts[1]),
                               "--router", "hidden", "--router-data", str(data), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "routing accuracy" in res.output
    assert (tmp_path / "m" / "mixture_report.json").is_file()
    res = runner.invoke(main, ["mix", "--level", "model", "--experts", str(experts[0]), "--router", "hidden",
                               "--out", str(tmp_path / "m2")])
    assert res.exit_code == 2 and "needs router data" in res.output and "Traceback" not in res.output


def test_expert_with_tied_embeddings_round_trips(experts, tmp_path):
    """transformers only gathers tied weights from direct children; the mixture lifts
    its experts' ties, so a tied expert loads without a missing (random) lm_head."""
    from transformers import AutoModelForCausalLM

    tied = make_tiny_expert(tmp_path / "tied", seed=5, tie_word_embeddings=True)
    mix("model", [tied, experts[1]], tmp_path / "m", router="trained", router_data=[
        {**r, "expert": 0 if r["expert"] == "llama" else 1} for r in ROUTE])
    mixture, info = AutoModelForCausalLM.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ref = AutoModelForCausalLM.from_pretrained(tied).eval()
    ids = torch.tensor([[1, 20, 21, 22]])
    with torch.no_grad():
        got = mixture(input_ids=ids, expert_ids=torch.tensor([0])).logits
        assert (got[..., : ref.config.vocab_size] - ref(input_ids=ids).logits).abs().max().item() < 1e-5


def test_experts_with_their_own_tokenizers_mix_through_text(experts, tmp_path):
    """Another tokenizer (same text, other ids): ids cannot be shared, text can."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    other = make_tiny_expert(tmp_path / "other", seed=7, vocab_seed=1)
    rows = [{"prompt": p, "expert": 0} for p in DIGITS] + [{"prompt": p, "expert": 1} for p in LETTERS]
    rep = mix("model", [experts[0], other], tmp_path / "m", router="trained", router_data=rows, router_encoder=0)
    assert rep.details["shared_tokenizer"] is False
    mixture = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    prompts = ["5+17=", "bcdefg"]
    got = mixture.generate_text(prompts, max_new_tokens=4, do_sample=False)
    for p, e, text in zip(prompts, (experts[0], other), got):
        tok, ref = AutoTokenizer.from_pretrained(e), AutoModelForCausalLM.from_pretrained(e).eval()
        one = tok([p], return_tensors="pt")
        want = ref.generate(**one, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        assert text == tok.decode(want[0, one["input_ids"].shape[1]:], skip_special_tokens=True)
    with pytest.raises(ModelGlueError, match="generate_text"):
        mixture(input_ids=torch.tensor([[1, 5, 6]]))
