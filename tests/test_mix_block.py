"""Block-level mixtures: decoder blocks as experts, routed once per sequence."""
from __future__ import annotations

import pytest
import torch

from modelglue.errors import ModelGlueError
from modelglue.mixture import mix
from modelglue.mixture.testing import make_tiny_expert

ROUTE = ([{"prompt": f"{i}+{3 * i + 2}=", "expert": 0} for i in range(8)]
         + [{"prompt": "abcdefghijklmnop"[i:i + 5], "expert": 1} for i in range(8)])


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("block_experts")
    a = make_tiny_expert(root / "a", seed=0, num_layers=3)
    b = make_tiny_expert(root / "b", like=a, noise=0.05, seed=1)
    return a, b


def _load(path):
    import modelglue  # noqa: F401  (registers the mixture types)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_identical_experts_reproduce_the_expert(experts, tmp_path):
    from transformers import AutoModelForCausalLM

    a, _ = experts
    mix("block", [a, a], tmp_path / "m", router="random", top_k=2, num_dense_layers=1)
    mixture, tok = _load(tmp_path / "m")
    assert type(mixture).__name__ == "BlockMixtureForCausalLM"
    ref = AutoModelForCausalLM.from_pretrained(a).eval()
    enc = tok(["12+7=", "hello wor"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert (mixture(**enc).logits - ref(**enc).logits).abs().max().item() < 1e-5


@pytest.mark.parametrize("router", ["hidden", "trained"])
def test_cached_generation_matches_full_recompute(experts, tmp_path, router):
    """The routing chosen on the prompt is kept while decoding: generate (KV cache, side
    caches per expert) gives what greedy decoding without a cache gives."""
    rep = mix("block", list(experts), tmp_path / "m", router=router, router_data=ROUTE, top_k=1, num_dense_layers=1)
    assert rep.routing_accuracy_train >= 0.9 and len(rep.per_layer_accuracy) == 2
    mixture, tok = _load(tmp_path / "m")
    prompts = ["12+7=", "cdefghijk"]  # different lengths: left padding in the batch
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = mixture.generate(**enc, max_new_tokens=5, do_sample=False)
    for i, p in enumerate(prompts):
        ids = tok([p], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            for _ in range(5):
                nxt = mixture(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt], 1)
        width = enc["input_ids"].shape[1]
        assert out[i, width:].tolist() == ids[0, -5:].tolist()


def test_refuses_mixed_architectures(experts, tmp_path):
    q = make_tiny_expert(tmp_path / "q", arch="qwen3")
    with pytest.raises(ModelGlueError, match="one architecture"):
        mix("block", [experts[0], q], tmp_path / "o", router="uniform")
    with pytest.raises(ModelGlueError, match="no layer to mix"):
        mix("block", list(experts), tmp_path / "o", router="uniform", num_dense_layers=3)
