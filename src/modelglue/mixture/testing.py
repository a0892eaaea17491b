"""Tiny expert models for tests and benchmarks (untrained, built in milliseconds).

All share the demo zoo's char-level tokenizer, so they can be mixed at every level.
"""
from __future__ import annotations

from pathlib import Path

import torch


def make_tiny_expert(out: str | Path, arch: str = "llama", seed: int = 0, like: str | Path | None = None,
                     noise: float = 0.0, hidden_size: int = 32, num_layers: int = 2,
                     intermediate_size: int = 64, tie_word_embeddings: bool = False,
                     vocab_seed: int | None = None) -> Path:
    """An HF directory with a random tiny model: `arch` llama | mistral | qwen2 | qwen3.
    With `like`, copy that model's weights and add `noise` * N(0, 1) to every tensor
    (a stand-in for a fine-tune of it). With `vocab_seed`, the characters get shuffled
    ids: another tokenizer over the same text (for experts that do not share one)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from modelglue.demo.train import BOS, EOS, PAD, build_tokenizer, save_tokenizer

    out = Path(out)
    tok = build_tokenizer(vocab_seed)
    torch.manual_seed(seed)
    if like is not None:
        model = AutoModelForCausalLM.from_pretrained(like)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * torch.randn_like(p))
    else:
        extra = {"head_dim": hidden_size // 4} if arch == "qwen3" else {}
        cfg = AutoConfig.for_model(
            arch, vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
            num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
            tie_word_embeddings=tie_word_embeddings, **extra)
        model = AutoModelForCausalLM.from_config(cfg)
        with torch.no_grad():  # a larger init than HF's 0.02, so experts differ visibly
            for name, p in model.named_parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 0.2)
    model.save_pretrained(out)
    save_tokenizer(tok, out)
    model.generation_config.save_pretrained(out)
    return out
