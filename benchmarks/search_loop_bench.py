"""Search-loop latency: from new merge coefficients to a scored model, in memory vs on disk.

The search scores hundreds of candidates. Each needs the merged weights in a model that
can be evaluated. This measures that step two ways, on the same three checkpoints,
alternating candidate by candidate in one process (the machine's load hits both alike):

  in memory  InMemoryMerger.merge_into(resident model, recipe): the inputs stay loaded,
             tensors whose coefficients changed are recomputed chunk by chunk straight
             into the live model's parameters (what MergeScorer does per candidate);
  disk       modelglue.merge(recipe, tmp) + AutoModelForCausalLM.from_pretrained(tmp)
             (what a search that shells out to a merge tool does).

"ready" is coefficients -> a model holding the merged weights. A fixed stand-in for
scoring (one forward pass over a batch of 8 x 32 tokens) is then timed on each path's
model, and "with scoring" adds it. A floor for "ready" in memory is timed last: the
least memory traffic a candidate needs (each input read once, each parameter written
once), as the cheapest three-input elementwise pass, d = a + b + c, in the same chunks. Every candidate has new coefficients for every
tensor (a linear merge, one weight per model): nothing can be skipped, the worst case
for the in-memory path. Usage:

    python benchmarks/search_loop_bench.py --size 0.5b --repeats 3
    python benchmarks/search_loop_bench.py --size tiny
"""
from __future__ import annotations

import argparse
import importlib
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

merge_module = importlib.import_module("modelglue.merge")  # the module (modelglue.merge is also the function)


def recipe(paths: list[Path], step: int) -> dict:
    w = [1.0 + 0.1 * step, 1.0, 1.0 - 0.05 * step]  # new coefficients every candidate
    return {"merge_method": "linear", "dtype": "float32",
            "models": [{"model": str(p), "parameters": {"weight": wi}} for p, wi in zip(paths, w)]}


def score_stand_in(model: torch.nn.Module, vocab: int) -> float:
    ids = torch.randint(0, vocab, (8, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float(model(ids).logits[:, -1].float().mean())


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def disk_ready(rec: dict, tmp: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    merge(rec, tmp / "m")
    return AutoModelForCausalLM.from_pretrained(tmp / "m", dtype=torch.float32)


def traffic_floor(merger: InMemoryMerger, model: torch.nn.Module, paths: list[Path]) -> tuple[float, int]:
    """(seconds, bytes moved) of d = a + b + c over every parameter, from the merger's
    resident inputs, in its chunks: each input read once and d written once."""
    chunk = merge_module.IN_MEMORY_CHUNK
    moved, t = 0, time.perf_counter()
    with torch.no_grad():
        for name, d in model.state_dict(keep_vars=True).items():
            a, b, c = (merger._resident[(p.resolve(), name)].reshape(-1) for p in paths)  # (a peek, for the floor)
            d = d.data.view(-1)
            for i in range(0, d.numel(), chunk):
                torch.add(a[i:i + chunk], b[i:i + chunk], out=d[i:i + chunk]).add_(c[i:i + chunk])
            moved += 4 * d.numel() * d.element_size()
    return time.perf_counter() - t, moved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="0.5b", choices=list(PRESETS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the search's scorer uses 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    paths = build_checkpoints(args.out / f"models-{args.size}-float32", args.size, "float32")  # as merge_bench
    vocab = PRESETS[args.size]["vocab_size"]
    merger = InMemoryMerger()
    model = AutoModelForCausalLM.from_pretrained(paths[0], dtype=torch.float32)
    first, _ = timed(merger.merge_into, model, recipe(paths, 0))  # the first call reads the inputs once
    mem, disk, mem_score, disk_score = [], [], [], []
    for step in range(1, args.repeats + 1):
        mem.append(timed(merger.merge_into, model, recipe(paths, step))[0])
        mem_score.append(timed(score_stand_in, model, vocab)[0])
        tmp = Path(tempfile.mkdtemp(dir=args.out))
        try:
            seconds, reloaded = timed(disk_ready, recipe(paths, step), tmp)
            disk.append(seconds)
            disk_score.append(timed(score_stand_in, reloaded, vocab)[0])
            same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
            del reloaded
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"candidate {step}: ready in memory {mem[-1]:.2f} s, via disk {disk[-1]:.2f} s; scoring "
              f"{mem_score[-1]:.2f} s / {disk_score[-1]:.2f} s; same weights: {same}", flush=True)
    m, d = statistics.median(mem), statistics.median(disk)
    ms, ds = m + statistics.median(mem_score), d + statistics.median(disk_score)
    print("| size | first in-memory call (reads inputs) | ready: in memory | ready: via disk | ratio "
          "| candidates/min ready: in memory / via disk | with scoring: in memory / via disk | ratio "
          "| candidates/min with scoring |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.size} | {first:.1f} s | {m:.2f} s | {d:.2f} s | **{d / m:.1f}x** | {60 / m:.0f} / {60 / d:.1f} "
          f"| {ms:.2f} s / {ds:.2f} s | {ds / ms:.1f}x | {60 / ms:.1f} / {60 / ds:.1f} |")
    print(f"(medians of {args.repeats} candidates; torch threads {torch.get_num_threads()})")
    floors = [traffic_floor(merger, model, paths) for _ in range(2)]
    seconds, moved = min(f[0] for f in floors), floors[0][1]
    print(f"floor: d = a + b + c over every parameter in memory, {moved / 1e9:.1f} GB read and written: "
          f"{seconds:.2f} s ({moved / seconds / 1e9:.1f} GB/s); ready in memory is {m / seconds:.1f}x it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
