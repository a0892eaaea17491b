#!/usr/bin/env python3
"""LoRA inputs and extract-lora on a mid-sized synthetic Llama (no download).

Builds (once, under --root) a float32 Llama-shaped checkpoint, a fine-tune of it, a
rank-16 PEFT LoRA on every linear weight, and the model with that LoRA merged in (by
modelglue itself, as the reference). Then, each in its own process so that peak RSS
is the command's own:

1. `modelglue merge` of a linear recipe over (BASE+LORA, FT) against the same recipe
   over (MERGED, FT): wall time and peak RSS, and whether the outputs are identical;
2. `modelglue extract-lora BASE FT --rank 16`: wall time and peak RSS.

    .venv/bin/python benchmarks/lora_bench.py [--root /tmp/lora-bench] [--layers 8]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
MODELGLUE = str(ROOT / ".venv" / "bin" / "modelglue")


def build(root: Path, layers: int, hidden: int, inter: int, vocab: int, rank: int) -> None:
    if (root / "merged" / "model.safetensors").exists():
        return
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": hidden // 64,
           "num_key_value_heads": hidden // 64, "vocab_size": vocab, "tie_word_embeddings": False}
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,)})
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}self_attn.{m}.weight"] = (hidden, hidden)
        shapes.update({p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter)})
    base = {n: 0.02 * torch.randn(s, generator=g) for n, s in shapes.items()}
    ft = {n: t + 0.002 * torch.randn(t.shape, generator=g) for n, t in base.items()}
    lora = {}
    for n, t in base.items():
        if t.ndim == 2 and ".layers." in n:
            m = n[: -len(".weight")]
            lora[f"base_model.model.{m}.lora_A.weight"] = 0.01 * torch.randn(rank, t.shape[1], generator=g)
            lora[f"base_model.model.{m}.lora_B.weight"] = 0.01 * torch.randn(t.shape[0], rank, generator=g)
    for name, sd in (("base", base), ("ft", ft)):
        (root / name).mkdir(parents=True, exist_ok=True)
        save_file(sd, root / name / "model.safetensors")
        (root / name / "config.json").write_text(json.dumps(cfg))
    (root / "lora").mkdir(exist_ok=True)
    save_file(lora, root / "lora" / "adapter_model.safetensors")
    (root / "lora" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank}))
    run([MODELGLUE, "merge", _recipe(root, "identity", [f"{root}/base+{root}/lora"]), str(root / "merged"), "-q", "--overwrite"])


def _recipe(root: Path, name: str, models: list[str]) -> str:
    path = root / f"{name}.yml"
    weights = [1.0] if len(models) == 1 else [0.5, 0.5]
    path.write_text(json.dumps({"merge_method": "linear", "dtype": "float32",
                                "models": [{"model": m, "parameters": {"weight": w}} for m, w in zip(models, weights)]}))
    return str(path)


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS of the child in GiB)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0, int(p.stderr.strip().splitlines()[-1]) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/lora-bench"))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=16000)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    root = args.root
    build(root, args.layers, args.hidden, args.intermediate, args.vocab, args.rank)
    size = (root / "base" / "model.safetensors").stat().st_size / 2**30
    print(f"model: {size:.2f} GiB float32 ({args.layers} layers, hidden {args.hidden}); LoRA rank {args.rank} "
          f"on every linear weight ({(root / 'lora' / 'adapter_model.safetensors').stat().st_size / 2**20:.1f} MiB)")
    rows = {}
    for label, first in (("merged copy + ft", str(root / "merged")), ("base+lora + ft", f"{root}/base+{root}/lora")):
        out = root / ("out_" + label.split()[0].replace("+", "_"))
        rows[label] = run([MODELGLUE, "merge", _recipe(root, "r_" + out.name, [first, str(root / "ft")]), str(out),
                           "-q", "--overwrite"])
        print(f"merge linear, {label:18s}: {rows[label][0]:6.1f} s, peak RSS {rows[label][1]:.2f} GiB")
    a, b = (root / "out_merged" / "model.safetensors").read_bytes(), (root / "out_base_lora" / "model.safetensors").read_bytes()
    print(f"outputs identical: {a == b}")
    wall, rss = run([MODELGLUE, "extract-lora", str(root / "base"), str(root / "ft"), str(root / "extracted"),
                     "--rank", str(args.rank), "-q", "--overwrite"])
    print(f"extract-lora rank {args.rank}: {wall:6.1f} s, peak RSS {rss:.2f} GiB")


if __name__ == "__main__":
    main()
