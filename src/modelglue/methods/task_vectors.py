"""Task-vector merges: task arithmetic, TIES, DARE, breadcrumbs, DELLA.

All share one formula over task vectors d_i = theta_i - base:

    d_i'  = sparsify(d_i)                       (none | top-k | random | outliers | della)
    m     = elect(w_i d_i')                      (TIES sign election, or keep all)
    out   = base + lambda * sum_i m_i w_i d_i' / (sum_i m_i w_i  if normalize else 1)

The named methods differ only in which sparsifier and consensus they use and in their
defaults (mergekit 0.1.5's), declared in methods/__init__.py.
"""
from __future__ import annotations

import torch


# ---------------------------------------------------------------- sparsifiers (keep masks)


def _rescale(delta: torch.Tensor, mask: torch.Tensor, rescale: str | None, density: float) -> torch.Tensor:
    """Masked delta, rescaled: 'l1' matches the L1 norm of the original (mergekit's
    default), 'density' divides by the keep rate (the DARE paper's 1/p)."""
    kept = delta * mask
    if rescale == "density":
        return kept / density if density > 0 else kept
    if rescale == "l1":
        before, after = delta.abs().sum(), kept.abs().sum()
        if before >= 1e-7 and after >= 1e-7:
            return kept * (before / after)
    return kept


def smallest_mask(values: torch.Tensor, r: int) -> tuple[torch.Tensor, bool]:
    """Mask of the r smallest entries of a flat tensor, and whether that choice was
    ambiguous (entries equal to the r-th smallest fall on both sides of the cut; they are
    then taken lowest index first).

    kthvalue finds the threshold in O(n), several times faster than the full sort mergekit
    does on large tensors (the embedding of a 0.5B model has 136M entries).
    """
    n = values.numel()
    if r <= 0 or r >= n:
        return torch.full((n,), r > 0, dtype=torch.bool, device=values.device), False
    threshold = torch.kthvalue(values, r).values
    mask = values <= threshold
    extra = int(mask.sum()) - r
    if extra > 0:  # ties straddle the cut
        tied = (values == threshold).nonzero().flatten()
        mask[tied[len(tied) - extra:]] = False
    return mask, extra > 0


def magnitude(delta: torch.Tensor, density: float, rescale: str | None = None, tie_order: str = "sort",
              **_) -> torch.Tensor:
    """TIES trim: keep the top `density` fraction of entries by magnitude (at least one).
    Where equal magnitudes straddle the cut, tie_order 'sort' keeps the ones mergekit's
    argsort keeps (bit-exact parity, at the cost of one sort of that tensor); 'index'
    keeps the highest-index ones (always O(n))."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    n = delta.numel()
    k = max(1, int(density * n))
    mags = delta.abs().reshape(-1).float()
    dropped, ambiguous = smallest_mask(mags, n - k)
    keep = ~dropped
    if ambiguous and tie_order == "sort":
        keep = torch.zeros(n, dtype=torch.bool, device=delta.device)
        keep[torch.argsort(mags, descending=True)[:k]] = True
    return _rescale(delta, keep.reshape(delta.shape).to(delta.dtype), rescale, density)


def magnitude_outliers(delta: torch.Tensor, density: float, rescale: str | None = None,
                       gamma: float = 0.01, tie_order: str = "sort", **_) -> torch.Tensor:
    """Breadcrumbs: drop the top `gamma` fraction (outliers) and the smallest entries,
    keeping `density` of them; the outlier cut shrinks if needed to keep the density.
    tie_order as for `magnitude` (mergekit orders by an ascending sort)."""
    if density >= 1:
        return delta
    n = delta.numel()
    keep, n_top = int(density * n), int(gamma * n)
    n_bottom = max(0, n - keep - n_top)
    mags = delta.abs().reshape(-1).float()
    upper, amb_hi = smallest_mask(mags, n_bottom + keep)
    lower, amb_lo = smallest_mask(mags, n_bottom)
    window = upper & ~lower
    if (amb_hi or amb_lo) and tie_order == "sort":
        window = torch.zeros(n, dtype=torch.bool, device=delta.device)
        window[torch.sort(mags).indices[n_bottom:n_bottom + keep]] = True
    return _rescale(delta, window.reshape(delta.shape).to(delta.dtype), rescale, density)


def random_drop(delta: torch.Tensor, density: float, rescale: str | None = None,
                generator: torch.Generator | None = None, **_) -> torch.Tensor:
    """DARE: keep each entry with probability `density` (seeded)."""
    if density >= 1:
        return delta
    work = delta.float() if delta.dtype == torch.float16 else delta  # no fp16 bernoulli on CPU
    mask = torch.bernoulli(torch.full_like(work, density), generator=generator)
    return _rescale(work, mask, rescale, density).to(delta.dtype)


def della_magprune(delta: torch.Tensor, density: float, rescale: str | None = None,
                   epsilon: float = 0.15, generator: torch.Generator | None = None, **_) -> torch.Tensor:
    """DELLA: keep probabilities rise linearly with magnitude rank (per row) from
    density - epsilon to density + epsilon, then drop at random (seeded)."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    work = delta.float() if delta.dtype == torch.float16 else delta
    rows = work.unsqueeze(0) if work.dim() < 2 else work
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(rows.dtype) + 1
    lo, hi = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    rank01 = ((ranks - lo) / (hi - lo)).clamp(0, 1)
    probs = (density - epsilon) + rank01 * 2 * epsilon
    mask = torch.bernoulli(probs, generator=generator)
    return _rescale(rows, mask, rescale, density).reshape(delta.shape).to(delta.dtype)


SPARSIFIERS = {
    "magnitude": magnitude,
    "magnitude_outliers": magnitude_outliers,
    "random": random_drop,
    "della": della_magprune,
}


# ---------------------------------------------------------------- consensus


def sign_election_mask(weighted_deltas: torch.Tensor, method: str = "sum") -> torch.Tensor:
    """TIES: elect a sign per entry (sign of the summed, or the majority of, weighted task
    vectors; ties go to +) and keep only the entries that agree with it."""
    signs = weighted_deltas.sign()
    if method == "sum":
        elected = (weighted_deltas.sum(dim=0) >= 0).to(signs.dtype) * 2 - 1
    else:  # "count"
        elected = (signs.sum(dim=0) >= 0).to(signs.dtype) * 2 - 1
    return signs == elected


# ---------------------------------------------------------------- the merge


def task_vector_merge(
    base: torch.Tensor,
    others: list[torch.Tensor],
    weight: list[float],
    density: list[float] | None = None,
    *,
    sparsify: str | None = None,
    consensus: str | None = None,
    normalize: bool = False,
    rescale: str | None = None,
    lambda_: float = 1.0,
    gamma: list[float] | None = None,
    epsilon: list[float] | None = None,
    generators: list[torch.Generator] | None = None,
    tie_order: str = "sort",
) -> torch.Tensor:
    """base + lambda * (elected, weighted, sparsified task vectors), see the module doc."""
    if not others:
        return base
    deltas = torch.empty((len(others), *base.shape), dtype=base.dtype)
    for i, theta in enumerate(others):
        d = theta - base
        if sparsify:
            d = SPARSIFIERS[sparsify](
                d, density[i] if density else 1.0, rescale,
                gamma=gamma[i] if gamma else 0.01, epsilon=epsilon[i] if epsilon else 0.15,
                generator=generators[i] if generators else None, tie_order=tie_order,
            )
        deltas[i] = d
    w = torch.tensor(weight, dtype=deltas.dtype).reshape(-1, *([1] * base.dim()))
    deltas.mul_(w)
    if consensus:
        mask = sign_election_mask(deltas, consensus).to(deltas.dtype)
        mixed = (deltas * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lambda_ != 1:
        mixed *= lambda_
    return (base + mixed).to(base.dtype)
