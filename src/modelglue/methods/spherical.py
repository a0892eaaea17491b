"""Merges on the hypersphere: nuslerp, multislerp, karcher.

Each treats a whole tensor (or each of its rows) as one vector, so each needs whole
tensors: norms and angles are taken over all of a tensor's entries. Formulas, defaults
and edge cases follow mergekit 0.1.5 (see tests/test_mergekit_golden.py); the torch
reductions are the ones mergekit uses, so float32 results agree bit for bit.
"""
from __future__ import annotations

import torch

from modelglue.errors import ModelGlueError


def slerp_rows(v0: torch.Tensor, v1: torch.Tensor, t: float, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of each row (last axis) of v0 towards the same row of v1:
    (sin((1-t) theta) v0 + sin(t theta) v1) / sin theta, theta the angle between the
    rows; rows with 1 - cos^2 theta <= eps^2 (colinear) are lerped instead."""
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))  # colinear rows get a finite stand-in angle, replaced below
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    return torch.where(colinear, (1 - t) * v0 + t * v1, spherical)


def nuslerp(base: torch.Tensor | None, others: list[torch.Tensor], weight: list[float],
            nuslerp_row_wise: bool = False, nuslerp_flatten: bool = True) -> torch.Tensor:
    """Slerp between two models at t = w_2 / (w_1 + w_2) (0.5 when the weights sum to
    ~0), or between their task vectors from `base`, added back to it. The vectors are
    the whole flattened tensor (nuslerp_flatten, the default), else each row, or with
    nuslerp_row_wise each column (the vectors along axis 0)."""
    a, b = others
    total = sum(weight)
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total
    if base is not None:
        a, b = a - base, b - base
    if nuslerp_flatten:
        out = slerp_rows(a.reshape(-1), b.reshape(-1), t)
    elif nuslerp_row_wise:
        out = slerp_rows(a.transpose(0, -1), b.transpose(0, -1), t).transpose(0, -1)
    else:
        out = slerp_rows(a, b, t)
    out = out.reshape(a.shape)
    return out if base is None else base + out


def multislerp(base: torch.Tensor | None, others: list[torch.Tensor], weight: list[float],
               normalize_weights: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Weighted barycentre on the hypersphere (Goddard's multislerp): the inputs (or their
    task vectors from `base`) as unit vectors, mapped to the tangent space at their
    weighted mean direction m, averaged there with weights w (divided by sum w when
    normalize_weights), mapped back by exp_m, and scaled to the weighted mean norm.
    A single model is returned as it is."""
    if len(others) == 1:
        return others[0]
    x = torch.stack(others)
    if base is not None:
        x -= base
    flat = x.view(len(others), -1)
    w = torch.tensor(weight, dtype=x.dtype, device=x.device)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:  # no mean direction: the weighted units cancel
        if len(others) != 2:
            raise ModelGlueError("multislerp: the weighted mean of the inputs' directions is zero (antipodal "
                                 "inputs whose weights balance); change the weights")
        out = x[0] * w[0] + x[1] * w[1]  # mergekit's fallback for a pair: the weighted sum
        return out if base is None else out + base
    mean = mean / mean_norm
    tangent = units - (units * mean).sum(-1, keepdim=True) * mean  # log map, to first order
    step = (tangent * w.view(-1, 1)).sum(0)
    angle = torch.norm(step) + eps
    out = mean * torch.cos(angle) + step * (torch.sin(angle) / angle)  # exp map back to the sphere
    out = (out * (norms.squeeze(-1) * w).sum()).view(x.shape[1:])
    return out if base is None else out + base


def karcher(tensors: list[torch.Tensor], max_iter: int = 10, tol: float = 1e-5) -> torch.Tensor:
    """The Karcher (Riemannian) mean of the inputs' directions, equal weights 1/n, times
    their mean norm. Fixed-point iteration from the normalised Euclidean mean:
    m <- exp_m(sum_i a_i log_m(u_i)), for at most max_iter steps or until the step is
    below tol. Inputs with norm <= tol have no direction and are left out of the mean
    (their norms still count in the scale); all of them: zero."""
    if len(tensors) == 1:
        return tensors[0]
    acc = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32  # norms in float32 at least
    alphas = [1.0 / len(tensors)] * len(tensors)
    norms = [torch.linalg.vector_norm(x.to(acc)) for x in tensors]
    units = [torch.zeros_like(x) if n.item() == 0.0 else (x / n).to(x.dtype) for x, n in zip(tensors, norms)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    total = sum(alphas[i] for i in valid)
    a = [alphas[i] / total for i in valid]
    u = [units[i] for i in valid]
    mean = torch.zeros_like(u[0])
    for ai, ui in zip(a, u):
        mean += ai * ui
    mean_norm = torch.linalg.vector_norm(mean.to(acc))
    mean = u[0].clone() if mean_norm.item() < tol else (mean / mean_norm).to(mean.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for ai, ui in zip(a, u):
            cos = torch.clamp(torch.dot(mean.flatten(), ui.flatten()), -1.0, 1.0)
            theta = torch.arccos(cos)
            if theta.item() < tol:  # u_i is (nearly) at the mean: log_m(u_i) ~ 0, and theta / sin theta is 0/0
                continue
            tangent += ai * (theta / torch.sin(theta)) * (ui - cos * mean)  # log_m(u_i)
        step = torch.linalg.vector_norm(tangent.to(acc))
        if step.item() < tol:
            break
        mean = (torch.cos(step) * mean + torch.sin(step) * (tangent / step)).to(mean.dtype)  # exp_m(tangent)
        length = torch.linalg.vector_norm(mean.to(acc))
        if length.item() > tol:  # back onto the sphere against rounding drift
            mean = (mean / length).to(mean.dtype)
    return sum(ai * n for ai, n in zip(alphas, norms)) * mean
