"""Search-loop latency: from new merge coefficients to a scored model, in memory vs on disk.

The search scores hundreds of candidates. Each needs the merged weights in a model that
can be evaluated. This measures that step two ways, on the same three checkpoints:

  in-memory  InMemoryMerger.merge_into(resident model, recipe): inputs stay loaded,
             only the arithmetic runs, weights are copied into the live model;
  disk       modelglue.merge(recipe, tmp) + AutoModelForCausalLM.from_pretrained(tmp).

A fixed stand-in for scoring (one forward pass over a batch of 8 x 32 tokens) follows
both, so the figure is "coefficients -> logits". Usage:

    python benchmarks/search_loop_bench.py --size 0.5b --repeats 3
    python benchmarks/search_loop_bench.py --size tiny
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_bench import PRESETS, build_checkpoints  # noqa: E402  (the same random Llama checkpoints)

from modelglue.merge import InMemoryMerger, merge  # noqa: E402


def recipe(paths: list[Path], step: int) -> dict:
    w = [1.0 + 0.1 * step, 1.0, 1.0 - 0.05 * step]  # new coefficients every candidate
    return {"merge_method": "linear", "dtype": "float32",
            "models": [{"model": str(p), "parameters": {"weight": wi}} for p, wi in zip(paths, w)]}


def score_stand_in(model: torch.nn.Module, vocab: int) -> float:
    ids = torch.randint(0, vocab, (8, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float(model(ids).logits[:, -1].float().mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="0.5b", choices=list(PRESETS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    paths = build_checkpoints(args.out / f"models-{args.size}-float32", args.size, "float32")  # as merge_bench
    vocab = PRESETS[args.size]["vocab_size"]
    merger = InMemoryMerger()
    model = AutoModelForCausalLM.from_pretrained(paths[0], dtype=torch.float32)
    t = time.perf_counter()
    merger.merge_into(model, recipe(paths, 0))  # first call reads the inputs once
    first = time.perf_counter() - t
    mem, disk = [], []
    for step in range(1, args.repeats + 1):
        t = time.perf_counter()
        merger.merge_into(model, recipe(paths, step))
        score_stand_in(model, vocab)
        mem.append(time.perf_counter() - t)
        tmp = Path(tempfile.mkdtemp(dir=args.out))
        try:
            t = time.perf_counter()
            merge(recipe(paths, step), tmp / "m")
            reloaded = AutoModelForCausalLM.from_pretrained(tmp / "m", dtype=torch.float32)
            score_stand_in(reloaded, vocab)
            disk.append(time.perf_counter() - t)
            del reloaded
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    m, d = statistics.median(mem), statistics.median(disk)
    print(f"| {args.size} | {first:.2f} s | {m:.2f} s | {d:.2f} s | {d / m:.1f}x | {60 / m:.0f} | {60 / d:.1f} |")
    print("(columns: size, first in-memory call incl. reading inputs, in-memory per candidate, disk per candidate, "
          "ratio, candidates/min in memory, candidates/min via disk; median of "
          f"{args.repeats}; threads {torch.get_num_threads()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
