"""The tokenizer part of zoo analysis: fingerprints and group links of models whose
tokenizer.json is as large as a real one (Qwen2.5's or Llama-3's: 150k BPE tokens,
7-11 MB). The weights are tiny, so the time is the tokenizer files' parsing.

    .venv/bin/python benchmarks/zoo_tokenizer_bench.py [--tokens 150000] [--models 3] [--repeat 3]

Each model gets the same BPE vocabulary plus one added token of its own, so every model
is its own compatibility group and the group links compare all vocabularies (the most
tokenizer work an analysis does). Prints the best of --repeat runs of each step, wall and CPU time.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from modelglue.io import Checkpoint, save_tensors
from modelglue.zoo.analyze import analyze_zoo
from modelglue.zoo.fingerprint import fingerprint

H = 8


def bpe_vocab(n_tokens: int, seed: int = 0) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level-BPE-like vocabulary of n_tokens: 256 single characters, then merges of
    random earlier tokens (every merge's result is in the vocabulary, as in a trained one)."""
    rng = random.Random(seed)
    tokens = [chr(0x100 + i) if i < 33 else chr(i) for i in range(256)]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    while len(tokens) < n_tokens:
        a, b = tokens[rng.randrange(len(tokens))], tokens[rng.randrange(min(2000, len(tokens)))]
        if a + b not in vocab and len(a + b) < 10:
            vocab[a + b] = len(tokens)
            tokens.append(a + b)
            merges.append((a, b))
    return vocab, merges


def make_model(path: Path, vocab: dict[str, int], merges: list, extra_token: str) -> Path:
    from tokenizers import Tokenizer, models

    path.mkdir(parents=True)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.add_tokens([extra_token])
    tok.save(str(path / "tokenizer.json"))
    rows = tok.get_vocab_size()
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                  "hidden_size": H, "num_hidden_layers": 1, "vocab_size": rows}))
    save_tensors({"model.embed_tokens.weight": torch.zeros(rows, H), "model.layers.0.mlp.up_proj.weight": torch.zeros(H, H),
                  "lm_head.weight": torch.zeros(rows, H)}, path)
    return path


def best(fn, repeat: int) -> str:
    """The best wall and CPU time of `repeat` runs (CPU time: steadier on a shared machine)."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return f"{min(wall):.2f} s wall, {min(cpu):.2f} s CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=150_000)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = bpe_vocab(args.tokens)
        dirs = [make_model(Path(tmp) / f"m{i}", vocab, merges, f"<extra_{i}>") for i in range(args.models)]
        size = (dirs[0] / "tokenizer.json").stat().st_size
        print(f"{args.models} models, tokenizer.json {size / 1e6:.1f} MB each ({args.tokens:,} BPE tokens + 1 added)")
        ckpt = Checkpoint(dirs[0])
        one = best(lambda: fingerprint(ckpt), args.repeat)
        print(f"fingerprint of one model: {one}")
        whole = best(lambda: analyze_zoo(dirs, plots=False), args.repeat)
        print(f"analyze_zoo of {args.models} models (fingerprints, group links, no weights to compare): {whole}")


if __name__ == "__main__":
    main()
