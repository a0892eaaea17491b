"""Merges that work on the weights themselves: linear, slerp, model_stock, passthrough.

Each is a pure function on tensors; formulas and defaults follow mergekit 0.1.5 so that
recipes give the same tensors (see tests/test_mergekit_golden.py).
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def linear(tensors: list[torch.Tensor], weight: list[float], normalize: bool = True, *,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i w_i theta_i, divided by sum_i w_i when normalize (Model Soups / Wortsman et al.).
    `out`: where to write it (of the inputs' dtype, float32 or float64), e.g. a live parameter."""
    acc_dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    out = torch.mul(tensors[0].to(acc_dtype), weight[0], out=out)  # = 0 + w_0 theta_0, exactly as an add into zeros
    for theta, w in zip(tensors[1:], weight[1:]):
        out.add_(theta.to(acc_dtype), alpha=w)
    if normalize:
        out.div_(sum(weight))
    return out.to(tensors[0].dtype)


def slerp_prepare(read: Callable[[int, int, int], torch.Tensor], shape: tuple[int, ...], base_index: int,
                  num_inputs: int, *, t: float, dot_threshold: float = 0.9995, eps: float = 1e-8):
    """The coefficients (c0, c1) of slerp, from the norms of the whole flattened tensors
    (read(i, start, stop): a fresh flat slice of input i) and the cosine between them,
    each reduced over the whole tensor as mergekit does (float32 sums are not
    associative, so reducing block by block would change the last bits)."""
    n = math.prod(shape)
    v0, v1 = _work(read(base_index, 0, n)), _work(read(1 - base_index, 0, n))
    n0, n1 = torch.linalg.vector_norm(v0), torch.linalg.vector_norm(v1)
    n0 = n0 if n0 > eps else torch.ones_like(n0)
    n1 = n1 if n1 > eps else torch.ones_like(n1)
    dot = v0.div_(n0).mul_(v1.div_(n1)).sum().clamp(-1, 1)  # ((v0 / n0) * (v1 / n1)).sum(), in place
    del v0, v1
    if dot.abs() > dot_threshold:  # nearly colinear: plain lerp
        return 1 - t, t
    theta = torch.acos(dot)
    return torch.sin((1 - t) * theta) / torch.sin(theta), torch.sin(t * theta) / torch.sin(theta)


def slerp(base: torch.Tensor, others: list[torch.Tensor], t: float, *, state=None, start: int = 0) -> torch.Tensor:
    """Spherical interpolation from base (t=0) to the other model (t=1), treating each
    tensor as one vector: c0 base + c1 other with c0 = sin((1-t) theta) / sin theta,
    c1 = sin(t theta) / sin theta, theta the angle between them; falls back to lerp
    when the two are nearly colinear. `state`: (c0, c1) of the whole tensors."""
    (other,) = others
    if state is None:
        state = slerp_prepare(_reader([base, other]), tuple(base.shape), 0, 2, t=t)
    c0, c1 = state
    return (c0 * _work(base) + c1 * _work(other)).to(base.dtype)


def model_stock_prepare(read: Callable[[int, int, int], torch.Tensor], shape: tuple[int, ...], base_index: int,
                        num_inputs: int, *, filter_wise: bool = False,
                        keep_inputs: bool = False) -> tuple[torch.Tensor, int]:
    """Model Stock's interpolation ratio t = k cos / (1 + (k - 1) cos), cos the mean
    pairwise cosine of the fine-tunes' task vectors: one t, or with filter_wise one per
    output row. Norms and dots are reduced over whole tensors as mergekit does (the task
    vectors are made in place in the fresh buffers `read` returns, or beside them with
    keep_inputs). Returns (t, the number of entries that share one t)."""
    n = math.prod(shape)
    view = (shape if len(shape) >= 2 else (1, n)) if filter_wise else (n,)
    base = read(base_index, 0, n)
    subtract = torch.sub if keep_inputs else torch.Tensor.sub_
    offsets = [subtract(read(i, 0, n), base).reshape(view) for i in range(num_inputs) if i != base_index]
    del base
    norms = [torch.norm(o, dim=-1) for o in offsets]
    cosines = []
    for i, a in enumerate(offsets):
        for j in range(i + 1, len(offsets)):
            # a * offsets[j], in place into a at its last use (no further pair reads it)
            product = a.mul_(offsets[j]) if j == len(offsets) - 1 else a * offsets[j]
            cosines.append((product.sum(dim=-1) / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1))
    k = len(offsets)
    del offsets
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    denom = 1 + (k - 1) * cos
    singular = denom.abs() < 1e-6  # opposing updates: keep the base rather than blow up
    t = torch.where(singular, torch.zeros_like(cos), k * cos / torch.where(singular, torch.ones_like(denom), denom))
    return t.reshape(-1), view[-1] if filter_wise else n


def model_stock(base: torch.Tensor, others: list[torch.Tensor], filter_wise: bool = False, *,
                state: tuple[torch.Tensor, int] | None = None, start: int = 0) -> torch.Tensor:
    """Model Stock (Jang et al. 2024): t * mean(theta_i) + (1 - t) * base, with t from
    the geometry of the task vectors (model_stock_prepare); filter_wise: one t per output
    row. On a flat slice beginning at entry `start`, `state` holds the whole tensors' t."""
    if state is None:
        state = model_stock_prepare(_reader([base, *others]), tuple(base.shape), 0, 1 + len(others),
                                    filter_wise=filter_wise)
    t, per_t = state
    if t.numel() > 1:  # one t per row: pick each entry's
        t = t[torch.arange(start, start + base.numel(), device=t.device) // per_t].reshape(base.shape)
    t = t.to(base.device)
    average = sum(others) / len(others)
    return t * average + (1 - t) * base


def _work(x: torch.Tensor) -> torch.Tensor:
    """slerp computes in float32 (float64 stays float64), as mergekit does."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _reader(tensors: list[torch.Tensor]) -> Callable[[int, int, int], torch.Tensor]:
    """read(i, start, stop) over whole tensors: fresh copies, which prepare may change."""
    flat = [x.reshape(-1) for x in tensors]
    return lambda i, a, b: flat[i][a:b].clone()


def passthrough(tensors: list[torch.Tensor], scale: list[float | None] | None = None) -> torch.Tensor:
    """Copy the single input (layer stacking, depth up-scaling), optionally scaled."""
    (theta,) = tensors
    s = scale[0] if scale else None
    return theta if s is None else theta * s
