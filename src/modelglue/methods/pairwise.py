"""Merges of a base with one other model: nearswap, arcee_fusion.

Formulas and defaults follow mergekit 0.1.5 (see tests/test_mergekit_golden.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nearswap(base: torch.Tensor, others: list[torch.Tensor], t: float) -> torch.Tensor:
    """NearSwap: move each entry of base towards the other model by w = clamp(t / |base -
    other|, 0, 1): entries that differ by at most t take the other's value, entries far
    apart stay near the base (|base - other| is clamped to at least 1e-6)."""
    (other,) = others
    w = (t / (base - other).abs().clamp(min=1e-6)).clamp(min=0, max=1)
    return w * other + (1 - w) * base


def quantiles(x: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """The entries of x at positions floor(q (n - 1)) of its ascending order (mergekit's
    quantile rule), found with torch.kthvalue: exact and O(n) at any size."""
    flat = x.reshape(-1)
    n = flat.numel()
    return [torch.kthvalue(flat, int(q * (n - 1)) + 1).values for q in qs]


def arcee_fusion(base: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
    """Arcee Fusion: take the other model's value only where it matters, that is where
    importance = |other - base| * KL(softmax(other) || softmax(base)) (KL per row, over
    the last axis, both softmaxes + 1e-8) reaches the outlier cut median + 1.5 IQR of
    the tensor's importances; elsewhere keep the base."""
    (other,) = others
    p, q = F.softmax(other, dim=-1) + 1e-8, F.softmax(base, dim=-1) + 1e-8
    kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    importance = (other - base).abs() * kl
    q1, median, q3 = quantiles(importance, (0.25, 0.5, 0.75))
    return base + (other - base) * (importance >= median + 1.5 * (q3 - q1))
