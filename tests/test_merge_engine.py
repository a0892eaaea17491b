"""End-to-end merges of tiny random models of several architectures."""
from __future__ import annotations

import importlib

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import modelglue
from modelglue.errors import ModelGlueError
from modelglue.io import Checkpoint
from modelglue.engine.plan import plan_merge
from modelglue.merge import InMemoryMerger, merge
from modelglue.recipe import load_recipe

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64),
    "mistral": lambda: transformers.MistralConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64),
    "qwen2": lambda: transformers.Qwen2Config(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                              tie_word_embeddings=True),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=48, n_embd=32, n_layer=3, n_head=4, n_positions=64),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                   num_attention_heads=4, max_position_embeddings=64),
}


def make_family(root: Path, arch: str, n: int = 3, noise: float = 0.02) -> list[Path]:
    """A base and n-1 fine-tunes (base + seeded noise), saved as HF directories."""
    cfg = CONFIGS[arch]()
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(cfg)
    paths = []
    for i in range(n):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
        model.load_state_dict(base.state_dict())
        if i:
            g = torch.Generator().manual_seed(100 + i)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(noise * torch.randn(p.shape, generator=g))
        path = root / f"{arch}-{i}"
        model.save_pretrained(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("archs")
    return {arch: make_family(root, arch) for arch in CONFIGS}


def tensors(path: Path) -> dict[str, torch.Tensor]:
    ck = Checkpoint(path)
    return {n: ck.get(n) for n in ck.names()}


def linear_recipe(paths: list[Path], weights: list[float], **extra) -> dict:
    return {"merge_method": "linear", "models": [{"model": str(p), "parameters": {"weight": w}} for p, w in zip(paths, weights)],
            **extra}


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_linear_merge_every_architecture_loads_and_matches(zoo, arch, tmp_path):
    paths = zoo[arch]
    out = merge(linear_recipe(paths, [1.0, 2.0, 1.0]), tmp_path / "out")
    inputs = [tensors(p) for p in paths]
    merged = tensors(out)
    assert set(merged) == set(inputs[0])
    for name, t in merged.items():
        expected = (inputs[0][name] + 2 * inputs[1][name] + inputs[2][name]) / 4
        torch.testing.assert_close(t, expected, atol=1e-6, rtol=0)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    out_ids = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert out_ids.shape == (1, 7)
    assert (out / "README.md").read_text().count("linear") >= 1
    assert (out / "mergekit_config.yml").exists()


def test_qwen2_tied_embeddings_and_biases(zoo, tmp_path):
    paths = zoo["qwen2"]
    names = Checkpoint(paths[0]).names()
    assert "lm_head.weight" not in names and any(n.endswith("q_proj.bias") for n in names)
    out = merge(linear_recipe(paths[:2], [0.5, 0.5]), tmp_path / "out")
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    ref = transformers.AutoModelForCausalLM.from_pretrained(paths[0])
    other = transformers.AutoModelForCausalLM.from_pretrained(paths[1])
    with torch.no_grad():
        for (n, p), q in zip(ref.named_parameters(), other.parameters()):
            p.copy_((p + q) / 2)
        ids = torch.tensor([[3, 4, 5, 6]])
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_slerp_gradient_and_filters(zoo, tmp_path):
    a, b = zoo["llama"][:2]
    recipe = {"merge_method": "slerp", "base_model": str(a),
              "slices": [{"sources": [{"model": str(a), "layer_range": [0, 4]}, {"model": str(b), "layer_range": [0, 4]}]}],
              "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": 1.0}, {"value": 0.0}]}}
    merged, ta, tb = tensors(merge(recipe, tmp_path / "out")), tensors(a), tensors(b)
    L = "model.layers.{}.self_attn.q_proj.weight"
    torch.testing.assert_close(merged[L.format(0)], ta[L.format(0)])  # gradient start: t = 0
    torch.testing.assert_close(merged[L.format(3)], tb[L.format(3)], atol=1e-6, rtol=0)  # gradient end: t = 1
    mid = merged[L.format(1)]  # t = 1/3: strictly between the two
    assert 0 < (mid - ta[L.format(1)]).norm() < (tb[L.format(1)] - ta[L.format(1)]).norm()
    M = "model.layers.2.mlp.up_proj.weight"
    torch.testing.assert_close(merged[M], tb[M], atol=1e-6, rtol=0)  # filter 'mlp' -> t = 1
    torch.testing.assert_close(merged["model.norm.weight"], ta["model.norm.weight"])  # default -> t = 0


def test_per_model_parameters_override_global(zoo, tmp_path):
    a, b, c = zoo["llama"]
    recipe = {"merge_method": "task_arithmetic", "base_model": str(a),
              "models": [{"model": str(b), "parameters": {"weight": 0.3}}, {"model": str(c)}],
              "parameters": {"weight": 1.0, "lambda": 0.5}}
    merged, ta, tb, tc = tensors(merge(recipe, tmp_path / "out")), tensors(a), tensors(b), tensors(c)
    for n in ("model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight"):
        expected = ta[n] + 0.5 * (0.3 * (tb[n] - ta[n]) + 1.0 * (tc[n] - ta[n]))
        torch.testing.assert_close(merged[n], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_passthrough_depth_upscaling(zoo, arch, tmp_path):
    a, b = zoo[arch][:2]
    recipe = {"merge_method": "passthrough", "dtype": "float32",
              "slices": [{"sources": [{"model": str(a), "layer_range": [0, 3]}]},
                         {"sources": [{"model": str(b), "layer_range": [1, 4]}]}]}
    out = merge(recipe, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    if "layer_types" in config:
        assert len(config["layer_types"]) == 6
    merged, tb = tensors(out), tensors(b)
    torch.testing.assert_close(merged["model.layers.3.mlp.up_proj.weight"], tb["model.layers.1.mlp.up_proj.weight"])
    torch.testing.assert_close(merged["model.layers.5.mlp.up_proj.weight"], tb["model.layers.3.mlp.up_proj.weight"])
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == 6
    model.generate(torch.tensor([[1, 2]]), max_new_tokens=3, do_sample=False)


def test_sharded_output_and_out_dtype(zoo, tmp_path):
    paths = zoo["llama"]
    out = merge(linear_recipe(paths, [1, 1, 1], out_dtype="bfloat16"), tmp_path / "out", shard_size=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / s).exists() for s in shards)
    assert all(t.dtype == torch.bfloat16 for s in shards for t in load_file(out / s).values())
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    transformers.AutoModelForCausalLM.from_pretrained(out)


def test_randomized_methods_are_deterministic_by_seed(zoo, tmp_path):
    a, b, c = zoo["llama"]
    recipe = {"merge_method": "dare_ties", "base_model": str(a),
              "models": [{"model": str(b), "parameters": {"weight": 0.5, "density": 0.5}},
                         {"model": str(c), "parameters": {"weight": 0.5, "density": 0.5}}]}
    m = InMemoryMerger()
    s1, s2, s3 = m.state_dict(recipe, seed=1), m.state_dict(recipe, seed=1), m.state_dict(recipe, seed=2)
    assert all(torch.equal(s1[n], s2[n]) for n in s1)
    assert any(not torch.equal(s1[n], s3[n]) for n in s1)
    on_disk = tensors(merge(recipe, tmp_path / "out", seed=1))
    assert all(torch.equal(s1[n], on_disk[n]) for n in s1)  # one executor, one result


def test_in_memory_merger_reads_inputs_once(zoo, monkeypatch):
    paths = zoo["llama"]
    reads = []
    original = Checkpoint.get
    monkeypatch.setattr(Checkpoint, "get", lambda self, name: reads.append(name) or original(self, name))
    model = transformers.AutoModelForCausalLM.from_pretrained(paths[0])
    merger = InMemoryMerger()
    merger.merge_into(model, linear_recipe(paths, [1, 0, 0]))
    first = len(reads)
    assert first == 3 * len(Checkpoint(paths[0]).names())
    merger.merge_into(model, linear_recipe(paths, [0.2, 0.3, 0.5]))
    assert len(reads) == first  # new coefficients: recompute only
    expected = {n: 0.2 * x + 0.3 * y + 0.5 * z for (n, x), y, z in
                zip(tensors(paths[0]).items(), tensors(paths[1]).values(), tensors(paths[2]).values())}
    state = model.state_dict()
    for n, t in expected.items():
        torch.testing.assert_close(state[n], t, atol=1e-6, rtol=0)


def test_failed_merge_leaves_no_output(zoo, tmp_path, monkeypatch):
    engine = importlib.import_module("modelglue.engine.execute")

    calls = {"n": 0}
    original = engine.compute_tensor

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise ModelGlueError("injected failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "compute_tensor", failing)
    with pytest.raises(ModelGlueError, match="injected"):
        merge(linear_recipe(zoo["llama"], [1, 1, 1]), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_mismatched_shapes_name_the_tensor_and_models(zoo, tmp_path):
    with pytest.raises(ModelGlueError, match="different numbers of layers"):
        merge(linear_recipe([zoo["llama"][0], zoo["mistral"][0]], [1, 1]), tmp_path / "out")
    cfg = CONFIGS["llama"]()
    cfg.vocab_size = 50
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "big-vocab")
    with pytest.raises(ModelGlueError, match=r"model.embed_tokens.weight.*different vocabularies.*llama-0: \[48, 32\].*big-vocab: \[50, 32\]"):
        merge(linear_recipe([zoo["llama"][0], tmp_path / "big-vocab"], [1, 1]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_merge_and_one_line_errors(zoo, tmp_path):
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {zoo['gpt2'][0]}\n    parameters: {{weight: 1}}\n"
                      f"  - model: {zoo['gpt2'][1]}\n    parameters: {{weight: 1}}\n")
    cli = [sys.executable, "-m", "modelglue.cli"]
    ok = subprocess.run(cli + ["merge", str(recipe), str(tmp_path / "out"), "-q"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "model.safetensors").exists()
    recipe.write_text("merge_method: linear\nmodels: []\n")
    bad = subprocess.run(cli + ["merge", str(recipe), str(tmp_path / "out2")], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("error:") and "models" in bad.stderr
    assert not (tmp_path / "out2").exists()


def test_public_api_exports():
    assert modelglue.merge is merge and modelglue.InMemoryMerger is InMemoryMerger


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "passthrough", "ties", "ties-index", "dare_ties", "slerp",
                                    "model_stock", "model_stock-filter",
                                    "dare_linear", "breadcrumbs_ties", "della"])
def test_chunked_streaming_gives_the_same_tensors(zoo, tmp_path, monkeypatch, method):
    """Elementwise methods (TIES, DARE and breadcrumbs after one look at each whole task
    vector) stream big tensors in chunks; the result must not change."""
    method, _, variant = method.partition("-")
    engine = importlib.import_module("modelglue.engine.execute")
    a, b, c = zoo["llama"]
    recipe = {"merge_method": method, "dtype": "float32"}
    if method == "passthrough":
        recipe["models"] = [{"model": str(b)}]
    else:
        recipe.update(base_model=str(a), models=[{"model": str(m), "parameters": {"weight": w, "density": 0.5}}
                                                 for m, w in ((b, 0.7), (c, 0.4))])
        if method == "linear":
            recipe["models"].append({"model": str(a), "parameters": {"weight": 0.2}})
            del recipe["base_model"]
            for m in recipe["models"]:
                m["parameters"].pop("density", None)
        if method == "task_arithmetic":
            for m in recipe["models"]:
                m["parameters"].pop("density")
        if method in ("dare_linear", "breadcrumbs_ties"):
            recipe["parameters"] = {"rescale": True}  # the L1 rescale, summed over the whole tensor
        if method == "della":
            recipe["parameters"] = {"epsilon": 0.1}
        if variant == "index":
            recipe["parameters"] = {"tie_order": "index"}
        if method == "slerp":
            recipe["parameters"] = {"t": 0.3}
            recipe["models"].pop()
        if method == "model_stock":
            recipe["parameters"] = {"filter_wise": variant == "filter"}
    whole = InMemoryMerger().state_dict(recipe)
    monkeypatch.setattr(engine, "CHUNK_ELEMS", 100)  # every 2-D tensor of the tiny model is chunked
    pieces = []
    original = engine.compute_tensor
    monkeypatch.setattr(engine, "compute_tensor", lambda p, t, ts, d="cpu", **kw: pieces.append(t.name) or original(p, t, ts, d, **kw))
    streamed = tensors(merge(recipe, tmp_path / "out"))
    assert (len(pieces) > len(whole)) == (method != "della")  # chunks only for elementwise methods
    assert set(streamed) == set(whole)
    for name in whole:
        assert torch.equal(streamed[name], whole[name]), name


def test_a_failing_prepare_fails_the_merge_and_leaves_no_output(zoo, tmp_path, monkeypatch):
    """`prepare` (TIES: magnitude cuts) runs ahead on its own threads: an error there
    still ends the merge with that error, and nothing is left behind."""
    engine = importlib.import_module("modelglue.engine.execute")
    a, b, c = zoo["llama"]
    recipe = {"merge_method": "ties", "base_model": str(a), "dtype": "float32",
              "models": [{"model": str(m), "parameters": {"weight": 0.5, "density": 0.5}} for m in (b, c)]}
    monkeypatch.setattr(engine, "CHUNK_ELEMS", 100)
    calls, original = [], engine.prepare_state

    def failing(*args, **kwargs):
        calls.append(args[1].name)
        if len(calls) == 3:
            raise ModelGlueError("injected prepare failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "prepare_state", failing)
    with pytest.raises(ModelGlueError, match="injected prepare failure"):
        merge(recipe, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", ["model_stock", "slerp"])
@pytest.mark.parametrize("keep_bytes", [0, 1 << 26])
def test_prepared_tensors_merge_the_same_from_kept_or_fresh_reads(zoo, tmp_path, monkeypatch, method, keep_bytes):
    """model_stock looks at each whole tensor (prepare) before merging it in chunks; up
    to KEEP_INPUTS_BYTES the chunks are cut from prepare's own reads, above it they are
    read again (slerp always reads again). Either way the result is the same."""
    engine = importlib.import_module("modelglue.engine.execute")
    a, b, c = zoo["llama"]
    others = (b, c) if method == "model_stock" else (b,)
    recipe = {"merge_method": method, "base_model": str(a), "dtype": "float32", "parameters": {"t": 0.3},
              "models": [{"model": str(m)} for m in others]}
    if method == "model_stock":
        del recipe["parameters"]
    whole = InMemoryMerger().state_dict(recipe)
    monkeypatch.setattr(engine, "CHUNK_ELEMS", 100)
    monkeypatch.setattr(engine, "KEEP_INPUTS_BYTES", keep_bytes)
    streamed = tensors(merge(recipe, tmp_path / "out"))
    assert set(streamed) == set(whole) and all(torch.equal(streamed[n], whole[n]) for n in whole)


@pytest.mark.parametrize("method,dtype", [("dare_ties", "float32"), ("dare_ties", "bfloat16"), ("linear", "bfloat16"),
                                          ("model_stock", "float32")])
def test_merge_leaves_the_callers_torch_threads_and_matches_in_memory(zoo, tmp_path, method, dtype):
    """merge picks its own torch thread count per method and dtype; the caller's setting
    is restored afterwards, and the tensors are those of the in-memory merge."""
    a, b, c = zoo["llama"]
    recipe = {"merge_method": method, "base_model": str(a), "dtype": dtype,
              "models": [{"model": str(m), "parameters": {"weight": 0.5, "density": 0.5}} for m in (b, c)]}
    if method == "linear":
        del recipe["base_model"]
    if method == "model_stock":
        recipe["models"] = [{"model": str(m)} for m in (b, c)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = tensors(merge(recipe, tmp_path / "out", seed=0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    if method != "dare_ties":  # dare_ties: random masks, the same per seed either way
        expected = InMemoryMerger().state_dict(recipe)
        assert all(torch.equal(out[n], expected[n]) for n in expected)


def test_exponents_without_a_dot_are_numbers_as_in_mergekit(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-9` as a string; mergekit's recipes mean a number."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: karcher\nmodels:\n  - model: {tmp_path / 'a'}\n    parameters: {{weight: 5E-1}}\n"
                      f"  - model: {tmp_path / 'b'}\nparameters:\n  tol: 1e-9\n  max_iter: 12\nname: 1e3x\n")
    rec = load_recipe(recipe)
    assert rec.parameters == {"tol": 1e-9, "max_iter": 12}
    assert rec.slices[0].sources[0].parameters == {"weight": 0.5}
    assert rec.raw["name"] == "1e3x"
