"""PEFT LoRA adapters for the golden models, and the recipes that apply them with
mergekit's `MODEL+ADAPTER` references (make_golden.py imports this; see
tests/data/mergekit_golden/README.md). mergekit 0.1.5 loads each reference with
transformers, merges the adapter with PEFT's merge_and_unload and merges the result;
modelglue applies the adapter to each tensor as it is read.

The adapters are written by hand in PEFT's file format (deterministic, seeded):
- llama_lora: r 4, alpha 8 on q/v/down_proj, with rank_pattern / alpha_pattern for
  down_proj (r 2, alpha 3), an embedding LoRA on embed_tokens (lora_embedding_A/B) and
  lm_head in modules_to_save (a full tensor in the adapter);
- qwen2_lora: rslora (scale alpha / sqrt(r)), alpha 6, r 4, and lora_bias on q/k/v_proj
  (Qwen2's attention biases gain scale * lora_B.bias).

Run as a script, it also writes what mergekit-extract-lora 0.1.5 extracts from golden
model pairs (EXTRACTIONS) to mergekit_out/extract_lora/<name>/ (adapter_config.json +
adapter_model.safetensors) and their options to mergekit_out/extract_lora/manifest.json,
for tests/test_lora.py to compare `modelglue extract-lora` against:

    .venv/bin/python benchmarks/golden_lora.py      # after make_golden.py built models/
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ADAPTERS = {  # name -> (base model, adapter_config.json entries)
    "llama_lora": ("llama_base", {"r": 4, "lora_alpha": 8,
                                  "target_modules": ["q_proj", "v_proj", "down_proj", "embed_tokens"],
                                  "rank_pattern": {"down_proj": 2}, "alpha_pattern": {"down_proj": 3},
                                  "modules_to_save": ["lm_head"]}),
    "qwen2_lora": ("qwen2_base", {"r": 4, "lora_alpha": 6, "use_rslora": True, "lora_bias": True,
                                  "target_modules": ["q_proj", "k_proj", "v_proj"]}),
}
B, F1, F2 = "models/llama_base", "models/llama_ft1", "models/llama_ft2"
QB, Q1, Q2 = "models/qwen2_base", "models/qwen2_ft1", "models/qwen2_ft2"
LORA, QLORA = f"{B}+models/llama_lora", f"{QB}+models/qwen2_lora"


def _pair(g: torch.Generator, out_features: int, in_features: int, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """lora_A [r, in], lora_B [out, r]: scale * B @ A is a sizeable change of W."""
    return 0.2 * torch.randn(r, in_features, generator=g), 0.2 * torch.randn(out_features, r, generator=g)


def adapter_tensors(weights: dict[str, torch.Tensor], extra: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's names (base_model.model.<module>.lora_A.weight, ...)."""
    sd: dict[str, torch.Tensor] = {}
    for key in sorted(weights):
        module, _, leaf = key.rpartition(".")
        kind = module.rsplit(".", 1)[-1]
        if leaf != "weight" or kind not in extra["target_modules"]:
            continue
        r = extra.get("rank_pattern", {}).get(kind, extra["r"])
        rows, cols = weights[key].shape
        p = f"base_model.model.{module}"
        if kind == "embed_tokens":  # lora_embedding_A [r, vocab], lora_embedding_B [hidden, r]
            sd[f"{p}.lora_embedding_A"], sd[f"{p}.lora_embedding_B"] = _pair(g, cols, rows, r)
            continue
        sd[f"{p}.lora_A.weight"], sd[f"{p}.lora_B.weight"] = _pair(g, rows, cols, r)
        if extra.get("lora_bias"):
            sd[f"{p}.lora_B.bias"] = 0.1 * torch.randn(rows, generator=g)
    for kind in extra.get("modules_to_save", []):
        key = f"{kind}.weight"
        sd[f"base_model.model.{key}"] = weights[key] + 0.1 * torch.randn(weights[key].shape, generator=g)
    return sd


def build_lora_adapters(root: Path) -> None:
    models = root / "models"
    for seed, (name, (base, extra)) in enumerate(ADAPTERS.items(), start=3000):
        out = models / name
        if (out / "adapter_model.safetensors").exists():
            continue
        sd = adapter_tensors(load_file(models / base / "model.safetensors"), extra, torch.Generator().manual_seed(seed))
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, out / "adapter_model.safetensors", metadata={"format": "pt"})
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
                  "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "inference_mode": True, **extra}
        (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def lora_recipes() -> dict[str, dict]:
    return {
        "lora_linear": {
            "merge_method": "linear",
            "models": [{"model": LORA, "parameters": {"weight": 0.6}}, {"model": F1, "parameters": {"weight": 0.4}}],
            "dtype": "float32",
        },
        "lora_ties_base": {  # the LoRA model as an input, the plain model as the base
            "merge_method": "ties",
            "base_model": B,
            "models": [{"model": LORA, "parameters": {"weight": 1.0, "density": 0.5}},
                       {"model": F2, "parameters": {"weight": 0.5, "density": 0.5}}],
            "dtype": "float32",
        },
        "qwen2_lora_task_arithmetic": {  # rslora and lora_bias; the LoRA model is the base
            "merge_method": "task_arithmetic",
            "base_model": QLORA,
            "models": [{"model": Q1, "parameters": {"weight": 0.7}}, {"model": Q2, "parameters": {"weight": 0.3}}],
            "dtype": "float32",
        },
    }


# name -> (base, fine-tune, mergekit-extract-lora options); our CLI takes the same options
EXTRACTIONS = {
    "llama_r4": ("models/llama_base", "models/llama_ft1", ["--max-rank", "4"]),
    "llama_r3_embed_attn": ("models/llama_base", "models/llama_ft2",
                            ["--max-rank", "3", "--embed-lora", "-i", "self_attn|embed|lm_head", "-e", "o_proj",
                             "--save-module", "down_proj", "--no-distribute-scale"]),
    # sv_epsilon between the task vectors' top singular values: per-module ranks 1 to 3
    "qwen2_r3_epsilon_skip": ("models/qwen2_base", "models/qwen2_ft1", ["--max-rank", "3", "--skip-undecomposable",
                                                                      "--sv-epsilon", "0.0285"]),
}


def run_extractions(root: Path, venv: Path) -> None:
    out_root = root / "mergekit_out" / "extract_lora"
    if out_root.exists():
        shutil.rmtree(out_root)
    out_root.mkdir(parents=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    manifest = {}
    for name, (base, tuned, options) in EXTRACTIONS.items():
        out = out_root / name
        # absolute paths: mergekit's model card asks the Hub about "a/b"-shaped relative ones
        cmd = [str(venv / "bin" / "mergekit-extract-lora"), "--base-model", str(root / base), "--model",
               str(root / tuned), "--out-path", str(out), *options]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            sys.exit(f"{name}: mergekit-extract-lora failed: {(p.stderr or p.stdout).strip().splitlines()[-1]}")
        for f in out.iterdir():
            if f.name not in ("adapter_config.json", "adapter_model.safetensors"):
                f.unlink()
        manifest[name] = {"base": base, "model": tuned, "options": options}
        print(f"ok    extract {name}")
    (out_root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[1]
    run_extractions(here / "tests" / "data" / "mergekit_golden", here / ".venv-mergekit")
