"""Task-vector merges weighted by the task vectors themselves: SCE, RAM, RAM+ (tensor-local).

No per-model weights: SCE weighs each task vector d_i = theta_i - base by its energy
and keeps the entries where the fine-tunes vary most; RAM averages an entry only over
the fine-tunes that change it. Formulas, defaults and edge cases follow mergekit 0.1.5
(see tests/test_mergekit_golden.py).
"""
from __future__ import annotations

import torch

from modelglue.methods.task_vectors import sign_election_mask


def top_variance_mask(deltas: torch.Tensor, fraction: float) -> torch.Tensor:
    """SCE's select: 1 on the `fraction` of entries (of those with non-zero variance)
    where the task vectors vary most across the fine-tunes, else 0 (deltas' dtype)."""
    if fraction <= 0:
        return torch.zeros_like(deltas[0])
    if fraction >= 1:
        return torch.ones_like(deltas[0])
    var = torch.var(deltas, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * fraction)  # a float32 product, as mergekit rounds it
    mask = torch.zeros_like(var)
    if k > 0:
        mask.view(-1)[torch.topk(var.abs().view(-1), k=k, largest=True).indices] = 1
    return mask


def sce(base: torch.Tensor, others: list[torch.Tensor], select_topk: float = 1.0, int8_mask: bool = False) -> torch.Tensor:
    """SCE (Select, Calculate, Erase; Wan et al. 2024): keep the top `select_topk` of
    entries by variance across the d_i; weigh each d_i by its mean square over the sum
    of them (equal weights if that sum is ~0); erase entries whose sign disagrees with
    sign(sum_i d_i); base + weighted mean of what is left. int8_mask only changes
    mergekit's mask dtype, not the result."""
    if not others:
        return base
    deltas = torch.stack([theta - base for theta in others])
    if select_topk < 1:
        deltas = deltas * top_variance_mask(deltas, select_topk).unsqueeze(0)
    agree = sign_election_mask(deltas, "sum")
    energy = deltas.square().reshape(len(others), -1).mean(dim=1)
    total = torch.sum(energy).item()
    w = torch.ones_like(energy) / len(others) if abs(total) < 1e-6 else energy / total
    kept = w.reshape(-1, *[1] * base.dim()) * agree
    return base + (deltas * kept).sum(dim=0) / torch.sum(kept, dim=0).clamp(min=1e-6)


def _active(base: torch.Tensor, others: list[torch.Tensor], epsilon: float):
    """Flat task vectors (rows), which entries each changes (|d| > epsilon), and per
    entry how many fine-tunes change it."""
    deltas = torch.stack([theta - base for theta in others]).view(len(others), -1)
    active = deltas.abs() > epsilon
    return deltas, active, active.sum(dim=0, keepdim=True)


def ram(base: torch.Tensor, others: list[torch.Tensor], epsilon: float = 1e-5) -> torch.Tensor:
    """RAM (Reinforced Agent Merging): per entry, the mean of the task vectors that change
    it (|d_i| > epsilon) - an entry only one fine-tune changes keeps that change in full
    instead of being divided by the number of fine-tunes."""
    if not others:
        return base
    deltas, active, count = _active(base, others, epsilon)
    deltas = deltas * active
    merged = (deltas * (count == 1) + deltas * (count > 1) / count.clamp(min=1)).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


def ramplus_tl(base: torch.Tensor, others: list[torch.Tensor], r: float = 0.1, alpha: float = 0.2,
               epsilon: float = 1e-5) -> torch.Tensor:
    """RAM+ (tensor-local): RAM, with each fine-tune's unique entries scaled up by
    1 + r * min(rho_i, alpha), rho_i = (its entries shared with another fine-tune) /
    (its unique entries), counted over the whole tensor."""
    if not others:
        return base
    deltas, active, count = _active(base, others, epsilon)
    shared, unique = count > 1, count == 1
    rho = (active & shared).sum(dim=1) / (active & unique).sum(dim=1).clamp(min=epsilon)
    # 0/0 only for a task vector with no active entry (and epsilon 0): it adds nothing either way
    boost = 1 + r * torch.nan_to_num(rho).clamp(min=0, max=alpha)
    deltas = deltas * active
    merged = (deltas * unique * boost.unsqueeze(-1) + deltas * shared / count.clamp(min=1)).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)
