"""FFN-level mixtures: exported as Mixtral, loaded by plain transformers."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from modelglue.errors import ModelGlueError
from modelglue.mixture import mix
from modelglue.mixture.testing import make_tiny_expert

ROUTE = ([{"prompt": f"{i}+{2 * i + 1}=", "expert": 0} for i in range(8)]
         + [{"prompt": "qwertyuiop"[i:i + 5], "expert": 1} for i in range(8)])


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ffn_experts")
    a = make_tiny_expert(root / "a", seed=0)
    b = make_tiny_expert(root / "b", like=a, noise=0.05, seed=1)
    tied = make_tiny_expert(root / "tied", seed=2, tie_word_embeddings=True)
    return {"a": a, "b": b, "tied": tied, "root": root}


def _plain_load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert type(model).__name__ == "MixtralForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return model.eval(), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("top_k", [1, 2])
def test_identical_experts_reproduce_the_expert(experts, tmp_path, top_k):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "moe"
    mix("ffn", [experts["a"], experts["a"]], out, router="uniform", top_k=top_k)
    moe, tok = _plain_load(out)
    ref = AutoModelForCausalLM.from_pretrained(experts["a"]).eval()
    enc = tok(["12+7=", "hello wor", "x"], return_tensors="pt", padding=True)
    with torch.no_grad():
        diff = (moe(**enc).logits - ref(**enc).logits).abs().max().item()
    assert diff < 1e-5
    gen = moe.generate(**enc, max_new_tokens=5, do_sample=False)
    assert torch.equal(gen, ref.generate(**enc, max_new_tokens=5, do_sample=False))
    assert json.loads((out / "config.json").read_text())["num_experts_per_tok"] == top_k


def test_mixtral_tensor_layout_and_sources(experts, tmp_path):
    """On-disk names are Mixtral's canonical ones (what save_pretrained writes, and what
    vLLM / llama.cpp / transformers 4 read); expert e of a mixed layer is expert e's MLP;
    dense layers and attention come from the base."""
    out = tmp_path / "moe"
    rep = mix("ffn", [experts["a"], experts["b"]], out, router="hidden", router_data=ROUTE,
              base=experts["a"], num_dense_layers=1)
    from modelglue.io import Checkpoint

    a, b, m = Checkpoint(experts["a"]), Checkpoint(experts["b"]), Checkpoint(out)
    assert "model.layers.1.block_sparse_moe.gate.weight" in m
    assert m.shape("model.layers.1.block_sparse_moe.gate.weight") == (2, 32)
    for e, src in enumerate([a, b]):
        for w, name in (("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")):
            got = m.get(f"model.layers.1.block_sparse_moe.experts.{e}.{w}.weight")
            assert torch.equal(got, src.get(f"model.layers.1.mlp.{name}.weight"))
            # layer 0 is dense: every expert is the base's MLP and the gate is zero
            assert torch.equal(m.get(f"model.layers.0.block_sparse_moe.experts.{e}.{w}.weight"),
                               a.get(f"model.layers.0.mlp.{name}.weight"))
    assert not m.get("model.layers.0.block_sparse_moe.gate.weight").any()
    assert torch.equal(m.get("model.layers.1.self_attn.q_proj.weight"), a.get("model.layers.1.self_attn.q_proj.weight"))
    assert rep.routing_accuracy is not None and rep.n_test > 0
    moe, tok = _plain_load(out)
    enc = tok(["3+4=", "qwert"], return_tensors="pt", padding=True)
    assert moe.generate(**enc, max_new_tokens=4, do_sample=False).shape == (2, enc["input_ids"].shape[1] + 4)
    report = json.loads((out / "mixture_report.json").read_text())
    assert report["level"] == "ffn" and report["router"] == "hidden"


@pytest.mark.parametrize("router", ["hidden", "embed", "random", "trained"])
def test_every_router_exports(experts, tmp_path, router):
    out = tmp_path / router
    rep = mix("ffn", [experts["a"], experts["b"]], out, router=router, router_data=ROUTE)
    _plain_load(out)
    assert rep.routing_accuracy is not None and 0.0 <= rep.routing_accuracy <= 1.0
    if router in ("hidden", "trained"):  # untrained experts: only the fit on its own prompts is sure
        assert rep.routing_accuracy_train >= 0.9


def test_tied_embeddings_survive(experts, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "moe"
    mix("ffn", [experts["tied"], experts["tied"]], out, router="uniform")
    moe, tok = _plain_load(out)
    ref = AutoModelForCausalLM.from_pretrained(experts["tied"]).eval()
    enc = tok(["12+7="], return_tensors="pt")
    with torch.no_grad():
        assert (moe(**enc).logits - ref(**enc).logits).abs().max().item() < 1e-5


def test_refusals(experts, tmp_path):
    q = make_tiny_expert(tmp_path / "q", arch="qwen3")  # Qwen2/Qwen3 experts mix (test_mix_mergekit_moe.py)
    with pytest.raises(ModelGlueError, match="'qwen3' differs from 'llama'"):
        mix("ffn", [experts["a"], q], tmp_path / "o1", router="uniform")
    with pytest.raises(ModelGlueError, match="needs router data"):
        mix("ffn", [experts["a"], experts["b"]], tmp_path / "o2", router="hidden")
    with pytest.raises(ModelGlueError, match="top-k"):
        mix("ffn", [experts["a"], experts["b"]], tmp_path / "o3", router="uniform", top_k=3)
    with pytest.raises(ModelGlueError, match="at least two"):
        mix("ffn", [experts["a"]], tmp_path / "o4", router="uniform")
    wide = make_tiny_expert(tmp_path / "wide", hidden_size=48)
    with pytest.raises(ModelGlueError, match="tensor"):
        mix("ffn", [experts["a"], wide], tmp_path / "o5", router="uniform")
    assert not any(p.name.startswith(("o", ".o")) for p in tmp_path.iterdir())


def test_safetensors_metadata_is_pt(experts, tmp_path):
    out = tmp_path / "moe"
    mix("ffn", [experts["a"], experts["b"]], out, router="random")
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata().get("format") == "pt"
