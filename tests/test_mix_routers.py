"""Routers and router data: fitting, held-out splits, pooling, lazy registration."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from modelglue.errors import ModelGlueError
from modelglue.mixture.data import parse_router_examples
from modelglue.mixture.routers import (accuracy, fit_centroid, fit_gate, fit_logistic, fit_random, gate_accuracy,
                                       pool)


def _blobs(n_per: int = 40, dim: int = 16, experts: int = 3, seed: int = 0):
    """Clusters that share a large common offset, as hidden states do."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(experts, dim, generator=g) * 2
    offset = torch.randn(dim, generator=g) * 20
    feats = torch.cat([offset + centers[e] + torch.randn(n_per, dim, generator=g) for e in range(experts)])
    labels = torch.arange(experts).repeat_interleave(n_per)
    return feats, labels


def test_centroid_and_logistic_routers_separate_clusters():
    feats, labels = _blobs()
    test_feats, test_labels = _blobs(seed=0)[0] + 0.1 * torch.randn(120, 16), labels
    for router in (fit_centroid(feats, labels, 3), fit_logistic(feats, labels, 3)):
        assert accuracy(router, test_feats, test_labels) > 0.95
    assert accuracy(fit_random(16, 3, seed=1, center=feats.mean(0)), feats, labels) < 0.8
    assert accuracy(fit_centroid(feats, labels, 3), feats[:0], labels[:0]) is None


def test_gates_follow_centroids_despite_a_shared_offset():
    """A gate has no centring; projecting the shared mean out keeps it on the centroids."""
    feats, labels = _blobs()
    for kind in ("hidden", "trained"):
        gate = fit_gate(kind, feats, labels, 3, 16)
        assert gate.shape == (3, 16)
        assert gate_accuracy(gate, feats, labels) > 0.9
    assert not fit_gate("uniform", None, [], 3, 16).any()


def test_negatives_steer_the_centroid():
    feats, labels = _blobs(experts=2)
    neg = feats[labels == 1][:10]
    r = fit_centroid(feats, labels, 2, neg_feats=neg, neg_labels=[0] * 10)
    assert accuracy(r, feats, labels) > 0.95


def test_pooling_respects_padding():
    h = torch.arange(12, dtype=torch.float).reshape(1, 4, 3).repeat(2, 1, 1)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    assert pool(h, mask, "mean").tolist() == [[6.0, 7.0, 8.0], [1.5, 2.5, 3.5]]
    assert pool(h, mask, "first").tolist() == [[3.0, 4.0, 5.0], [0.0, 1.0, 2.0]]
    assert pool(h, mask, "last").tolist() == [[9.0, 10.0, 11.0], [3.0, 4.0, 5.0]]


def test_router_data_parsing_and_holdout():
    names = ["a", "b"]
    rows = [{"prompt": f"p{i}", "expert": "a" if i % 2 else 1} for i in range(16)]
    ex = parse_router_examples(rows, names)
    assert [e.expert for e in ex[:2]] == [1, 0]
    assert sum(e.split == "test" for e in ex) == 4  # every fourth prompt of each expert
    explicit = parse_router_examples([{"prompt": "x", "expert": 0, "split": "test"}, {"prompt": "y", "expert": 1}],
                                     names)
    assert [e.split for e in explicit] == ["test", "train"]
    unlabelled = parse_router_examples([{"prompt": "x", "completion": "y"}], names)
    assert unlabelled[0].expert is None
    for bad, msg in (({"prompt": "", "expert": 0}, "non-empty"), ({"prompt": "x"}, "give 'expert'"),
                     ({"prompt": "x", "expert": 5}, "out of range"), ({"prompt": "x", "expert": True}, "boolean"),
                     ({"prompt": "x", "expert": 0, "split": "dev"}, "split")):
        with pytest.raises(ModelGlueError, match=msg):
            parse_router_examples([bad], names)


def test_import_modelglue_registers_lazily():
    """`import modelglue` does not import transformers, yet the Auto classes know the
    mixture types as soon as transformers is used."""
    code = ("import sys, modelglue; assert 'transformers' not in sys.modules; "
            "from transformers import AutoConfig, AutoModelForCausalLM; "
            "from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING as M; "
            "c = AutoConfig.for_model('modelglue_model_mixture'); "
            "print(type(c).__name__, M[type(c)].__name__, "
            "M[type(AutoConfig.for_model('modelglue_block_mixture'))].__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ModelMixtureConfig", "ModelMixtureForCausalLM", "BlockMixtureForCausalLM"]


def test_router_features_stop_early_but_match_the_full_forward(tmp_path):
    """prompt_features skips the blocks after the wanted layer; the result must equal
    hidden_states[layer] of a full forward, for every layer."""
    from transformers import AutoModelForCausalLM

    from modelglue.mixture.routers import positions, prompt_features
    from modelglue.mixture.testing import make_tiny_expert

    model = AutoModelForCausalLM.from_pretrained(make_tiny_expert(tmp_path / "m", num_layers=3)).eval()
    ids = torch.tensor([[1, 20, 21, 22, 23], [1, 30, 31, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                     output_hidden_states=True).hidden_states
    for layer in list(range(len(full))) + [-1, -2]:
        want = pool(full[layer].float(), mask)
        assert torch.allclose(prompt_features(model, ids, mask, "hidden", layer), want, atol=1e-6), layer
