#!/usr/bin/env python3
"""Build the mergekit golden references under tests/data/mergekit_golden/.

Run from the repository root (needs .venv-mergekit, see setup_mergekit_venv.sh):

    .venv/bin/python benchmarks/make_golden.py            # rebuild everything
    .venv/bin/python benchmarks/make_golden.py --only ties,linear_weights

What it does:
1. builds tiny random checkpoints (float32, seeded) in models/<name>/ (model.safetensors
   + config.json only): a Llama base, three Llama fine-tunes (base + shared direction +
   own noise, so task vectors are correlated and meaningful; ft3 drifts ten times
   further), a Qwen2 base and two Qwen2 fine-tunes (attention biases, tied embeddings);
2. writes the mergekit YAML recipes (<name>.yml, in the golden root);
3. runs `mergekit-yaml <name>.yml mergekit_out/<name>` with cwd = the golden root
   (mergekit resolves relative model paths against the cwd, and the recipes sit in that
   same directory, so cwd-relative and recipe-relative resolution agree);
4. keeps only *.safetensors (+ index) and config.json of each output, and writes
   manifest.json: {recipe file: {"output": dir, "method": ..., "out_dtype": ...}} plus
   "failed": {recipe: error} for recipes mergekit 0.1.5 rejects (those are dropped).

Everything is deterministic: the same command gives byte-identical model inputs.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from golden_chat_templates import make_chat_template_goldens
from golden_lora import build_lora_adapters, lora_recipes
from golden_tokenizers import build_tokenizer_models, tokenizer_recipes
from golden_tools import run_tool

WEIGHT_FILES = ("config.json", "model.safetensors.index.json")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "data" / "mergekit_golden"
MERGEKIT_VENV = ROOT / ".venv-mergekit"

LLAMA = dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    hidden_size=24,
    intermediate_size=48,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=64,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
QWEN2 = {**LLAMA, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "tie_word_embeddings": True}


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator().manual_seed(seed)
    return g


def build_base(cfg: dict, out: Path, seed: int) -> dict[str, torch.Tensor]:
    """A seeded random checkpoint saved with save_pretrained (HF layout)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "architectures"})
    config.architectures = cfg["architectures"]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # transformers' init leaves norms at 1 and biases at 0: give every tensor content so
    # that no method is tested on a degenerate input.
    g = _gen(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for extra in out.iterdir():
        if extra.name not in ("model.safetensors", "config.json"):
            extra.unlink()
    return load_file(out / "model.safetensors")


def build_finetune(base_dir: Path, out: Path, seed: int, shared_seed: int,
                   shared_scale: float, own_scale: float) -> None:
    """base + shared_scale * (shared direction) + own_scale * (own noise), per tensor."""
    base = load_file(base_dir / "model.safetensors")
    gs, go = _gen(shared_seed), _gen(seed)
    sd = {}
    for name in sorted(base):
        t = base[name]
        shared = torch.randn(t.shape, generator=gs)
        own = torch.randn(t.shape, generator=go)
        scale = t.float().std().item() if t.numel() > 1 else 0.02
        scale = max(scale, 0.02)
        sd[name] = (t + scale * (shared_scale * shared + own_scale * own)).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(base_dir / "config.json", out / "config.json")


def build_models(root: Path) -> None:
    m = root / "models"
    if m.exists():
        shutil.rmtree(m)
    build_base(LLAMA, m / "llama_base", seed=1000)
    build_finetune(m / "llama_base", m / "llama_ft1", seed=1001, shared_seed=1999, shared_scale=0.15, own_scale=0.15)
    build_finetune(m / "llama_base", m / "llama_ft2", seed=1002, shared_seed=1999, shared_scale=0.15, own_scale=0.15)
    build_finetune(m / "llama_base", m / "llama_ft3_far", seed=1003, shared_seed=1999, shared_scale=0.5, own_scale=1.5)
    build_base(QWEN2, m / "qwen2_base", seed=2000)
    build_finetune(m / "qwen2_base", m / "qwen2_ft1", seed=2001, shared_seed=2999, shared_scale=0.15, own_scale=0.15)
    build_finetune(m / "qwen2_base", m / "qwen2_ft2", seed=2002, shared_seed=2999, shared_scale=0.15, own_scale=0.15)


def build_bf16_models(root: Path) -> None:
    """bfloat16 copies of llama_base/ft1/ft2 (what real checkpoints look like): their task
    vectors hold many exactly equal magnitudes, so TIES / breadcrumbs trims meet ties at
    the density threshold, where mergekit's choice is torch.argsort's order."""
    m = root / "models"
    for name in ("llama_base", "llama_ft1", "llama_ft2"):
        src, dst = m / name, m / f"{name}_bf16"
        if (dst / "model.safetensors").exists():
            continue
        sd = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(src / "model.safetensors").items()}
        dst.mkdir(parents=True, exist_ok=True)
        save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
        cfg = json.loads((src / "config.json").read_text())
        cfg["dtype"] = "bfloat16"
        (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


B, F1, F2, F3 = "models/llama_base", "models/llama_ft1", "models/llama_ft2", "models/llama_ft3_far"
BB, BF1, BF2 = "models/llama_base_bf16", "models/llama_ft1_bf16", "models/llama_ft2_bf16"
QB, Q1, Q2 = "models/qwen2_base", "models/qwen2_ft1", "models/qwen2_ft2"


def recipes() -> dict[str, dict]:
    """name -> mergekit recipe. Every deterministic feature we claim to match."""
    r: dict[str, dict] = {}
    r["linear_weights"] = {  # normalize defaults to true; weights do not sum to 1
        "merge_method": "linear",
        "models": [
            {"model": F1, "parameters": {"weight": 1.0}},
            {"model": F2, "parameters": {"weight": 2.0}},
            {"model": F3, "parameters": {"weight": 0.5}},
        ],
        "dtype": "float32",
    }
    r["linear_no_normalize"] = {
        "merge_method": "linear",
        "models": [
            {"model": F1, "parameters": {"weight": 0.3}},
            {"model": F2, "parameters": {"weight": 0.5}},
        ],
        "parameters": {"normalize": False},
        "dtype": "float32",
    }
    r["linear_gradient"] = {  # per-model layer gradients
        "merge_method": "linear",
        "models": [
            {"model": F1, "parameters": {"weight": [0.0, 1.0]}},
            {"model": F2, "parameters": {"weight": [1.0, 0.2, 0.6]}},
        ],
        "dtype": "float32",
    }
    r["slerp_t"] = {
        "merge_method": "slerp",
        "base_model": F1,
        "models": [{"model": F1}, {"model": F3}],
        "parameters": {"t": 0.3},
        "dtype": "float32",
    }
    r["slerp_gradient_filters"] = {
        "merge_method": "slerp",
        "base_model": F1,
        "models": [{"model": F1}, {"model": F2}],
        "parameters": {
            "t": [
                {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                {"value": 0.5},
            ]
        },
        "dtype": "float32",
    }
    r["slerp_slices_gradient"] = {  # the canonical mergekit slerp example shape
        "slices": [
            {"sources": [
                {"model": F1, "layer_range": [0, 4]},
                {"model": F3, "layer_range": [0, 4]},
            ]}
        ],
        "merge_method": "slerp",
        "base_model": F1,
        "parameters": {
            "t": [
                {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                {"value": 0.5},
            ]
        },
        "dtype": "float32",
    }
    r["task_arithmetic"] = {
        "merge_method": "task_arithmetic",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"weight": 1.0}},
            {"model": F2, "parameters": {"weight": 0.5}},
        ],
        "parameters": {"lambda": 0.8},
        "dtype": "float32",
    }
    r["task_arithmetic_normalize"] = {
        "merge_method": "task_arithmetic",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"weight": 0.7}},
            {"model": F2, "parameters": {"weight": 0.6}},
            {"model": F3, "parameters": {"weight": 0.2}},
        ],
        "parameters": {"normalize": True},
        "dtype": "float32",
    }
    r["ties"] = {  # normalize defaults to true for ties
        "merge_method": "ties",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"density": 0.5, "weight": 1.0}},
            {"model": F2, "parameters": {"density": 0.5, "weight": 0.7}},
            {"model": F3, "parameters": {"density": 0.5, "weight": 0.5}},
        ],
        "dtype": "float32",
    }
    r["ties_no_normalize"] = {
        "merge_method": "ties",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"density": 0.3, "weight": 0.6}},
            {"model": F2, "parameters": {"density": 0.7, "weight": 0.4}},
        ],
        "parameters": {"normalize": False},
        "dtype": "float32",
    }
    r["ties_rescale"] = {  # rescale: l1 norm of the trimmed task vector restored
        "merge_method": "ties",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"density": 0.4, "weight": 1.0}},
            {"model": F2, "parameters": {"density": 0.6, "weight": 1.0}},
        ],
        "parameters": {"rescale": True},
        "dtype": "float32",
    }
    r["ties_toplevel_vs_permodel"] = {  # top-level defaults, one model overrides
        "merge_method": "ties",
        "base_model": B,
        "models": [
            {"model": F1},
            {"model": F2, "parameters": {"density": 0.9}},
            {"model": F3, "parameters": {"weight": 0.2}},
        ],
        "parameters": {"density": 0.5, "weight": 0.5},
        "dtype": "float32",
    }
    r["ties_filter_density"] = {  # filter lists on density, gradient on weight
        "merge_method": "ties",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"weight": [1.0, 0.5]}},
            {"model": F2, "parameters": {"weight": 0.8}},
        ],
        "parameters": {
            "density": [
                {"filter": "mlp", "value": 0.3},
                {"filter": "self_attn", "value": [0.2, 0.8]},
                {"value": 0.6},
            ]
        },
        "dtype": "float32",
    }
    r["breadcrumbs"] = {
        "merge_method": "breadcrumbs",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"density": 0.8, "gamma": 0.05, "weight": 0.6}},
            {"model": F2, "parameters": {"density": 0.7, "gamma": 0.1, "weight": 0.4}},
        ],
        "dtype": "float32",
    }
    r["breadcrumbs_ties"] = {
        "merge_method": "breadcrumbs_ties",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"weight": 0.6}},
            {"model": F2, "parameters": {"weight": 0.4}},
            {"model": F3, "parameters": {"weight": 0.3}},
        ],
        "parameters": {"density": 0.7, "gamma": 0.1},
        "dtype": "float32",
    }
    r["dare_ties_density1"] = {  # density 1: no random drop, deterministic
        "merge_method": "dare_ties",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"density": 1.0, "weight": 0.5}},
            {"model": F2, "parameters": {"density": 1.0, "weight": 0.5}},
        ],
        "dtype": "float32",
    }
    r["dare_linear_density1"] = {
        "merge_method": "dare_linear",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"density": 1.0, "weight": 0.7}},
            {"model": F2, "parameters": {"density": 1.0, "weight": 0.5}},
        ],
        "dtype": "float32",
    }
    r["model_stock"] = {
        "merge_method": "model_stock",
        "base_model": B,
        "models": [{"model": F1}, {"model": F2}, {"model": F3}],
        "dtype": "float32",
    }
    r["model_stock_filter_wise"] = {
        "merge_method": "model_stock",
        "base_model": B,
        "models": [{"model": F1}, {"model": F2}],
        "parameters": {"filter_wise": True},
        "dtype": "float32",
    }
    r["passthrough_dus"] = {  # depth up-scaling: 3 + 3 = 6 layers
        "slices": [
            {"sources": [{"model": F1, "layer_range": [0, 3]}]},
            {"sources": [{"model": F2, "layer_range": [1, 4]}]},
        ],
        "merge_method": "passthrough",
        "dtype": "float32",
    }
    r["passthrough_scale"] = {  # DUS with scaled o_proj/down_proj in the repeated block
        "slices": [
            {"sources": [{"model": F1, "layer_range": [0, 3]}]},
            {"sources": [{
                "model": F1, "layer_range": [2, 3],
                "parameters": {"scale": [
                    {"filter": "o_proj", "value": 0.0},
                    {"filter": "down_proj", "value": 0.5},
                    {"value": 1.0},
                ]},
            }]},
            {"sources": [{"model": F1, "layer_range": [3, 4]}]},
        ],
        "merge_method": "passthrough",
        "dtype": "float32",
    }
    r["slices_linear"] = {  # per-slice linear merge with per-source weights
        "slices": [
            {"sources": [
                {"model": F1, "layer_range": [0, 2], "parameters": {"weight": 0.7}},
                {"model": F2, "layer_range": [0, 2], "parameters": {"weight": 0.3}},
            ]},
            {"sources": [
                {"model": F1, "layer_range": [2, 4], "parameters": {"weight": 0.2}},
                {"model": F3, "layer_range": [2, 4], "parameters": {"weight": 0.8}},
            ]},
        ],
        "merge_method": "linear",
        "dtype": "float32",
    }
    r["linear_bf16"] = {  # compute dtype bfloat16 (inputs cast), output bfloat16
        "merge_method": "linear",
        "models": [
            {"model": F1, "parameters": {"weight": 0.6}},
            {"model": F2, "parameters": {"weight": 0.4}},
        ],
        "dtype": "bfloat16",
    }
    r["ties_out_fp16"] = {  # compute float32, write float16
        "merge_method": "ties",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"density": 0.5, "weight": 0.5}},
            {"model": F2, "parameters": {"density": 0.5, "weight": 0.5}},
        ],
        "dtype": "float32",
        "out_dtype": "float16",
    }
    r["task_arithmetic_bf16"] = {
        "merge_method": "task_arithmetic",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"weight": 0.5}},
            {"model": F2, "parameters": {"weight": 0.5}},
        ],
        "dtype": "bfloat16",
    }
    r["slerp_bf16_out"] = {
        "merge_method": "slerp",
        "base_model": F1,
        "models": [{"model": F1}, {"model": F3}],
        "parameters": {"t": 0.6},
        "out_dtype": "bfloat16",
    }
    r["linear_no_dtype"] = {  # no dtype at all: mergekit's default behaviour
        "merge_method": "linear",
        "models": [
            {"model": F1, "parameters": {"weight": 0.5}},
            {"model": F2, "parameters": {"weight": 0.5}},
        ],
    }
    r["qwen2_linear"] = {  # attention biases, tied embeddings
        "merge_method": "linear",
        "models": [
            {"model": QB, "parameters": {"weight": 0.2}},
            {"model": Q1, "parameters": {"weight": 0.5}},
            {"model": Q2, "parameters": {"weight": 0.3}},
        ],
        "dtype": "float32",
    }
    r["qwen2_ties"] = {
        "merge_method": "ties",
        "base_model": QB,
        "models": [
            {"model": Q1, "parameters": {"density": 0.5, "weight": 0.5}},
            {"model": Q2, "parameters": {"density": 0.5, "weight": 0.5}},
        ],
        "dtype": "float32",
    }
    # bfloat16 inputs: ties among |task vector| entries at the trim threshold
    r["ties_bf16_inputs"] = {
        "merge_method": "ties",
        "base_model": BB,
        "models": [
            {"model": BF1, "parameters": {"density": 0.5, "weight": 0.5}},
            {"model": BF2, "parameters": {"density": 0.5, "weight": 0.5}},
        ],
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }
    r["breadcrumbs_bf16_inputs"] = {
        "merge_method": "breadcrumbs",
        "base_model": BB,
        "models": [
            {"model": BF1, "parameters": {"density": 0.7, "gamma": 0.05, "weight": 0.5}},
            {"model": BF2, "parameters": {"density": 0.7, "gamma": 0.05, "weight": 0.5}},
        ],
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }
    # randomized methods: compared by structure and statistics, not element by element
    r["random_dare_linear_single"] = {  # one task vector: out - base = w * s * mask * d
        "merge_method": "dare_linear",
        "base_model": B,
        "models": [{"model": F1, "parameters": {"density": 0.3, "weight": 0.8}}],
        "dtype": "float32",
    }
    r["random_della_linear_single"] = {
        "merge_method": "della_linear",
        "base_model": B,
        "models": [{"model": F1, "parameters": {"density": 0.5, "epsilon": 0.2, "weight": 0.8}}],
        "dtype": "float32",
    }
    r["random_dare_ties"] = {
        "merge_method": "dare_ties",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"density": 0.5, "weight": 0.5}},
            {"model": F2, "parameters": {"density": 0.5, "weight": 0.5}},
        ],
        "dtype": "float32",
    }
    r["random_della"] = {
        "merge_method": "della",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"density": 0.5, "epsilon": 0.1, "weight": 0.5}},
            {"model": F2, "parameters": {"density": 0.5, "epsilon": 0.1, "weight": 0.5}},
        ],
        "dtype": "float32",
    }
    r["qwen2_passthrough_dus"] = {  # design.md: fails under transformers 5 (layer_types)
        "slices": [
            {"sources": [{"model": Q1, "layer_range": [0, 3]}]},
            {"sources": [{"model": Q2, "layer_range": [1, 4]}]},
        ],
        "merge_method": "passthrough",
        "dtype": "float32",
    }
    # hypersphere methods: whole-tensor norms and angles
    r["nuslerp"] = {  # no base: slerp of the models themselves, whole tensor, t = 0.6 / (0.4 + 0.6)
        "merge_method": "nuslerp",
        "models": [
            {"model": F1, "parameters": {"weight": 0.4}},
            {"model": F3, "parameters": {"weight": 0.6}},
        ],
        "dtype": "float32",
    }
    r["nuslerp_base_rows"] = {  # task vectors from the base, slerped row by row
        "merge_method": "nuslerp",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"weight": 1.0}},
            {"model": F2, "parameters": {"weight": 0.5}},
        ],
        "parameters": {"nuslerp_flatten": False},
        "dtype": "float32",
    }
    r["nuslerp_base_row_wise"] = {  # ... column by column (the vectors along axis 0)
        "merge_method": "nuslerp",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"weight": 0.3}},
            {"model": F3, "parameters": {"weight": 0.7}},
        ],
        "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True},
        "dtype": "float32",
    }
    r["multislerp"] = {
        "merge_method": "multislerp",
        "models": [
            {"model": F1, "parameters": {"weight": 0.5}},
            {"model": F2, "parameters": {"weight": 0.3}},
            {"model": F3, "parameters": {"weight": 0.2}},
        ],
        "dtype": "float32",
    }
    r["multislerp_base_no_normalize"] = {
        "merge_method": "multislerp",
        "base_model": B,
        "models": [
            {"model": F1, "parameters": {"weight": 1.0}},
            {"model": F2, "parameters": {"weight": 0.5}},
            {"model": F3, "parameters": {"weight": [0.1, 0.4]}},
        ],
        "parameters": {"normalize_weights": False},
        "dtype": "float32",
    }
    r["multislerp_bf16_inputs"] = {  # no dtype: the arithmetic runs in bfloat16, as the inputs
        "merge_method": "multislerp",
        "models": [
            {"model": BF1, "parameters": {"weight": 0.6}},
            {"model": BF2, "parameters": {"weight": 0.4}},
        ],
    }
    r["karcher"] = {
        "merge_method": "karcher",
        "models": [{"model": F1}, {"model": F2}, {"model": F3}],
        "dtype": "float32",
    }
    r["karcher_base_iters"] = {  # the base is one more input to karcher; 3 iterations at most
        "merge_method": "karcher",
        "base_model": B,
        "models": [{"model": F1}, {"model": F3}],
        "parameters": {"max_iter": 3, "tol": 1e-4},
        "dtype": "float32",
    }
    # task-vector consensus without weights
    r["sce"] = {
        "merge_method": "sce",
        "base_model": B,
        "models": [{"model": F1}, {"model": F2}, {"model": F3}],
        "dtype": "float32",
    }
    r["sce_select_topk"] = {
        "merge_method": "sce",
        "base_model": B,
        "models": [{"model": F1}, {"model": F2}, {"model": F3}],
        "parameters": {"select_topk": 0.4},
        "dtype": "float32",
    }
    r["ram"] = {  # epsilon near the median |d|: entries changed by 0, 1, 2 or 3 fine-tunes
        "merge_method": "ram",
        "base_model": B,
        "models": [{"model": F1}, {"model": F2}, {"model": F3}],
        "parameters": {"epsilon": 0.003},
        "dtype": "float32",
    }
    r["ramplus_tl"] = {
        "merge_method": "ramplus_tl",
        "base_model": B,
        "models": [{"model": F1}, {"model": F2}, {"model": F3}],
        "parameters": {"epsilon": 0.003, "r": 0.5, "alpha": 0.5},
        "dtype": "float32",
    }
    r["ramplus_tl_defaults"] = {  # r 0.1, alpha 0.2
        "merge_method": "ramplus_tl",
        "base_model": B,
        "models": [{"model": F1}, {"model": F2}],
        "parameters": {"epsilon": 0.004},
        "dtype": "float32",
    }
    # a base and one other model
    r["nearswap"] = {  # t near the median |d|: some entries swapped, some kept, some between
        "merge_method": "nearswap",
        "base_model": B,
        "models": [{"model": F1}],
        "parameters": {"t": 0.003},
        "dtype": "float32",
    }
    r["nearswap_gradient"] = {
        "merge_method": "nearswap",
        "base_model": B,
        "models": [{"model": F3}],
        "parameters": {"t": [0.001, 0.05]},
        "dtype": "float32",
    }
    r["arcee_fusion"] = {
        "merge_method": "arcee_fusion",
        "base_model": B,
        "models": [{"model": F3}],
        "dtype": "float32",
    }
    r["qwen2_arcee_fusion"] = {  # attention biases (1-D: one KL over the whole vector), tied embeddings
        "merge_method": "arcee_fusion",
        "base_model": QB,
        "models": [{"model": Q1}],
        "dtype": "float32",
    }
    return r


# Recipes where modelglue is known to differ from mergekit; the test marks them xfail
# (non-strict) with this reason. Remove an entry once the engine matches.
KNOWN_DIFFERENCES: dict[str, str] = {}  # recipe -> why modelglue differs from mergekit (none now)


def run_mergekit(root: Path, name: str, venv: Path) -> tuple[bool, str, float]:
    cmd = [
        str(venv / "bin" / "mergekit-yaml"), f"{name}.yml", f"mergekit_out/{name}",
        "--no-copy-tokenizer", "--no-write-model-card", "--quiet", "--random-seed", "0",
    ]
    lora_cache = tempfile.mkdtemp(prefix="lora-merge-")  # where mergekit keeps a MODEL+ADAPTER merged
    try:
        ok, err, dt = run_tool(cmd + ["--lora-merge-cache", lora_cache], root, root / "mergekit_out" / name,
                               keep=lambda f: f.suffix == ".safetensors" or f.name in WEIGHT_FILES
                               # written (tokenizer recipes only) despite --no-copy-tokenizer
                               or f.name.startswith("tokenizer"))
    finally:
        shutil.rmtree(lora_cache, ignore_errors=True)
    return ok, " ".join(cmd[1:]) if ok else err, dt


def describe_output(out: Path) -> dict:
    from safetensors import safe_open

    dtypes, n = set(), 0
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(f, "pt") as sf:
            for k in sf.keys():
                dtypes.add(str(sf.get_slice(k).get_dtype()))
                n += 1
    return {"tensors": n, "dtypes": sorted(dtypes)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--mergekit-venv", type=Path, default=MERGEKIT_VENV)
    ap.add_argument("--only", default="", help="comma-separated recipe names (keeps the others)")
    ap.add_argument("--no-models", action="store_true", help="reuse existing models/")
    args = ap.parse_args(argv)
    root: Path = args.out
    root.mkdir(parents=True, exist_ok=True)
    if not (args.mergekit_venv / "bin" / "mergekit-yaml").exists():
        print(f"no mergekit at {args.mergekit_venv}: run bash benchmarks/setup_mergekit_venv.sh", file=sys.stderr)
        return 2
    if not args.no_models and not args.only:
        build_models(root)
    build_bf16_models(root)
    build_tokenizer_models(root, build_base)
    build_lora_adapters(root)
    tok_names = set(tokenizer_recipes())  # their own manifest section: union ids follow hash order in mergekit
    all_r = {**recipes(), **tokenizer_recipes(), **lora_recipes()}
    only = [s for s in args.only.split(",") if s]
    names = only or list(all_r)
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if (only and manifest_path.exists()) else {"recipes": {}, "failed": {}}
    if not only:
        for old in root.glob("*.yml"):
            old.unlink()
        if (root / "mergekit_out").exists():
            shutil.rmtree(root / "mergekit_out")
    mk_version = subprocess.run(
        [str(args.mergekit_venv / "bin" / "python"), "-c",
         "import importlib.metadata as m; print(m.version('mergekit'), m.version('transformers'), m.version('torch'))"],
        capture_output=True, text=True).stdout.split()
    manifest["generator"] = {
        "mergekit": mk_version[0] if mk_version else None,
        "transformers": mk_version[1] if len(mk_version) > 1 else None,
        "torch": mk_version[2] if len(mk_version) > 2 else None,
        "command": "mergekit-yaml RECIPE.yml mergekit_out/NAME --no-copy-tokenizer --no-write-model-card --quiet --random-seed 0 --lora-merge-cache TMP (cwd = this directory)",
    }
    for name in names:
        recipe = all_r[name]
        path = root / f"{name}.yml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None))
        ok, info, dt = run_mergekit(root, name, args.mergekit_venv)
        manifest["recipes"].pop(f"{name}.yml", None)
        manifest.setdefault("tokenizer_recipes", {}).pop(f"{name}.yml", None)
        manifest["failed"].pop(f"{name}.yml", None)
        if ok:
            desc = describe_output(root / "mergekit_out" / name)
            manifest["tokenizer_recipes" if name in tok_names else "recipes"][f"{name}.yml"] = {
                "output": f"mergekit_out/{name}",
                "method": recipe["merge_method"],
                "dtype": recipe.get("dtype"),
                "out_dtype": recipe.get("out_dtype"),
                "randomized": name.startswith("random_"),
                **desc,
            }
            print(f"ok    {name:32s} {dt:5.1f}s {desc}")
        else:
            path.unlink()  # dropped: keep only recipes with a golden output
            manifest["failed"][f"{name}.yml"] = {"recipe": recipe, "error": info}
            print(f"FAIL  {name:32s} {dt:5.1f}s {info}")
    for key, entry in manifest["recipes"].items():
        entry.setdefault("randomized", key.startswith("random_"))
        entry.pop("known_difference", None)
        if key[:-4] in KNOWN_DIFFERENCES:
            entry["known_difference"] = KNOWN_DIFFERENCES[key[:-4]]
    manifest["recipes"] = dict(sorted(manifest["recipes"].items()))
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    if not only:  # the mergekit-moe references (moe/): their own script
        import make_golden_moe

        make_golden_moe.main(["--out", str(root / "moe"), "--mergekit-venv", str(args.mergekit_venv)])
    if not only:  # chat templates and ignored keys: own models, outputs and manifest in chat_templates/
        make_chat_template_goldens(root / "chat_templates", args.mergekit_venv)
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    print(f"golden tree: {total / 1e6:.2f} MB in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
