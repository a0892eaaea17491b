"""Following std::sort to the TIES cut (methods/introsort.py) against running the sort.

For each size, |N(0, 0.02)| float32 magnitudes, the descending cut at `--density` moved
to the nearest position where equal magnitudes straddle it (as at mergekit's ambiguous
trims). Times `sort_prefix_ties` and `torch.sort(descending=True)` (what mergekit's
argsort runs) at the given torch thread counts, and checks that both keep the same
tied entries. Usage:

    python benchmarks/introsort_bench.py                       # 4.4M and 136M entries, 1 and 2 threads
    python benchmarks/introsort_bench.py --sizes 1000000 --threads 1
"""
from __future__ import annotations

import argparse
import time

import torch

from modelglue.methods.introsort import follows_torch_sort, sort_prefix_ties


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4358144,136134656", help="entries (0.5B Llama: an MLP matrix, lm_head)")
    ap.add_argument("--threads", default="1,2", help="torch intra-op thread counts to time")
    ap.add_argument("--density", type=float, default=0.5)
    args = ap.parse_args()
    assert follows_torch_sort()
    print("| entries | threads | follow s | torch.sort s | speed-up | same tied entries kept |")
    print("|---:|---:|---:|---:|---:|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        mags = (torch.randn(n, generator=torch.Generator().manual_seed(0)) * 0.02).abs()
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            ordered, order = torch.sort(mags.clone(), descending=True)
            sort_s = time.perf_counter() - t0
            p = int(args.density * n)
            while float(ordered[p - 1]) != float(ordered[p]):  # the next ambiguous cut
                p += 1
            value = float(ordered[p])
            expected = order[:p][ordered[:p] == value].sort().values
            del ordered, order
            t0 = time.perf_counter()
            tied, before = sort_prefix_ties(mags.clone(), p, value, True)
            follow_s = time.perf_counter() - t0
            same = torch.equal(tied[before], expected)
            print(f"| {n} | {threads} | {follow_s:.2f} | {sort_s:.2f} | {sort_s / follow_s:.1f}x | {same} |", flush=True)


if __name__ == "__main__":
    main()
