#!/usr/bin/env python3
"""A `tokenizer_source: union` merge of two models whose vocabularies differ, through
modelglue and mergekit 0.1.5 (.venv-mergekit), timed with peak memory, outputs compared.

    .venv/bin/python benchmarks/tokenizer_union_bench.py [--vocab 50000] [--hidden 512]

Builds under a temporary directory two float32 Llama models (2 layers, untied) with
word-level tokenizers: A has `--vocab` tokens; B has the same tokens under shuffled ids
plus 1% more of its own (CodeLlama-style added rows are the small case; a shuffled
vocabulary is the worst case for the permutation). Then runs the same linear recipe
with both tools (wall time and peak RSS from /usr/bin/time) and checks that the outputs
hold the same rows token by token.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]


def build(out: Path, tokens: list[str], hidden: int, seed: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    cfg = AutoConfig.for_model("llama", hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                               num_attention_heads=8, num_key_value_heads=4, vocab_size=len(tokens),
                               tie_word_embeddings=False)
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(out)
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(out)


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    p = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{p.stderr[-2000:]}")
    wall, rss_kb = p.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss_kb) / 1e6


def vocab(d: Path) -> dict[str, int]:
    data = json.loads((d / "tokenizer.json").read_text())
    v = dict(data["model"]["vocab"])
    v.update({e["content"]: e["id"] for e in data["added_tokens"]})
    return v


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--hidden", type=int, default=512)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        tokens = ["<unk>"] + [f"w{i}" for i in range(args.vocab - 1)]
        order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(1)).tolist()
        build(w / "a", tokens, args.hidden, 1)
        build(w / "b", [tokens[i] for i in order] + [f"x{i}" for i in range(args.vocab // 100)], args.hidden, 2)
        (w / "r.yml").write_text("merge_method: linear\nbase_model: a\nmodels:\n  - model: a\n    parameters: {weight: 0.5}\n"
                                 "  - model: b\n    parameters: {weight: 0.5}\ntokenizer_source: union\ndtype: float32\n")
        mg = timed([str(ROOT / ".venv/bin/modelglue"), "merge", "r.yml", "out_mg"], w)
        mk = timed([str(ROOT / ".venv-mergekit/bin/mergekit-yaml"), "r.yml", "out_mk", "--no-write-model-card",
                    "--quiet"], w)
        ours, ref = load_file(w / "out_mg/model.safetensors"), load_file(w / "out_mk/model.safetensors")
        vo, vr = vocab(w / "out_mg"), vocab(w / "out_mk")
        assert set(vo) == set(vr), "different vocabularies"
        toks = list(vr)
        worst = 0.0
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            a, b = ours[name][[vo[t] for t in toks]], ref[name][[vr[t] for t in toks]]
            worst = max(worst, (a - b).abs().max().item())
        print(f"vocab {args.vocab} + {args.vocab // 100} (B shuffled), hidden {args.hidden}: "
              f"output {len(vo)} tokens, rows equal token by token (max diff {worst:.2g})")
        print(f"modelglue merge: {mg[0]:.1f} s, peak RSS {mg[1]:.2f} GB")
        print(f"mergekit-yaml:   {mk[0]:.1f} s, peak RSS {mk[1]:.2f} GB")


if __name__ == "__main__":
    main()
