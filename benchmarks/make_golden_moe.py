#!/usr/bin/env python3
"""Build the mergekit-moe golden references under tests/data/mergekit_golden/moe/.

Run from the repository root (needs .venv-mergekit, see setup_mergekit_venv.sh):

    .venv/bin/python benchmarks/make_golden_moe.py             # rebuild everything
    .venv/bin/python benchmarks/make_golden_moe.py --only moe_qwen3_hidden

(`benchmarks/make_golden.py` runs it too when it rebuilds everything.)

What it does:
1. builds tiny seeded Llama, Qwen2 and Qwen3 models with the demo's char-level tokenizer
   in moe/models/<name>/ (a base and two or three fine-tune stand-ins each: base + noise);
2. writes mergekit-moe configs (<name>.yml, in moe/);
3. runs `mergekit-moe <name>.yml mergekit_out/<name> --random-seed 0` with cwd = moe/
   (mergekit resolves relative model paths against the cwd);
4. keeps config.json and *.safetensors of each output and writes moe/manifest.json:
   {config file: {"output", "architecture", "gate_mode", "randomized", "tensors"}} plus
   "failed": {config file: {"config", "error"}} for configs mergekit-moe 0.1.5 rejects.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml
from golden_tools import run_tool

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "data" / "mergekit_golden" / "moe"
MERGEKIT_VENV = ROOT / ".venv-mergekit"

# Prompts in the demo tokenizer's alphabet: sums, reversed words, counting.
ADD = ["12+7=", "3+45=", "8+8="]
REV = ["rev abc=", "rev hello=", "rev xyz="]
CNT = ["count aaa=", "count bb=", "count c="]


def build_models(root: Path) -> None:
    from modelglue.mixture.testing import make_tiny_expert

    m = root / "models"
    if m.exists():
        shutil.rmtree(m)
    size = dict(hidden_size=16, intermediate_size=32, num_layers=2)
    for arch, seed in (("llama", 100), ("qwen2", 200), ("qwen3", 300)):
        tied = arch == "qwen2"  # small Qwen2 checkpoints tie embeddings
        base = make_tiny_expert(m / f"{arch}_base", arch=arch, seed=seed, tie_word_embeddings=tied, **size)
        for i in (1, 2, 3):
            make_tiny_expert(m / f"{arch}_e{i}", like=base, noise=0.1, seed=seed + i)
    for d in m.iterdir():  # keep what mergekit and modelglue read: weights, config, tokenizer
        for f in d.iterdir():
            if f.name == "generation_config.json":
                f.unlink()


def _expert(model: str, pos: list[str] | None, neg: list[str] | None = None, **extra) -> dict:
    e: dict = {"source_model": f"models/{model}"}
    if pos is not None:
        e["positive_prompts"] = pos
    if neg is not None:
        e["negative_prompts"] = neg
    return {**e, **extra}


def configs() -> dict[str, dict]:
    """name -> mergekit-moe config. Each output architecture and gate mode mergekit-moe 0.1.5 has."""
    c: dict[str, dict] = {}
    c["moe_mixtral_cheap_embed"] = {
        "base_model": "models/llama_base", "gate_mode": "cheap_embed", "dtype": "float32",
        "experts": [_expert("llama_e1", ADD, REV), _expert("llama_e2", REV, residual_scale=0.5),
                    _expert("llama_e3", CNT)],
    }
    c["moe_mixtral_hidden"] = {
        "base_model": "models/llama_base", "gate_mode": "hidden", "experts_per_token": 1,
        "experts": [_expert("llama_e1", ADD), _expert("llama_e2", REV, CNT)],
    }
    c["moe_mixtral_hidden_avg"] = {
        "base_model": "models/llama_base", "gate_mode": "hidden_avg", "dtype": "bfloat16",
        "experts": [_expert("llama_e1", ADD), _expert("llama_e2", REV + CNT)],
    }
    c["moe_mixtral_random"] = {  # random needs no prompts; seeded by --random-seed 0
        "base_model": "models/llama_base", "gate_mode": "random",
        "experts": [_expert("llama_e1", None), _expert("llama_e2", None)],
    }
    c["moe_mixtral_uniform_random"] = {
        "base_model": "models/llama_base", "gate_mode": "uniform_random", "dtype": "float32",
        "experts": [_expert("llama_e1", ADD), _expert("llama_e2", REV)],
    }
    c["moe_qwen2_shared"] = {
        "base_model": "models/qwen2_base", "gate_mode": "cheap_embed",
        "experts": [_expert("qwen2_e1", ADD), _expert("qwen2_e2", REV, residual_scale=2.0)],
        # mergekit-moe 0.1.5 opens only the base and the routed experts: a shared expert must be one of them
        "shared_experts": [_expert("qwen2_e1", CNT, ADD)],
    }
    c["moe_qwen2_hidden"] = {
        "base_model": "models/qwen2_base", "gate_mode": "hidden", "experts_per_token": 1,
        "experts": [_expert("qwen2_e1", ADD), _expert("qwen2_e2", REV)],
        "shared_experts": [_expert("qwen2_base", CNT)],
    }
    c["moe_llama_to_qwen2_moe"] = {  # Llama experts, a gated shared expert: only Qwen MoE holds it
        "base_model": "models/llama_base", "gate_mode": "cheap_embed",
        "experts": [_expert("llama_e1", ADD), _expert("llama_e2", REV)],
        "shared_experts": [_expert("llama_base", CNT)],
    }
    c["moe_qwen3_cheap_embed"] = {
        "base_model": "models/qwen3_base", "gate_mode": "cheap_embed", "dtype": "float32",
        "experts": [_expert("qwen3_e1", ADD), _expert("qwen3_e2", REV), _expert("qwen3_e3", CNT)],
    }
    c["moe_qwen3_hidden"] = {
        "base_model": "models/qwen3_base", "gate_mode": "hidden",
        "experts": [_expert("qwen3_e1", ADD, REV), _expert("qwen3_e2", REV)],
    }
    c["moe_deepseek_shared"] = {  # an ungated shared expert: DeepSeek MoE
        "base_model": "models/llama_base", "gate_mode": "cheap_embed",
        "experts": [_expert("llama_e1", ADD), _expert("llama_e2", REV)],
        "shared_experts": [_expert("llama_base", None)],
    }
    c["moe_deepseek_architecture"] = {  # chosen by name (Mixtral would be the default)
        "base_model": "models/llama_base", "gate_mode": "cheap_embed", "architecture": "deepseek",
        "experts": [_expert("llama_e1", ADD), _expert("llama_e2", REV)],
    }
    c["moe_unknown_keys"] = {  # mergekit ignores keys it does not know
        "base_model": "models/llama_base", "gate_mode": "cheap_embed", "dype": "bfloat16", "tokenizer_source": "base",
        "experts": [_expert("llama_e1", ADD, revision="main"), _expert("llama_e2", REV)],
    }
    c["random_moe_mixtral_noise"] = {  # noise_scale draws from the global RNG: compared by statistics
        "base_model": "models/llama_base", "gate_mode": "cheap_embed",
        "experts": [_expert("llama_e1", ADD, noise_scale=0.01), _expert("llama_e2", REV)],
    }
    # rejected by mergekit-moe 0.1.5
    c["moe_qwen2_no_shared"] = {
        "base_model": "models/qwen2_base", "gate_mode": "cheap_embed",
        "experts": [_expert("qwen2_e1", ADD), _expert("qwen2_e2", REV)],
    }
    c["moe_same_prompts"] = {
        "base_model": "models/llama_base", "gate_mode": "hidden",
        "experts": [_expert("llama_e1", ADD), _expert("llama_e2", ADD)],
    }
    c["moe_mixed_archs"] = {
        "base_model": "models/llama_base", "gate_mode": "cheap_embed",
        "experts": [_expert("llama_e1", ADD), _expert("qwen3_e2", REV)],
    }
    return c


def run_mergekit_moe(root: Path, name: str, venv: Path) -> tuple[bool, str, float]:
    cmd = [str(venv / "bin" / "mergekit-moe"), f"{name}.yml", f"mergekit_out/{name}",
           "--random-seed", "0", "--no-write-model-card", "--quiet"]
    ok, err, dt = run_tool(cmd, root, root / "mergekit_out" / name,
                           keep=lambda f: f.suffix == ".safetensors"
                           or f.name in ("config.json", "model.safetensors.index.json"))
    return ok, " ".join(cmd[1:]) if ok else err, dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--mergekit-venv", type=Path, default=MERGEKIT_VENV)
    ap.add_argument("--only", default="", help="comma-separated config names (keeps the others)")
    args = ap.parse_args(argv)
    root: Path = args.out
    if not (args.mergekit_venv / "bin" / "mergekit-moe").exists():
        print(f"no mergekit at {args.mergekit_venv}: run bash benchmarks/setup_mergekit_venv.sh", file=sys.stderr)
        return 2
    root.mkdir(parents=True, exist_ok=True)
    only = [s for s in args.only.split(",") if s]
    if not only:
        build_models(root)
        for old in root.glob("*.yml"):
            old.unlink()
        if (root / "mergekit_out").exists():
            shutil.rmtree(root / "mergekit_out")
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if (only and manifest_path.exists()) else {"configs": {}, "failed": {}}
    from make_golden import describe_output  # noqa: E402  (same directory)

    all_c = configs()
    for name in only or list(all_c):
        cfg = all_c[name]
        path = root / f"{name}.yml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None))
        ok, info, dt = run_mergekit_moe(root, name, args.mergekit_venv)
        manifest["configs"].pop(path.name, None)
        manifest["failed"].pop(path.name, None)
        if ok:
            out = root / "mergekit_out" / name
            arch = json.loads((out / "config.json").read_text())["architectures"][0]
            manifest["configs"][path.name] = {"output": f"mergekit_out/{name}", "architecture": arch,
                                              "gate_mode": cfg.get("gate_mode", "hidden"),
                                              "randomized": name.startswith("random_"), **describe_output(out)}
            print(f"ok    {name:30s} {dt:5.1f}s {arch}")
        else:
            manifest["failed"][path.name] = {"config": cfg, "error": info}
            print(f"FAIL  {name:30s} {dt:5.1f}s {info}")
    manifest["configs"] = dict(sorted(manifest["configs"].items()))
    manifest["generator"] = {"command": "mergekit-moe NAME.yml mergekit_out/NAME --random-seed 0 "
                                        "--no-write-model-card --quiet (cwd = this directory)"}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    print(f"moe golden tree: {total / 1e6:.2f} MB in {root}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
