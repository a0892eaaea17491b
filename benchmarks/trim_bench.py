#!/usr/bin/env python3
"""The TIES / breadcrumbs trim on a bfloat16 task vector: modelglue's O(n) emulation of
the CPU argsort (`argsort_prefix`) against the sort mergekit runs, side by side.

    python benchmarks/trim_bench.py [ENTRIES ...]    # default 4358144 136134656 (a 0.5B MLP matrix, the embedding)

A task vector of ENTRIES entries (bfloat16 fine-tune minus bfloat16 base, 0.0004 N on
0.02 N, as merge_bench.py's checkpoints); TIES keeps the top half by magnitude, as
mergekit 0.1.5's `sparsify(..., method="magnitude")` does: `torch.argsort(|d|.float(),
descending=True)[:k]`; breadcrumbs (density 0.9, gamma 0.01) keeps a range of an
ascending argsort. One torch thread, wall seconds, the two alternating (best of
--repeats); the masks are checked identical.
"""
from __future__ import annotations

import argparse
import time

import torch

from modelglue.methods.task_vectors import argsort_prefix


def mergekit_range(mags: torch.Tensor, lo: int, hi: int, descending: bool) -> torch.Tensor:
    mask = torch.zeros(mags.numel(), dtype=torch.bool)
    mask[torch.argsort(mags, descending=descending)[lo:hi]] = True
    return mask


def best_of(fn, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("entries", nargs="*", type=int, default=[4358144, 136134656])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| entries | trim | modelglue s | mergekit's sort s | speed | identical |\n|---:|---|---:|---:|---:|---|")
    for n in args.entries:
        g = torch.Generator().manual_seed(0)
        base = (0.02 * torch.randn(n, generator=g)).bfloat16()
        mags = ((base.float() + 0.0004 * torch.randn(n, generator=g)).bfloat16() - base).abs().float()
        del base
        k, top = n // 2, int(0.01 * n)
        for label, lo, hi, desc in (("ties (top half)", 0, k, True),
                                    ("breadcrumbs", n - int(0.9 * n) - top, n - top, False)):
            ours, theirs = [], []
            for _ in range(args.repeats):  # alternate, so load changes hit both
                ours.append(best_of(lambda: argsort_prefix(mags, hi, desc) & ~argsort_prefix(mags, lo, desc), 1))
                theirs.append(best_of(lambda: mergekit_range(mags, lo, hi, desc), 1))
            t_ours, t_theirs = min(t for t, _ in ours), min(t for t, _ in theirs)
            same = torch.equal(ours[-1][1], theirs[-1][1])
            print(f"| {n:,} | {label} | {t_ours:.2f} | {t_theirs:.2f} | {t_theirs / t_ours:.2f}x | {'yes' if same else 'NO'} |",
                  flush=True)


if __name__ == "__main__":
    main()
