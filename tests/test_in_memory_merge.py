"""InMemoryMerger.merge_into: chunked into the live model, unchanged tensors skipped,
and always the same bits as the disk merge of the same recipe."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import transformers

from modelglue.io import Checkpoint
from modelglue.merge import InMemoryMerger, merge

merge_module = importlib.import_module("modelglue.merge")  # (modelglue.merge is also the function)
CHUNK = 97  # small and odd: several chunks per tensor, a ragged last one


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> list[Path]:
    """A tiny Llama base and two fine-tunes (base + seeded noise)."""
    root = tmp_path_factory.mktemp("family")
    cfg = transformers.LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(cfg)
    paths = []
    for i in range(3):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
        model.load_state_dict(base.state_dict())
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * i * torch.randn(p.shape, generator=g))
        model.save_pretrained(root / f"m{i}")
        paths.append(root / f"m{i}")
    return paths


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(merge_module, "IN_MEMORY_CHUNK", CHUNK)


def recipe(method: str, paths: list[Path], weights: list, **extra) -> dict:
    base, *others = paths
    if method in ("linear", "della", "della_linear"):
        models = [{"model": str(p), "parameters": {"weight": w, **extra}} for p, w in zip(paths, weights)]
        if method == "linear":
            return {"merge_method": method, "models": models}
        return {"merge_method": method, "base_model": str(base), "models": models[1:]}
    if method == "slerp":
        return {"merge_method": "slerp", "base_model": str(base), "models": [{"model": str(base)}, {"model": str(others[0])}],
                "parameters": {"t": weights[1]}}
    models = [{"model": str(p), "parameters": {"weight": w, **extra}} for p, w in zip(others, weights[1:])]
    return {"merge_method": method, "base_model": str(base), "models": models}


def on_disk(rec: dict, out: Path) -> dict[str, torch.Tensor]:
    ck = Checkpoint(merge(rec, out, seed=3))
    return {n: ck.get(n) for n in ck.names()}


CASES = [("linear", {}), ("task_arithmetic", {}), ("ties", {"density": 0.5}), ("dare_ties", {"density": 0.6}),
         ("dare_linear", {"density": 0.7}), ("breadcrumbs", {"density": 0.8, "gamma": 0.05}), ("slerp", {}),
         ("della", {"density": 0.6, "epsilon": 0.1})]


@pytest.mark.parametrize("method,extra", CASES, ids=[c[0] for c in CASES])
def test_merge_into_is_bit_identical_to_the_disk_merge(family, small_chunks, tmp_path, method, extra):
    model = transformers.AutoModelForCausalLM.from_pretrained(family[0])
    merger = InMemoryMerger()
    merger.merge_into(model, recipe(method, family, [0.5, 0.9, 0.2], **extra), seed=3)  # a candidate before
    second = recipe(method, family, [0.3, 0.4, 0.7], **extra)
    merger.merge_into(model, second, seed=3)
    expected = on_disk(second, tmp_path / "out")
    state = model.state_dict()
    assert all(torch.equal(state[n], t) for n, t in expected.items()), \
        [n for n, t in expected.items() if not torch.equal(state[n], t)]


def test_merge_into_in_16_bits_matches_the_disk_merge(family, small_chunks, tmp_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(family[0], dtype=torch.bfloat16)
    rec = {**recipe("ties", family, [0.5, 0.6, 0.8], density=0.5), "dtype": "bfloat16"}
    InMemoryMerger().merge_into(model, rec, seed=3)
    expected = on_disk(rec, tmp_path / "out")
    assert all(torch.equal(model.state_dict()[n], t) for n, t in expected.items())


def count_computes(monkeypatch) -> list[str]:
    computed: list[str] = []
    original = merge_module.compute_tensor

    def counting(plan, task, *args, **kwargs):
        computed.append(task.name)
        return original(plan, task, *args, **kwargs)

    monkeypatch.setattr(merge_module, "compute_tensor", counting)
    return computed


def test_only_tensors_whose_merge_changed_are_recomputed(family, monkeypatch, tmp_path):
    computed = count_computes(monkeypatch)
    model = transformers.AutoModelForCausalLM.from_pretrained(family[0])
    names = list(Checkpoint(family[0]).names())
    merger = InMemoryMerger()

    def layered(mlp_weight: float) -> dict:
        rec = recipe("linear", family, [1.0, 1.0, 1.0])
        rec["models"][1]["parameters"]["weight"] = [{"filter": "mlp", "value": mlp_weight}, {"value": 0.5}]
        return rec

    merger.merge_into(model, layered(0.2))
    assert sorted(computed) == sorted(names)
    computed.clear()
    merger.merge_into(model, layered(0.2))  # the same candidate again: nothing to do
    assert computed == []
    merger.merge_into(model, layered(0.9))  # only the MLP weights change
    assert sorted(set(computed)) == sorted(n for n in names if "mlp" in n)
    expected = on_disk(layered(0.9), tmp_path / "a")
    assert all(torch.equal(model.state_dict()[n], t) for n, t in expected.items())

    # a tensor changed behind the merger's back is recomputed, and only it
    computed.clear()
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.add_(1.0)
    merger.merge_into(model, layered(0.9))
    assert computed == ["model.layers.0.self_attn.q_proj.weight"]
    assert all(torch.equal(model.state_dict()[n], t) for n, t in expected.items())

    # another model gets every tensor, whatever was written into the first
    other = transformers.AutoModelForCausalLM.from_pretrained(family[1])
    computed.clear()
    merger.merge_into(other, layered(0.9))
    assert sorted(computed) == sorted(names)
    assert all(torch.equal(other.state_dict()[n], t) for n, t in expected.items())


TOK_MODELS = Path(__file__).resolve().parent / "data" / "mergekit_golden" / "models"  # differing vocabularies


def union_recipe(method: str, weights: list[float]) -> dict:
    models = [{"model": str(TOK_MODELS / m), "parameters": {"weight": w, "density": 0.5}}
              for m, w in zip(("tok_add", "tok_perm"), weights)]
    if method == "linear":
        models = [{"model": str(TOK_MODELS / "tok_base"), "parameters": {"weight": 1.0}}] + \
                 [{"model": m["model"], "parameters": {"weight": m["parameters"]["weight"]}} for m in models]
    return {"merge_method": method, "base_model": str(TOK_MODELS / "tok_base"), "models": models,
            "tokenizer_source": "union", "dtype": "float32"}


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_a_union_vocabulary_is_planned_and_aligned_once_per_merger(small_chunks, monkeypatch, tmp_path, method):
    plan_module, vocab_module = importlib.import_module("modelglue.engine.plan"), importlib.import_module("modelglue.engine.vocab")
    first, second = union_recipe(method, [0.6, 0.4]), union_recipe(method, [0.3, 0.9])
    merge(first, tmp_path / "first", seed=3)  # its directory holds a model of the output vocabulary's shape
    expected = on_disk(second, tmp_path / "second")
    planned, aligned = [], []
    plan_vocab, align = plan_module.plan_vocab, vocab_module._align
    monkeypatch.setattr(plan_module, "plan_vocab", lambda *a, **k: planned.append(1) or plan_vocab(*a, **k))
    monkeypatch.setattr(vocab_module, "_align", lambda *a, **k: aligned.append(1) or align(*a, **k))
    computed = count_computes(monkeypatch)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "first")
    vocab_names = ["model.embed_tokens.weight", "lm_head.weight"]
    merger = InMemoryMerger()

    merger.merge_into(model, first, seed=3)
    assert (len(planned), len(aligned)) == (1, len(vocab_names))
    merger.merge_into(model, second, seed=3)  # new coefficients: every tensor recomputed, nothing re-planned
    assert (len(planned), len(aligned)) == (1, len(vocab_names))
    assert set(vocab_names) <= set(computed)
    assert all(torch.equal(model.state_dict()[n], t) for n, t in expected.items()), \
        [n for n, t in expected.items() if not torch.equal(model.state_dict()[n], t)]
    computed.clear()
    merger.merge_into(model, second, seed=3)  # the same candidate: vocabulary tensors are skipped too
    assert computed == [] and (len(planned), len(aligned)) == (1, len(vocab_names))
