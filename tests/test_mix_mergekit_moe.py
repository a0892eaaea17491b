"""mergekit-moe configs run unchanged (`modelglue mix CONFIG.yml OUT`), and the FFN level's
Mixtral / Qwen2-MoE / Qwen3-MoE outputs load and generate in plain transformers.

Golden: mergekit-moe 0.1.5's own outputs on committed tiny models
(tests/data/mergekit_golden/moe, made by benchmarks/make_golden_moe.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from modelglue.cli import main
from modelglue.errors import ModelGlueError
from modelglue.mixture import mix
from modelglue.mixture.moe_config import mix_moe_config
from modelglue.mixture.testing import make_tiny_expert

GOLDEN = Path(__file__).parent / "data" / "mergekit_golden" / "moe"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
ADD, REV, CNT = ["12+7=", "3+45="], ["rev abc=", "rev xyz="], ["count aaa=", "count b="]


def _per_expert(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One naming for both layouts: Mixtral's w1/w2/w3 and block_sparse_moe (ours) and the
    fused experts.gate_up_proj [E, 2I, H] / experts.down_proj [E, H, I] (mergekit 0.1.5's
    Mixtral and Qwen3-MoE; gate rows first, as transformers fuses them) become
    mlp.experts.<e>.{gate,up,down}_proj.weight."""
    out = {}
    for k, v in sd.items():
        k = k.replace(".block_sparse_moe.", ".mlp.")
        if ".experts." in k:
            k = k.replace(".w1.", ".gate_proj.").replace(".w2.", ".down_proj.").replace(".w3.", ".up_proj.")
        if k.endswith("experts.gate_up_proj"):
            for e in range(v.shape[0]):
                g, u = v[e].chunk(2, dim=0)
                out[f"{k[:-12]}{e}.gate_proj.weight"], out[f"{k[:-12]}{e}.up_proj.weight"] = g, u
        elif k.endswith("experts.down_proj"):
            for e in range(v.shape[0]):
                out[f"{k[:-9]}{e}.down_proj.weight"] = v[e]
        else:
            out[k] = v
    return out


def _config(path: Path) -> dict:
    cfg = json.loads((path / "config.json").read_text())
    return {k: v for k, v in cfg.items() if k not in ("transformers_version", "_name_or_path")}


@pytest.mark.parametrize("name", sorted(MANIFEST["configs"]))
def test_matches_mergekit_moe(name, tmp_path):
    """Every tensor bit-identical to mergekit-moe's (random gates and noise too: the same
    seeded draws in the same order), and the same config.json."""
    out = tmp_path / "out"
    rep = mix_moe_config(GOLDEN / name, out, seed=0)
    ref_dir = GOLDEN / MANIFEST["configs"][name]["output"]
    ours = _per_expert(load_file(out / "model.safetensors"))
    ref = _per_expert({k: v for f in sorted(ref_dir.glob("*.safetensors")) for k, v in load_file(f).items()})
    assert sorted(ours) == sorted(ref)
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and torch.equal(ours[k], ref[k]), k
    assert _config(out) == _config(ref_dir)
    assert rep.details["architecture"] == MANIFEST["configs"][name]["architecture"]


@pytest.mark.parametrize("name", sorted(MANIFEST["failed"]))
def test_refuses_what_mergekit_moe_refuses(name, tmp_path):
    with pytest.raises(ModelGlueError, match="no output architecture|same prompts"):
        mix_moe_config(GOLDEN / name, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_keys_warn_with_a_near_match(tmp_path, capsys):
    mix_moe_config(GOLDEN / "moe_unknown_keys.yml", tmp_path / "out")
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:") and "unknown key" in ln]
    assert len(err) == 3
    assert "unknown key 'dype' (did you mean 'dtype'?)" in err[0]
    assert any("experts[0]: unknown key 'revision'" in ln for ln in err)
    with pytest.raises(ModelGlueError, match="'dype'.*--strict"):
        mix_moe_config(GOLDEN / "moe_unknown_keys.yml", tmp_path / "strict", strict=True)


def test_degenerate_gates_warn_as_mergekit_moe_does(tmp_path, capsys):
    """Router rows of layer 0 of moe_qwen3_hidden are nearly dependent (condition number
    above mergekit-moe's threshold of 5): one warning line, and it is in the report."""
    import json as _json

    vecs = load_file(GOLDEN / "mergekit_out" / "moe_qwen3_hidden" / "model.safetensors")
    conds = [float(torch.linalg.cond(vecs[f"model.layers.{l}.mlp.gate.weight"])) for l in range(2)]
    assert conds[0] > 5 >= conds[1]
    mix_moe_config(GOLDEN / "moe_qwen3_hidden.yml", tmp_path / "out")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "degenerate" in ln]
    assert len(lines) == 1 and "layer 0:" in lines[0]
    report = _json.loads((tmp_path / "out" / "mixture_report.json").read_text())
    assert any("degenerate" in w for w in report["details"]["warnings"])


# ----------------------------------------------------------------------------- tiny models built here


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_zoo")
    z = {}
    for arch, seed in (("mistral", 10), ("llama", 20), ("qwen2", 30), ("qwen3", 40)):
        base = make_tiny_expert(root / f"{arch}_base", arch=arch, seed=seed, tie_word_embeddings=arch == "qwen2")
        z[arch] = [base] + [make_tiny_expert(root / f"{arch}_{i}", like=base, noise=0.1, seed=seed + i)
                            for i in (1, 2, 3)]
    return z


def _write(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "moe.yml"
    p.write_text(yaml.safe_dump(json.loads(json.dumps(cfg, default=str))))
    return p


def _load_plain(path: Path, cls: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert type(model).__name__ == cls
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return model.eval(), AutoTokenizer.from_pretrained(path)


def _reference_moe_block(sd: dict, prefix: str, x: torch.Tensor, top_k: int, shared: str | None) -> torch.Tensor:
    """An MoE MLP from the tensors on disk: softmax over the gate, top-k weights
    renormalised, SiLU-gated expert MLPs; plus sigmoid(shared gate . x) * shared MLP."""
    def mlp(p):
        return (torch.nn.functional.silu(x @ sd[f"{p}.gate_proj.weight"].T) * (x @ sd[f"{p}.up_proj.weight"].T)) \
            @ sd[f"{p}.down_proj.weight"].T

    probs = torch.softmax(x @ sd[f"{prefix}.gate.weight"].T, dim=-1)
    w, idx = probs.topk(top_k, dim=-1)
    w = w / w.sum(-1, keepdim=True)
    outs = torch.stack([mlp(f"{prefix}.experts.{e}") for e in range(probs.shape[-1])], dim=-2)  # [T, E, H]
    y = (outs.gather(-2, idx[..., None].expand(-1, -1, outs.shape[-1])) * w[..., None]).sum(-2)
    if shared:
        y = y + torch.sigmoid(x @ sd[f"{prefix}.shared_expert_gate.weight"].T) * mlp(f"{prefix}.{shared}")
    return y


def _check_layer_against_reference(model, tok, out: Path, top_k: int, shared: str | None = None) -> None:
    """Layer 1's MoE block, as transformers runs it, equals the reference on its own input."""
    sd = _per_expert(load_file(out / "model.safetensors"))
    block = model.model.layers[1].mlp
    seen = {}
    handle = block.register_forward_hook(lambda m, a, o: seen.update(x=a[0], y=o[0] if isinstance(o, tuple) else o))
    enc = tok(["12+7=", "rev abc=", "count aaa="], return_tensors="pt", padding=True)
    with torch.no_grad():
        model(**enc)
    handle.remove()
    x = seen["x"].reshape(-1, seen["x"].shape[-1])
    ref = _reference_moe_block(sd, "model.layers.1.mlp", x, top_k, shared)
    assert (seen["y"].reshape(ref.shape) - ref).abs().max().item() < 1e-5
    gen = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert gen.shape == (3, enc["input_ids"].shape[1] + 4)


def test_mistral_and_llama_experts_make_mixtral(zoo, tmp_path):
    for arch in ("mistral", "llama"):
        base, e1, e2, e3 = zoo[arch]
        cfg = {"base_model": str(base), "gate_mode": "hidden", "experts_per_token": 2,
               "experts": [{"source_model": str(e1), "positive_prompts": ADD},
                           {"source_model": str(e2), "positive_prompts": REV, "negative_prompts": ADD},
                           {"source_model": str(e3), "positive_prompts": CNT}]}
        out = tmp_path / arch
        mix_moe_config(_write(tmp_path, cfg), out)
        model, tok = _load_plain(out, "MixtralForCausalLM")
        assert model.config.num_local_experts == 3 and model.config.sliding_window is None
        _check_layer_against_reference(model, tok, out, top_k=2)


def test_qwen2_experts_make_qwen2_moe_with_a_shared_expert(zoo, tmp_path):
    base, e1, e2, e3 = zoo["qwen2"]
    cfg = {"base_model": str(base), "gate_mode": "cheap_embed", "experts_per_token": 1,
           "experts": [{"source_model": str(e1), "positive_prompts": ADD},
                       {"source_model": str(e2), "positive_prompts": REV}],
           "shared_experts": [{"source_model": str(e3), "positive_prompts": CNT}]}
    out = tmp_path / "q2"
    mix_moe_config(_write(tmp_path, cfg), out)
    model, tok = _load_plain(out, "Qwen2MoeForCausalLM")
    assert model.config.num_experts == 2 and model.config.tie_word_embeddings
    sd = load_file(out / "model.safetensors")
    assert torch.equal(sd["model.layers.1.mlp.shared_expert.up_proj.weight"],
                       load_file(e3 / "model.safetensors")["model.layers.1.mlp.up_proj.weight"])
    _check_layer_against_reference(model, tok, out, top_k=1, shared="shared_expert")


def test_qwen3_experts_make_qwen3_moe(zoo, tmp_path):
    base, e1, e2, _ = zoo["qwen3"]
    cfg = {"base_model": str(base), "gate_mode": "hidden",
           "experts": [{"source_model": str(e1), "positive_prompts": ADD},
                       {"source_model": str(e2), "positive_prompts": REV}]}
    out = tmp_path / "q3"
    mix_moe_config(_write(tmp_path, cfg), out)
    model, tok = _load_plain(out, "Qwen3MoeForCausalLM")
    assert model.config.num_experts == 2 and model.config.num_experts_per_tok == 2
    _check_layer_against_reference(model, tok, out, top_k=2)


def test_deepseek_is_written_as_mergekit_moe_writes_it(zoo, tmp_path):
    """DeepSeek-MoE (v1) has no class in transformers: the config points at DeepSeek's own
    code, as mergekit-moe's does; the routed and shared experts are the named models' MLPs."""
    base, e1, e2, e3 = zoo["llama"]
    cfg = {"base_model": str(base), "gate_mode": "cheap_embed",
           "experts": [{"source_model": str(e1), "positive_prompts": ADD},
                       {"source_model": str(e2), "positive_prompts": REV}],
           "shared_experts": [{"source_model": str(e3)}]}
    out = tmp_path / "ds"
    rep = mix_moe_config(_write(tmp_path, cfg), out)
    assert rep.details["architecture"] == "DeepseekForCausalLM"
    c = json.loads((out / "config.json").read_text())
    assert (c["model_type"], c["n_routed_experts"], c["n_shared_experts"]) == ("deepseek", 2, 1)
    sd = load_file(out / "model.safetensors")
    assert torch.equal(sd["model.layers.0.mlp.shared_experts.down_proj.weight"],
                       load_file(e3 / "model.safetensors")["model.layers.0.mlp.down_proj.weight"])


@pytest.mark.parametrize("arch, cls", [("qwen2", "Qwen2MoeForCausalLM"), ("qwen3", "Qwen3MoeForCausalLM")])
def test_ffn_level_flags_take_qwen_experts(zoo, tmp_path, arch, cls):
    """`mix --level ffn` with Qwen2/Qwen3 experts: identical experts reproduce the expert
    (Qwen2-MoE's shared expert is a zero one of width 1)."""
    from transformers import AutoModelForCausalLM

    e = zoo[arch][1]
    out = tmp_path / arch
    mix("ffn", [e, e], out, router="uniform", top_k=2)
    model, tok = _load_plain(out, cls)
    ref = AutoModelForCausalLM.from_pretrained(e).eval()
    enc = tok(["12+7=", "hello"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert (model(**enc).logits - ref(**enc).logits).abs().max().item() < 1e-5
    assert torch.equal(model.generate(**enc, max_new_tokens=4, do_sample=False),
                       ref.generate(**enc, max_new_tokens=4, do_sample=False))


def test_random_gates_follow_the_seed(zoo, tmp_path):
    base, e1, e2, _ = zoo["llama"]
    cfg = _write(tmp_path, {"base_model": str(base), "gate_mode": "random",
                            "experts": [{"source_model": str(e1)}, {"source_model": str(e2)}]})
    gate = "model.layers.0.block_sparse_moe.gate.weight"
    g = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        mix_moe_config(cfg, tmp_path / name, seed=seed)
        g[name] = load_file(tmp_path / name / "model.safetensors")[gate]
    assert torch.equal(g["a"], g["b"]) and not torch.equal(g["a"], g["c"])
    torch.manual_seed(1)
    assert torch.equal(g["a"], torch.randn(2, 2, 32)[0])  # mergekit-moe: N(0, 1) of shape [L, E, H]


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["experts"][1].pop("source_model"), r"experts\[1\]\.source_model: missing"),
    (lambda c: c.update(gate_mode="hiden"), "unknown gate_mode 'hiden'"),
    (lambda c: c.update(experts_per_token=3), "fewer than experts_per_token"),
    (lambda c: c["experts"][0].pop("positive_prompts"), r"experts\[0\] has no positive_prompts"),
    (lambda c: c.update(dtype="float8"), "dtype 'float8'"),
    (lambda c: c["experts"][1].update(source_model="nowhere/at_all"), "not found"),
    (lambda c: c.update(architecture="qwen3"), "Qwen3 MoE: Qwen3 only"),
])
def test_bad_configs_fail_in_one_line(zoo, tmp_path, edit, message):
    base, e1, e2, _ = zoo["llama"]
    cfg = {"base_model": str(base), "gate_mode": "cheap_embed",
           "experts": [{"source_model": str(e1), "positive_prompts": ADD},
                       {"source_model": str(e2), "positive_prompts": REV}]}
    edit(cfg)
    with pytest.raises(ModelGlueError, match=message) as exc:
        mix_moe_config(_write(tmp_path, cfg), tmp_path / "out")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_experts_with_mismatched_shapes_are_refused(zoo, tmp_path):
    wide = make_tiny_expert(tmp_path / "wide", seed=5, intermediate_size=48)
    base, e1, _, _ = zoo["llama"]
    cfg = {"base_model": str(base), "gate_mode": "cheap_embed",
           "experts": [{"source_model": str(e1), "positive_prompts": ADD},
                       {"source_model": str(wide), "positive_prompts": REV}]}
    with pytest.raises(ModelGlueError, match=r"experts\[1\].*mlp\.\w+_proj\.weight is \[.*the base's is"):
        mix_moe_config(_write(tmp_path, cfg), tmp_path / "out")


def test_cli_runs_a_config_and_keeps_the_flags(zoo, tmp_path):
    base, e1, e2, _ = zoo["llama"]
    cfg = _write(tmp_path, {"base_model": str(base), "gate_mode": "cheap_embed",
                            "experts": [{"source_model": str(e1), "positive_prompts": ADD},
                                        {"source_model": str(e2), "positive_prompts": REV}]})
    res = CliRunner().invoke(main, ["mix", str(cfg), str(tmp_path / "o1")])
    assert res.exit_code == 0, res.output
    assert "MixtralForCausalLM of 2 experts" in res.output
    assert (tmp_path / "o1" / "model.safetensors").is_file()
    res = CliRunner().invoke(main, ["mix", "--level", "ffn", str(e1), str(e2), "--router", "uniform",
                                    "--out", str(tmp_path / "o2")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["mix", str(e1), str(tmp_path / "o3")])
    assert res.exit_code != 0 and "CONFIG.yml OUT" in res.output
    res = CliRunner().invoke(main, ["mix", str(cfg), str(tmp_path / "o4"), "--top-k", "1"])
    assert res.exit_code != 0 and "--top-k goes with --level" in res.output  # never silently ignored
    assert not (tmp_path / "o4").exists()
    res = CliRunner().invoke(main, ["mix", "--level", "ffn", str(e1), str(e2), "--router", "uniform",
                                    "--out", str(tmp_path / "o5"), "--strict"])
    assert res.exit_code != 0 and "--strict goes with a mergekit-moe CONFIG.yml" in res.output
    assert not (tmp_path / "o5").exists()
