"""Memory for reads that is used again instead of asked afresh from the OS.

A merge reads the same few tensor sizes hundreds of times. Each fresh buffer of more
than glibc's mmap threshold is new pages from the kernel: a page fault and a zeroed
page every 4 KB before the read can copy a byte into it, then unmapped again when the
tensor dies. `BufferPool` keeps read buffers and hands one out again once nothing
refers to it any more; `keep_freed_memory` asks glibc to do the same for the
arithmetic's temporaries. Together they took model_stock at 0.5B from 1.7 million page
faults to 0.5 million, and from 7.2 s to 6.0 s (BENCHMARKS.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading

import torch

# Reference count of a tensor's storage; private to torch (there since 2.0), so the pool
# degrades to plain allocation where it is missing rather than guess.
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _use_count(block: torch.Tensor) -> int:
    return _storage_use_count(block.untyped_storage()._cdata)  # type: ignore[misc]


class BufferPool:
    """Byte buffers of up to `max_bytes` in all, each handed out again once every tensor
    made from it (views included) is gone: `take(n)` returns a uint8 tensor of n bytes
    whose contents are undefined. Thread-safe. Beyond max_bytes, or without torch's
    storage reference counts, it allocates plainly."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._blocks: list[tuple[torch.Tensor, int]] = []  # (block, its use count when idle)
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(block.numel() for block, _ in self._blocks)

    def take(self, nbytes: int) -> torch.Tensor:
        if _storage_use_count is None or nbytes > self.max_bytes:
            return torch.empty(nbytes, dtype=torch.uint8)
        with self._lock:  # the view is made before the lock is released: no one else can pick the block
            idle = [(block, count) for block, count in self._blocks if _use_count(block) == count]
            fitting = [block for block, _ in idle if block.numel() >= nbytes]
            if fitting:
                return min(fitting, key=torch.Tensor.numel)[:nbytes]
            # Make room by dropping idle blocks too small for this request, smallest first.
            for block, count in sorted(idle, key=lambda bc: bc[0].numel()):
                if self.nbytes + nbytes <= self.max_bytes:
                    break
                self._blocks.remove((block, count))
            if self.nbytes + nbytes > self.max_bytes:
                return torch.empty(nbytes, dtype=torch.uint8)
            block = torch.empty(nbytes, dtype=torch.uint8)
            self._blocks.append((block, _use_count(block)))
            return block[:nbytes]


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's largest (64-bit): bigger blocks are always mapped afresh
TRIM_THRESHOLD = 64 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed blocks up to 32 MB (chunks, temporaries) from its heaps,
    and to keep up to 64 MB free at a heap's top, instead of handing them back to the OS
    and faulting zeroed pages in again for the next chunk. By default its thresholds
    adapt to the largest block freed so far, and trim at twice that: a stream of 2 MB
    chunks freed on other threads kept trimming and refaulting. Once per process;
    False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # Setting either threshold turns glibc's adaptation off, so both are set.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
