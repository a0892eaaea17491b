#!/usr/bin/env python3
"""Where a bfloat16 TIES merge spends its CPU time: the trim's sorts against the chunked
arithmetic, in mergekit's 16-bit arithmetic and in modelglue's default float32 one.

    python benchmarks/ties_16bit_bench.py [ENTRIES]     # default 4358144 (a 0.5B MLP matrix)

One tensor of ENTRIES bfloat16 weights (0.02 N) and two fine-tunes (+ 0.0004 N each, as
merge_bench.py's checkpoints), TIES at density 0.5, weights 0.5, one torch thread. CPU
seconds (process time): prepare_keeps (|d|, the cut, mergekit's sort of the tied cut),
then task_vector_merge over 512K-entry chunks as the engine streams them, second of two
passes.
"""
from __future__ import annotations

import sys
import time

import torch

from modelglue.methods.task_vectors import as_rounded, prepare_keeps, task_vector_merge


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4358144
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    base = (0.02 * torch.randn(n, generator=g)).bfloat16()
    fts = [(base.float() + 0.0004 * torch.randn(n, generator=g)).bfloat16() for _ in range(2)]
    chunk = 1 << 19
    for label, work, round_to in (("16-bit (exact, mergekit's)", torch.bfloat16, None),
                                  ("float32 + mergekit's roundings (default)", torch.float32, torch.bfloat16),
                                  ("float32, no roundings (for scale)", torch.float32, None)):
        b, o = base.to(work), [f.to(work) for f in fts]
        t0 = time.process_time()
        keeps = prepare_keeps(lambda i, a, c: as_rounded(o[i][a:c] - b[a:c], round_to), n, None,
                              sparsify="magnitude", density=[0.5, 0.5], rescale=None)
        prep = time.process_time() - t0
        for _ in range(2):
            t0 = time.process_time()
            for a in range(0, n, chunk):
                out = task_vector_merge(base[a:a + chunk].to(work), [x[a:a + chunk].to(work) for x in fts], [0.5, 0.5],
                                        [0.5, 0.5], sparsify="magnitude", consensus="sum", normalize=True, keeps=keeps,
                                        start=a, round_to=round_to).to(torch.bfloat16)
            arith = time.process_time() - t0
        del out
        print(f"{label}: prepare (trim) {prep:.2f} s CPU, chunked arithmetic {arith:.2f} s CPU", flush=True)


if __name__ == "__main__":
    main()
