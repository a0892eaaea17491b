"""Merges that work on the weights themselves: linear, slerp, model_stock, passthrough.

Each is a pure function on tensors; formulas and defaults follow mergekit 0.1.5 so that
recipes give the same tensors (see tests/test_mergekit_golden.py).
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def linear(tensors: list[torch.Tensor], weight: list[float], normalize: bool = True) -> torch.Tensor:
    """sum_i w_i theta_i, divided by sum_i w_i when normalize (Model Soups / Wortsman et al.)."""
    acc_dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    out = torch.mul(tensors[0].to(acc_dtype), weight[0])  # = 0 + w_0 theta_0, exactly as an add into zeros
    for theta, w in zip(tensors[1:], weight[1:]):
        out.add_(theta.to(acc_dtype), alpha=w)
    if normalize:
        out.div_(sum(weight))
    return out.to(tensors[0].dtype)


STATS_BLOCK = 1 << 22  # entries per block when slerp / model_stock sum over a whole tensor


def _blocks(n: int):
    return ((a, min(n, a + STATS_BLOCK)) for a in range(0, n, STATS_BLOCK))


def slerp_prepare(read: Callable[[int, int, int], torch.Tensor], shape: tuple[int, ...], base_index: int,
                  num_inputs: int, *, t: float, dot_threshold: float = 0.9995, eps: float = 1e-8) -> tuple[float, float]:
    """The two coefficients of slerp, from the norms and the dot product of the whole
    tensors (read(i, start, stop): a flat slice of input i)."""
    n00 = n11 = n01 = 0.0
    for a, b in _blocks(math.prod(shape)):  # float32 sums within a block, float64 across blocks
        v0, v1 = read(base_index, a, b).float(), read(1 - base_index, a, b).float()
        n00, n11, n01 = n00 + float((v0 * v0).sum()), n11 + float((v1 * v1).sum()), n01 + float((v0 * v1).sum())
    n0, n1 = math.sqrt(n00), math.sqrt(n11)
    n0, n1 = (n0 if n0 > eps else 1.0), (n1 if n1 > eps else 1.0)
    dot = min(1.0, max(-1.0, n01 / (n0 * n1)))
    if abs(dot) > dot_threshold:  # nearly colinear: plain lerp
        return 1 - t, t
    theta = math.acos(dot)
    return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)


def slerp(base: torch.Tensor, others: list[torch.Tensor], t: float, *, state: tuple[float, float] | None = None,
          start: int = 0) -> torch.Tensor:
    """Spherical interpolation from base (t=0) to the other model (t=1), treating each
    tensor as one vector: c0 base + c1 other with c0 = sin((1-t) theta) / sin theta,
    c1 = sin(t theta) / sin theta, theta the angle between them; falls back to lerp
    when the two are nearly colinear. `state`: (c0, c1) of the whole tensors."""
    (other,) = others
    if state is None:
        state = slerp_prepare(_reader([base, other]), tuple(base.shape), 0, 2, t=t)
    c0, c1 = state
    dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
    return (c0 * base.to(dtype) + c1 * other.to(dtype)).to(base.dtype)


def model_stock_prepare(read: Callable[[int, int, int], torch.Tensor], shape: tuple[int, ...], base_index: int,
                        num_inputs: int, *, filter_wise: bool = False) -> tuple[torch.Tensor, int]:
    """Model Stock's interpolation ratio t = k cos / (1 + (k - 1) cos), cos the mean
    pairwise cosine of the fine-tunes' task vectors, from sums over the whole tensors:
    one t, or with filter_wise one per output row. Returns (t, row length)."""
    n = math.prod(shape)
    rows = shape[0] if filter_wise and len(shape) >= 2 else 1
    cols = n // rows
    others = [i for i in range(num_inputs) if i != base_index]
    k = len(others)
    dots = torch.zeros(k, k, rows, dtype=torch.float64)
    step = max(1, STATS_BLOCK // cols) * cols if rows > 1 else STATS_BLOCK  # whole rows per block
    for a in range(0, n, step):
        b = min(n, a + step)
        w0 = read(base_index, a, b).float()
        offsets = [(read(i, a, b).float() - w0).reshape(-1, cols if rows > 1 else b - a) for i in others]
        for i in range(k):
            for j in range(i, k):  # float32 sums within a block, float64 across blocks
                dot = (offsets[i] * offsets[j]).sum(dim=1).double().cpu()
                dots[i, j, a // cols:b // cols] += dot if rows > 1 else dot.sum()
    norms = dots.diagonal().sqrt().T  # [k, rows]
    cos = torch.stack([(dots[i, j] / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1)
                       for i in range(k) for j in range(i + 1, k)]).mean(dim=0)
    denom = 1 + (k - 1) * cos
    singular = denom.abs() < 1e-6  # opposing updates: keep the base rather than blow up
    t = torch.where(singular, torch.zeros_like(cos), k * cos / torch.where(singular, torch.ones_like(denom), denom))
    return t, cols


def model_stock(base: torch.Tensor, others: list[torch.Tensor], filter_wise: bool = False, *,
                state: tuple[torch.Tensor, int] | None = None, start: int = 0) -> torch.Tensor:
    """Model Stock (Jang et al. 2024): t * mean(theta_i) + (1 - t) * base, with t from
    the geometry of the task vectors (model_stock_prepare); filter_wise: one t per output
    row. On a flat slice beginning at entry `start`, `state` holds the whole tensors' t."""
    if state is None:
        state = model_stock_prepare(_reader([base, *others]), tuple(base.shape), 0, 1 + len(others),
                                    filter_wise=filter_wise)
    t, cols = state
    t = t.to(device=base.device, dtype=base.dtype)
    if t.numel() > 1:  # one t per row: pick each entry's
        t = t[torch.arange(start, start + base.numel(), device=base.device) // cols].reshape(base.shape)
    average = sum(others) / len(others)
    return t * average + (1 - t) * base


def _reader(tensors: list[torch.Tensor]) -> Callable[[int, int, int], torch.Tensor]:
    flat = [x.reshape(-1) for x in tensors]
    return lambda i, a, b: flat[i][a:b]


def passthrough(tensors: list[torch.Tensor], scale: list[float | None] | None = None) -> torch.Tensor:
    """Copy the single input (layer stacking, depth up-scaling), optionally scaled."""
    (theta,) = tensors
    s = scale[0] if scale else None
    return theta if s is None else theta * s
