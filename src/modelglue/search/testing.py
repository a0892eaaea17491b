"""Small random model families for tests and benchmarks of the search (no training).

`random_family(out, n)` writes a base and n perturbed copies as ordinary Hugging Face
directories (the demo's char tokenizer), in about a second. Scores of such models on
real tasks are ~0; pair them with `WeightDistanceScorer` to exercise strategies.
"""
from __future__ import annotations

from pathlib import Path

import torch

SIZE = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)


def random_family(out: str | Path, n: int = 3, *, spread: float = 0.05, size: dict | None = None,
                  seed: int = 0) -> list[Path]:
    """[base, ft0, ..., ft{n-1}] under `out`; each ft is the base plus Gaussian noise
    of relative size `spread`. Existing directories are reused."""
    from modelglue.demo.train import build_tokenizer, make_model, save_model

    out = Path(out)
    paths = [out / "base"] + [out / f"ft{i}" for i in range(n)]
    if all((p / "config.json").is_file() for p in paths):
        return paths
    tok = build_tokenizer()
    base = make_model("llama", size or SIZE, seed)
    save_model(base, tok, paths[0])
    for i, path in enumerate(paths[1:]):
        g = torch.Generator().manual_seed(seed * 1000 + 100 + i)
        model = make_model("llama", size or SIZE, seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * spread * p.detach().std().clamp_min(1e-3))
        save_model(model, tok, path)
    return paths
