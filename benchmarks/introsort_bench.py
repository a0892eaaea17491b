"""Following std::sort to the TIES cut (methods/introsort.py) against running the sort.

For each size, magnitudes of one kind (`--magnitudes`), cut descending at `--density`
(moved to the nearest position where equal magnitudes straddle it, as at mergekit's
ambiguous trims). Times `sort_prefix_ties` and `torch.sort(descending=True)` in place (what
the engine falls back to; mergekit's argsort sorts the same way) at the given torch thread
counts, reports the memory each takes beyond the magnitudes (peak RSS sampled every 5 ms,
bytes an entry), and checks that both keep the same tied entries. Magnitudes:

    normal             |N(0, 0.02)| float32: ties are rare (a float32 checkpoint)
    bf16-task-vector   |ft - base| of a bfloat16 base (N(0, 0.02)) and fine-tune (base +
                       0.0004 (shared + own noise), as benchmarks/merge_bench.py builds
                       them), subtracted in bfloat16: few distinct magnitudes, many ties
    levels:K           K equally spaced magnitudes: about n / K tied at the cut

Usage:

    python benchmarks/introsort_bench.py                       # 4.4M and 136M entries, 1 and 2 threads
    python benchmarks/introsort_bench.py --sizes 1000000 --threads 1
    python benchmarks/introsort_bench.py --magnitudes bf16-task-vector --sizes 136134656
"""
from __future__ import annotations

import argparse
import threading
import time

import torch

from modelglue.methods.introsort import follows_torch_sort, sort_prefix_ties


def magnitudes(kind: str, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if kind == "normal":
        return (torch.randn(n, generator=g) * 0.02).abs()
    if kind == "bf16-task-vector":
        base = (0.02 * torch.randn(n, generator=g)).bfloat16()
        ft = (base.float() + 0.0004 * (torch.randn(n, generator=g) + torch.randn(n, generator=g))).bfloat16()
        return (ft - base).abs().float()
    if kind.startswith("levels:"):
        return torch.randint(0, int(kind.split(":")[1]), (n,), generator=g).float() * 1e-4
    raise SystemExit(f"unknown --magnitudes {kind!r}")


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


class PeakRss:
    """Peak RSS above its value at entry, sampled every 5 ms on a thread (Linux)."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = _rss_bytes()
        self.done = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while not self.done:
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self.done = True
        self.thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def extra(self) -> int:
        return self.peak - self.start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4358144,136134656", help="entries (0.5B Llama: an MLP matrix, lm_head)")
    ap.add_argument("--threads", default="1,2", help="torch intra-op thread counts to time")
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--magnitudes", default="normal", help="normal, bf16-task-vector or levels:K (see above)")
    args = ap.parse_args()
    assert follows_torch_sort()
    print(f"magnitudes: {args.magnitudes}")
    print("| entries | tied at the cut | threads | follow s | follow B/entry | sort s | sort B/entry "
          "| speed-up | same tied entries kept |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        mags = magnitudes(args.magnitudes, n)
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            ordered = mags.clone()
            with PeakRss() as sort_rss:
                t0 = time.perf_counter()
                order = torch.empty(n, dtype=torch.int64)
                torch.sort(ordered, descending=True, out=(ordered, order))
                sort_s = time.perf_counter() - t0
            p = int(args.density * n)
            while float(ordered[p - 1]) != float(ordered[p]):  # the next ambiguous cut
                p += 1
            value = float(ordered[p])
            expected = order[:p][ordered[:p] == value].sort().values
            del ordered, order
            scratch = mags.clone()
            with PeakRss() as follow_rss:
                t0 = time.perf_counter()
                followed = sort_prefix_ties(scratch, p, value, True)
                follow_s = time.perf_counter() - t0
            del scratch
            tied = int((mags == value).sum())
            if followed is None:
                print(f"| {n} | n/{n / tied:.1f} | {threads} | refused | | {sort_s:.2f} | "
                      f"{sort_rss.extra / n:.1f} | | |", flush=True)
                continue
            same = torch.equal(followed[0][followed[1]], expected)
            print(f"| {n} | n/{n / tied:.1f} | {threads} | {follow_s:.2f} | {follow_rss.extra / n:.1f} | {sort_s:.2f} "
                  f"| {sort_rss.extra / n:.1f} | {sort_s / follow_s:.1f}x | {same} |", flush=True)


if __name__ == "__main__":
    main()
