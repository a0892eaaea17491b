"""Merges that work on the weights themselves: linear, slerp, model_stock, passthrough.

Each is a pure function on tensors; formulas and defaults follow mergekit 0.1.5 so that
recipes give the same tensors (see tests/test_mergekit_golden.py).
"""
from __future__ import annotations

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


def slerp(base: torch.Tensor, others: list[torch.Tensor], t: float,
          dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation from base (t=0) to the other model (t=1), treating each
    tensor as one vector; falls back to lerp when the two are nearly colinear."""
    (other,) = others
    dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
    v0, v1 = base.reshape(-1).to(dtype), other.reshape(-1).to(dtype)
    n0, n1 = torch.linalg.vector_norm(v0), torch.linalg.vector_norm(v1)
    n0 = n0 if n0 > eps else torch.ones_like(n0)
    n1 = n1 if n1 > eps else torch.ones_like(n1)
    dot = ((v0 / n0) * (v1 / n1)).sum().clamp(-1, 1)
    if dot.abs() > dot_threshold:
        c0, c1 = 1 - t, t
    else:
        theta = torch.acos(dot)
        c0 = torch.sin((1 - t) * theta) / torch.sin(theta)
        c1 = torch.sin(t * theta) / torch.sin(theta)
    return (c0 * v0 + c1 * v1).reshape(base.shape).to(base.dtype)


def model_stock(base: torch.Tensor, others: list[torch.Tensor], filter_wise: bool = False) -> torch.Tensor:
    """Model Stock (Jang et al. 2024): t = k cos / (1 + (k - 1) cos), where cos is the mean
    pairwise cosine of the fine-tunes' task vectors; result t * mean(theta_i) + (1 - t) * base.
    filter_wise computes cos per output row instead of over the whole tensor."""
    if filter_wise:
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [w.unsqueeze(0) if w.dim() == 1 else w for w in others]
    else:
        w0, ws = base.reshape(-1), [w.reshape(-1) for w in others]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    k = len(ws)
    denom = 1 + (k - 1) * cos
    singular = denom.abs() < 1e-6  # opposing updates: keep the base rather than blow up
    t = torch.where(singular, torch.zeros_like(cos), k * cos / torch.where(singular, torch.ones_like(denom), denom))
    average = sum(ws) / k
    return (t * average + (1 - t) * w0).reshape(base.shape)


def passthrough(tensors: list[torch.Tensor], scale: list[float | None] | None = None) -> torch.Tensor:
    """Copy the single input (layer stacking, depth up-scaling), optionally scaled."""
    (theta,) = tensors
    s = scale[0] if scale else None
    return theta if s is None else theta * s
