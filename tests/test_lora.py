"""LoRA inputs (`MODEL+ADAPTER` references, io/lora.py) and `modelglue extract-lora`.

Tiny Llama and Qwen2 checkpoints are built here; adapters are written in PEFT's file
format by hand (and, where peft is installed, by peft itself). Every merged tensor is
checked against W + scale * B @ A computed here in float64; PEFT's own merge_and_unload
is checked bit for bit; mergekit 0.1.5's outputs for `+` recipes are in
test_mergekit_golden.py (lora_*.yml).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from modelglue import merge
from modelglue.cli import main
from modelglue.errors import ModelGlueError
from modelglue.extract_lora import ExtractOptions, extract_lora
from modelglue.io import Checkpoint

SIZE = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=40, max_position_embeddings=64)


def _save_model(kind: str, out: Path, seed: int) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(kind, **SIZE, tie_word_embeddings=(kind == "qwen2"))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora_models")
    return {"llama": _save_model("llama", root / "llama", 1), "qwen2": _save_model("qwen2", root / "qwen2", 2),
            "llama_b": _save_model("llama", root / "llama_b", 3)}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return {n: t for f in sorted(Path(path).glob("*.safetensors")) for n, t in load_file(f).items()}


def write_adapter(out: Path, tensors: dict[str, torch.Tensor], **config) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "adapter_model.safetensors")
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
    return out


def lora_pairs(base: dict[str, torch.Tensor], kinds: tuple[str, ...], r: int, seed: int,
               ranks: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """PEFT-named lora_A [r, in] / lora_B [out, r] for every weight of the given kinds."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in sorted(base.items()):
        module = name[: -len(".weight")]
        kind = module.rsplit(".", 1)[-1]
        if name.endswith(".weight") and kind in kinds:
            k = (ranks or {}).get(kind, r)
            out[f"base_model.model.{module}.lora_A.weight"] = 0.3 * torch.randn(k, w.shape[1], generator=g)
            out[f"base_model.model.{module}.lora_B.weight"] = 0.3 * torch.randn(w.shape[0], k, generator=g)
    return out


def expected(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], scale_of, *, transpose=False):
    """W + scale * B @ A in float64, from the adapter's tensors."""
    out = {n: t.double() for n, t in base.items()}
    for key, a in adapter.items():
        if key.endswith("lora_A.weight"):
            module = key[len("base_model.model."): -len(".lora_A.weight")]
            b = adapter[key.replace("lora_A", "lora_B")].double()
            delta = b @ a.double()
            out[f"{module}.weight"] += scale_of(module) * (delta.T if transpose else delta)
    return out


def assert_close(ref: str | Path, want: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    """Every tensor of `ref` within float32 rounding (1e-6 relative) of `want`."""
    ck = Checkpoint(ref)
    assert sorted(ck.names()) == sorted(want)
    for name, w in want.items():
        got = ck.get(name)
        assert got.dtype == torch.float32 and got.shape == w.shape, name
        assert torch.allclose(got.double(), w, atol=atol, rtol=1e-6), f"{name}: {(got.double() - w).abs().max()}"


# ------------------------------------------------------------------- reading MODEL+ADAPTER


def test_plain_lora_with_rank_and_alpha_patterns(models, tmp_path):
    base = weights(models["llama"])
    ad = lora_pairs(base, ("q_proj", "v_proj", "down_proj"), 4, seed=5, ranks={"down_proj": 2})
    adapter = write_adapter(tmp_path / "ad", ad, r=4, lora_alpha=8, rank_pattern={"down_proj": 2},
                            alpha_pattern={"down_proj": 3}, target_modules=["q_proj", "v_proj", "down_proj"])
    want = expected(base, ad, lambda m: 3 / 2 if m.endswith("down_proj") else 8 / 4)
    assert_close(f"{models['llama']}+{adapter}", want)
    changed = [n for n in base if not torch.equal(base[n].double(), want[n])]
    assert len(changed) == 6  # 3 kinds x 2 layers: the others read unchanged


def test_rslora_and_fan_in_fan_out(models, tmp_path):
    base = weights(models["llama"])
    g = torch.Generator().manual_seed(7)
    ad = {}
    for name, w in base.items():  # fan_in_fan_out: the stored update is (B @ A).T
        if name.endswith("o_proj.weight"):
            m = name[: -len(".weight")]
            ad[f"base_model.model.{m}.lora_A.weight"] = torch.randn(3, w.shape[0], generator=g)
            ad[f"base_model.model.{m}.lora_B.weight"] = torch.randn(w.shape[1], 3, generator=g)
    adapter = write_adapter(tmp_path / "ad", ad, r=3, lora_alpha=5, use_rslora=True, fan_in_fan_out=True)
    assert_close(f"{models['llama']}+{adapter}", expected(base, ad, lambda m: 5 / math.sqrt(3), transpose=True))


def test_embedding_lora_modules_to_save_and_lora_bias(models, tmp_path):
    base = weights(models["qwen2"])  # q/k/v biases, tied embeddings (no lm_head tensor)
    ad = lora_pairs(base, ("q_proj", "k_proj"), 2, seed=9)
    g = torch.Generator().manual_seed(11)
    want = expected(base, ad, lambda m: 4 / 2)
    for name in [n for n in base if n.endswith(("q_proj.bias", "k_proj.bias"))]:
        bias = torch.randn(base[name].shape, generator=g)
        ad[f"base_model.model.{name[: -len('.bias')]}.lora_B.bias"] = bias
        want[name] += 2.0 * bias.double()
    emb = base["model.embed_tokens.weight"]  # lora_embedding_A [r, vocab], B [hidden, r], update (B @ A).T
    a, b = torch.randn(2, emb.shape[0], generator=g), torch.randn(emb.shape[1], 2, generator=g)
    ad["base_model.model.model.embed_tokens.lora_embedding_A"] = a
    ad["base_model.model.model.embed_tokens.lora_embedding_B"] = b
    want["model.embed_tokens.weight"] += 2.0 * (b.double() @ a.double()).T
    norm = torch.randn(base["model.norm.weight"].shape, generator=g)
    ad["base_model.model.model.norm.weight"] = norm  # modules_to_save: replaces the model's
    want["model.norm.weight"] = norm.double()
    adapter = write_adapter(tmp_path / "ad", ad, r=2, lora_alpha=4, lora_bias=True, modules_to_save=["norm"])
    assert_close(f"{models['qwen2']}+{adapter}", want)


def test_bias_without_lora_bias_is_ignored_as_peft_does(models, tmp_path, capsys):
    base = weights(models["qwen2"])
    ad = lora_pairs(base, ("q_proj",), 2, seed=3)
    ad["base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias"] = torch.ones(base["model.layers.0.self_attn.q_proj.bias"].shape)
    adapter = write_adapter(tmp_path / "ad", ad, r=2, lora_alpha=2)
    assert_close(f"{models['qwen2']}+{adapter}", expected(base, ad, lambda m: 1.0))
    assert "lora_B.bias of 1 module(s) ignored" in capsys.readouterr().err


def test_chunked_reads_match_whole_reads(models, tmp_path):
    base = weights(models["llama"])
    adapter = write_adapter(tmp_path / "ad", lora_pairs(base, ("up_proj",), 4, seed=1), r=4, lora_alpha=4)
    ck = Checkpoint(f"{models['llama']}+{adapter}")
    name = "model.layers.1.mlp.up_proj.weight"
    whole = ck.get(name).reshape(-1)
    parts = [ck.get_flat(name, s, min(s + 50, whole.numel())) for s in range(0, whole.numel(), 50)]
    assert torch.equal(torch.cat(parts), whole)
    assert torch.equal(ck.map_flat(name, 7, 300), whole[7:300])
    assert ck.info(name) is None and ck.info("model.norm.weight") is not None


def test_matches_peft_merge_and_unload_bit_for_bit(models, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models["llama"], dtype=torch.float32)
    config = peft.LoraConfig(r=4, lora_alpha=6, use_rslora=True, rank_pattern={"v_proj": 2},
                             target_modules=["q_proj", "v_proj", "gate_proj", "embed_tokens"], modules_to_save=["lm_head"])
    wrapped = peft.get_peft_model(model, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2)
            elif "modules_to_save" in name:
                p.add_(0.5)
    wrapped.save_pretrained(tmp_path / "ad")
    ref = {k: v.contiguous() for k, v in wrapped.merge_and_unload().state_dict().items()}
    ck = Checkpoint(f"{models['llama']}+{tmp_path / 'ad'}")
    assert set(ck.names()) == set(ref)
    for name in ck.names():
        assert torch.equal(ck.get(name), ref[name]), name


def test_recipe_merges_a_lora_reference(models, tmp_path):
    base = weights(models["llama"])
    ad = lora_pairs(base, ("k_proj", "up_proj"), 3, seed=2)
    write_adapter(tmp_path / "ad", ad, r=3, lora_alpha=6)
    other = weights(models["llama_b"])
    recipe = tmp_path / "r.yml"  # relative references resolve against the recipe's directory
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {models['llama']}+ad\n    parameters: {{weight: 0.25}}\n"
                      f"  - model: {models['llama_b']}\n    parameters: {{weight: 0.75}}\ndtype: float32\n")
    merge(recipe, tmp_path / "out", device="cpu")
    lora = expected(base, ad, lambda m: 2.0)
    assert_close(tmp_path / "out", {n: 0.25 * lora[n] + 0.75 * other[n].double() for n in base})


@pytest.mark.parametrize("reference, message", [
    ("{model}+missing", "LoRA adapter directory 'missing' not found"),
    ("nowhere+{adapter}", "model directory 'nowhere' not found"),
    ("{model}+{adapter}+{adapter}", "is not MODEL+ADAPTER"),
    ("{model}+{model}", "is not a PEFT adapter directory (no adapter_config.json)"),
])
def test_bad_references_are_one_line_errors(models, tmp_path, reference, message):
    adapter = write_adapter(tmp_path / "ad", {}, r=1, lora_alpha=1)
    ref = reference.format(model=models["llama"], adapter=adapter)
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {ref}\n  - model: {models['llama_b']}\n")
    res = CliRunner().invoke(main, ["merge", str(recipe), str(tmp_path / "out")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and message in res.output, res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, tensors, message", [
    ({"use_dora": True}, {}, "DoRA adapters (use_dora) are not supported"),
    ({"peft_type": "LOHA"}, {}, "LOHA adapters are not supported (only LoRA)"),
    ({}, {"base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": torch.ones(16)},
     "DoRA adapters (lora_magnitude_vector) are not supported"),
    ({"trainable_token_indices": [1, 2]}, {}, "trainable_token_indices are not supported"),
    ({}, {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 99),
          "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(16, 2)},
     "does not fit model"),
    ({}, {"base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight": torch.ones(2, 16),
          "base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight": torch.ones(16, 2)},
     "which model"),
    ({"r": 4}, {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 16),
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(16, 2)},
     "are not of rank r=4"),
    ({}, {"base_model.model.model.norm.weight": torch.ones(16)}, "neither a LoRA weight nor in modules_to_save"),
])
def test_unsupported_or_mismatched_adapters_are_refused(models, tmp_path, config, tensors, message):
    adapter = write_adapter(tmp_path / "ad", tensors, **{"r": 2, "lora_alpha": 2, **config})
    with pytest.raises(ModelGlueError) as err:
        Checkpoint(f"{models['llama']}+{adapter}")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_adapter_files_missing(models, tmp_path):
    (tmp_path / "ad").mkdir()
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2}))
    (tmp_path / "ad" / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(ModelGlueError, match="only adapter_model.bin, a pickle"):
        Checkpoint(f"{models['llama']}+{tmp_path / 'ad'}")


def test_zoo_analysis_sees_the_merged_model(models, tmp_path):
    """A LoRA reference as a zoo member: analysed as the model it reads as."""
    from modelglue.zoo import analyze_zoo

    base = weights(models["llama"])
    ad = lora_pairs(base, ("q_proj", "down_proj"), 2, seed=4)
    adapter = write_adapter(tmp_path / "ad", ad, r=2, lora_alpha=2)
    merged = tmp_path / "merged"
    merged.mkdir()
    save_file({n: t.float().contiguous() for n, t in expected(base, ad, lambda m: 1.0).items()}, merged / "model.safetensors")
    (merged / "config.json").write_text((models["llama"] / "config.json").read_text())
    result = analyze_zoo([models["llama"], f"{models['llama']}+{adapter}", merged, models["llama_b"]], plots=False)
    assert result.groups == [[0, 1, 2, 3]]
    cos = result.similarity[0].weight_cosine
    assert cos[1, 2] == pytest.approx(1.0, abs=1e-6)  # base+adapter and its merged copy
    assert cos[0, 1] < 0.999  # the adapter changed something
    assert [c for c in result.clusters if 1 in c][0] == sorted([c for c in result.clusters if 1 in c][0])


# ------------------------------------------------------------------- extract-lora


def _rank_r_tuned(base_dir: Path, out: Path, r: int, seed: int, qwen_bias: bool = False) -> Path:
    """base + an exact rank-r change on every 2-D weight inside the blocks."""
    base = weights(base_dir)
    g = torch.Generator().manual_seed(seed)
    tuned = {}
    for name, w in base.items():
        if w.ndim == 2 and ".layers." in name:
            w = w + 0.5 * torch.randn(w.shape[0], r, generator=g) @ torch.randn(r, w.shape[1], generator=g)
        elif qwen_bias and name.endswith(".bias"):
            w = w + torch.randn(w.shape, generator=g)
        tuned[name] = w.contiguous()
    out.mkdir()
    save_file(tuned, out / "model.safetensors")
    (out / "config.json").write_text((base_dir / "config.json").read_text())
    return out


def test_extract_exact_rank_change_round_trips(models, tmp_path):
    tuned = _rank_r_tuned(models["llama"], tmp_path / "tuned", 3, seed=8)
    res = CliRunner().invoke(main, ["extract-lora", str(models["llama"]), str(tuned), str(tmp_path / "ad"), "--rank", "3"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["r"] == 3 and cfg["lora_alpha"] == 3 and set(cfg["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {"embed_tokens", "lm_head", "norm", "input_layernorm"} <= set(cfg["modules_to_save"])
    keys = load_file(tmp_path / "ad" / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert keys["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].shape == (16, 3)
    want = weights(tuned)
    assert_close(f"{models['llama']}+{tmp_path / 'ad'}", {n: t.double() for n, t in want.items()}, atol=2e-5)


def test_extract_low_rank_error_is_the_svd_tail(models, tmp_path):
    """Cut below the change's rank, base + adapter is the best rank-r approximation:
    its error is exactly the tail of the singular values (Eckart-Young)."""
    tuned = _rank_r_tuned(models["llama"], tmp_path / "tuned", 6, seed=9)
    summary = extract_lora(models["llama"], tuned, tmp_path / "ad", ExtractOptions(rank=2))
    got, t, b = Checkpoint(f"{models['llama']}+{tmp_path / 'ad'}"), Checkpoint(tuned), Checkpoint(models["llama"])
    for module, err in summary["errors"].items():
        name = f"{module}.weight"
        d = (t.get(name) - b.get(name)).double()
        s = torch.linalg.svdvals(d)
        tail = float(s[2:].square().sum().sqrt() / s.square().sum().sqrt())
        assert err == pytest.approx(tail, rel=1e-4)
        assert float((got.get(name).double() - t.get(name).double()).norm() / d.norm()) == pytest.approx(tail, rel=1e-3)


def test_extract_options(models, tmp_path):
    tuned = _rank_r_tuned(models["llama"], tmp_path / "tuned", 2, seed=10)
    opts = ExtractOptions(rank=4, include=(r"self_attn",), exclude=(r"o_proj",), embed_lora=True,
                          sv_epsilon=1e-3, skip_undecomposable=True)
    extract_lora(models["llama"], tuned, tmp_path / "ad", opts)
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    keys = set(load_file(tmp_path / "ad" / "adapter_model.safetensors"))
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj"}  # include minus exclude, no embeddings matched
    assert cfg["r"] == 2 and cfg["modules_to_save"] is None  # sv_epsilon cut the rank to the change's
    assert not any("norm" in k or "embed" in k or "lm_head" in k or "mlp" in k for k in keys)
    opts = ExtractOptions(rank=2, embed_lora=True, save_modules=("down_proj",))
    extract_lora(models["llama"], tuned, tmp_path / "ad2", opts)
    keys = set(load_file(tmp_path / "ad2" / "adapter_model.safetensors"))
    assert "base_model.model.model.embed_tokens.lora_embedding_A" in keys
    assert "base_model.model.lm_head.lora_A.weight" in keys
    assert "base_model.model.model.layers.0.mlp.down_proj.weight" in keys


def test_extract_qwen_biases_need_lora_bias_everywhere(models, tmp_path, capsys):
    tuned = _rank_r_tuned(models["qwen2"], tmp_path / "tuned", 2, seed=12, qwen_bias=True)
    extract_lora(models["qwen2"], tuned, tmp_path / "ad", ExtractOptions(rank=2))
    assert "bias changes of 6 module(s)" in capsys.readouterr().err  # o_proj and the MLP have no bias
    extract_lora(models["qwen2"], tuned, tmp_path / "qkv", ExtractOptions(rank=2, include=(r"[qkv]_proj",)))
    cfg = json.loads((tmp_path / "qkv" / "adapter_config.json").read_text())
    assert cfg["lora_bias"] is True
    got, want = Checkpoint(f"{models['qwen2']}+{tmp_path / 'qkv'}"), Checkpoint(tuned)
    for name in got.names():
        if "_proj" in name and any(k in name for k in ("q_proj", "k_proj", "v_proj")) or "norm" in name:
            assert torch.allclose(got.get(name), want.get(name), atol=2e-5), name


def test_extract_loads_in_peft(models, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    tuned = _rank_r_tuned(models["llama"], tmp_path / "tuned", 2, seed=13)
    extract_lora(models["llama"], tuned, tmp_path / "ad", ExtractOptions(rank=2))
    model = AutoModelForCausalLM.from_pretrained(models["llama"], dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(model, tmp_path / "ad").merge_and_unload().state_dict()
    want = weights(tuned)
    for name, t in want.items():
        assert torch.allclose(merged[name], t, atol=2e-5), name


@pytest.mark.parametrize("args, message", [
    (["--rank", "0"], "--rank must be a whole number >= 1"),
    (["-i", "("], "invalid regex"),
    (["-i", "nothing_matches"], "no module to decompose"),
])
def test_extract_bad_input(models, tmp_path, args, message):
    res = CliRunner().invoke(main, ["extract-lora", str(models["llama"]), str(models["llama_b"]), str(tmp_path / "o"), *args])
    assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1, res.output
    assert not (tmp_path / "o").exists()


def test_extract_refuses_mismatched_shapes(models, tmp_path):
    tuned = weights(models["llama_b"])
    tuned["model.layers.1.mlp.up_proj.weight"] = torch.zeros(20, 16)
    (tmp_path / "t").mkdir()
    save_file(tuned, tmp_path / "t" / "model.safetensors")
    (tmp_path / "t" / "config.json").write_text((models["llama"] / "config.json").read_text())
    res = CliRunner().invoke(main, ["extract-lora", str(models["llama"]), str(tmp_path / "t"), str(tmp_path / "o")])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "model.layers.1.mlp.up_proj.weight" in res.output and "[24, 16]" in res.output


GOLDEN = Path(__file__).resolve().parent / "data" / "mergekit_golden"
EXTRACTED = GOLDEN / "mergekit_out" / "extract_lora"  # benchmarks/golden_lora.py


@pytest.mark.parametrize("name", sorted(json.loads((EXTRACTED / "manifest.json").read_text())))
def test_extract_matches_mergekit(name, tmp_path):
    """mergekit-extract-lora 0.1.5's adapters, from the same golden models and options."""
    entry = json.loads((EXTRACTED / "manifest.json").read_text())[name]
    res = CliRunner().invoke(main, ["extract-lora", str(GOLDEN / entry["base"]), str(GOLDEN / entry["model"]),
                                    str(tmp_path / "ad"), *entry["options"], "-q"])
    assert res.exit_code == 0, res.output
    ours, ref = load_file(tmp_path / "ad" / "adapter_model.safetensors"), load_file(EXTRACTED / name / "adapter_model.safetensors")
    tied = json.loads((GOLDEN / entry["model"] / "config.json").read_text()).get("tie_word_embeddings")
    if tied:  # mergekit also saves the tied lm_head (a copy of embed_tokens); we store no tensor the model lacks
        assert torch.equal(ref.pop("base_model.model.lm_head.weight"), ref["base_model.model.model.embed_tokens.weight"])
    cfg, ref_cfg = (json.loads((d / "adapter_config.json").read_text()) for d in (tmp_path / "ad", EXTRACTED / name))
    if not cfg["lora_bias"]:  # mergekit writes lora_B.bias without lora_bias (PEFT ignores them); we leave them out
        ref = {k: v for k, v in ref.items() if not k.endswith("lora_B.bias")}
    assert sorted(ours) == sorted(ref)
    for key, t in ref.items():  # the same torch.linalg.svd on the same task vector: the same factors
        assert ours[key].dtype == t.dtype and torch.allclose(ours[key], t, atol=1e-6, rtol=1e-5), key
    for key in ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "fan_in_fan_out", "peft_type"):
        assert cfg[key] == ref_cfg[key], key
    assert sorted(cfg["target_modules"]) == sorted(ref_cfg["target_modules"])
    assert sorted(cfg["modules_to_save"] or []) == sorted(set(ref_cfg["modules_to_save"] or []) - ({"lm_head"} if tied else set()))
    # mergekit's adapter reads as ours does (its tied lm_head dropped, with a warning)
    theirs, mine = (Checkpoint(f"{GOLDEN / entry['base']}+{d}") for d in (EXTRACTED / name, tmp_path / "ad"))
    for tensor in mine.names():
        assert torch.allclose(theirs.get(tensor), mine.get(tensor), atol=1e-6), tensor


def test_search_takes_a_lora_member(tmp_path):
    """`modelglue search --models BASE+ADAPTER ...`: the member is merged as the model it reads as."""
    from modelglue.search.testing import random_family

    base, ft0, _ = random_family(tmp_path / "fam", 2)
    adapter = write_adapter(tmp_path / "ad", lora_pairs(weights(base), ("q_proj", "down_proj"), 2, seed=6),
                            r=2, lora_alpha=4)
    member = f"{base}+{adapter}"
    res = CliRunner().invoke(main, ["search", "--models", member, str(ft0), "--tasks", "add", "--strategy",
                                    "heuristic-average", "--limit", "4", "--out", str(tmp_path / "s"), "-q"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "s" / "results.json").read_text())
    assert f"single:{Path(member).name}" in data["baselines"]
    best = data["best"]["recipe"]
    assert any("+" in m["model"] for m in best.get("models", [])), best
