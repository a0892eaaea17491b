"""Task-vector merges: task arithmetic, TIES, DARE, breadcrumbs, DELLA.

All share one formula over task vectors d_i = theta_i - base:

    d_i'  = sparsify(d_i)                       (none | top-k | random | outliers | della)
    m     = elect(w_i d_i')                      (TIES sign election, or keep all)
    out   = base + lambda * sum_i m_i w_i d_i' / (sum_i m_i w_i  if normalize else 1)

The named methods differ only in which sparsifier and consensus they use and in their
defaults (mergekit 0.1.5's), declared in methods/__init__.py.

Which entries a sparsifier keeps depends on the whole tensor (a magnitude rank, an L1
norm), but once that is known every output entry depends only on the same entry of the
inputs. So the sparsifiers that can be streamed (top-k, outliers, random) are split in
two: `prepare_keeps` looks at each whole task vector once and returns a `Keep` per
fine-tune; `task_vector_merge` then applies it to any flat slice of the tensors. The
engine streams big tensors through that in chunks; called on whole tensors, the same
function prepares its keeps itself.
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

PREPARE_BYTES = 5 << 29  # memory for task vectors prepared at once (see prepare_keeps)
BLOCK = 1 << 19  # entries per read of |d| and per scan for tied entries: bounds the temporaries
RANDOM_BLOCK = 1 << 19  # DARE draws its random numbers per block of this many entries, seeded by
# (seed, block): the same mask whether a tensor is merged whole or in chunks (aligned to blocks)


def as_rounded(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """x rounded to `dtype` and back (None: x as it is): the values mergekit's 16-bit
    arithmetic holds where this engine computes in float32."""
    return x if dtype is None else x.to(dtype).to(x.dtype)


# ---------------------------------------------------------------- the magnitude cut


@dataclass(frozen=True)
class Cut:
    """A cut with p entries of the magnitudes below it: entry j is below iff m_j < value,
    or m_j == value and j < split (equal magnitudes: the lowest indices first)."""

    value: float
    split: int

    def below(self, mags: torch.Tensor, start: int) -> torch.Tensor:
        """Which entries of mags (the flat slice starting at `start`) lie below the cut."""
        below = mags < self.value
        inside = min(max(self.split - start, 0), mags.numel())
        if inside:
            below[:inside] |= mags[:inside] == self.value
        return below


def magnitude_cut(mags: torch.Tensor, p: int) -> Cut:
    """The cut with exactly p entries of the flat float32 `mags` below it. O(n): the
    value is torch.kthvalue's (3.0 s at 136M entries on 2 cores, where a radix select with
    torch.bincount took 21 s and torch.sort 21 s); among equal magnitudes the lowest
    indices fall below."""
    n = mags.numel()
    if p <= 0 or p >= n:
        return Cut(-math.inf, 0) if p <= 0 else Cut(math.inf, n)
    value = float(torch.kthvalue(mags, p + 1).values)  # the smallest entry not below
    less = int(torch.count_nonzero(mags < value))
    if p == less:
        return Cut(value, 0)
    seen = 0  # find the (p - less)-th entry equal to value, in index order
    for a in range(0, n, BLOCK):
        tied = (mags[a:a + BLOCK] == value).nonzero().flatten()
        if seen + len(tied) >= p - less:
            return Cut(value, a + int(tied[p - less - seen - 1]) + 1)
        seen += len(tied)
    raise AssertionError("unreachable: kthvalue saw more entries equal to its value")


def argsort_prefix(mags: torch.Tensor, k: int, descending: bool) -> torch.Tensor:
    """The entries at the first k positions of torch.argsort(mags, descending), as a bool
    mask: mergekit's choice among equal magnitudes (its TIES keeps the first k of a
    descending argsort, breadcrumbs a range of an ascending one). Leaves mags unchanged."""
    n = mags.numel()
    if k <= 0 or k >= n:
        return torch.full((n,), k > 0, dtype=torch.bool, device=mags.device)
    if mags.device.type == "cpu" and mags.dtype == torch.float32 and not mags.isnan().any() and _follows_torch_sort():
        keys = mags.clone() if descending else -mags  # an ascending sort makes the same moves on -mags
        mask = argsort_prefix_mask(keys.numpy(), k)
        if mask is not None:
            return torch.from_numpy(mask)
    mask = torch.zeros(n, dtype=torch.bool, device=mags.device)
    mask[torch.argsort(mags, descending=descending)[:k]] = True
    return mask


def argsort_prefix_mask(vals: np.ndarray, k: int) -> np.ndarray | None:
    """Which entries of `vals` (float32, no NaN; overwritten) the first k positions of
    torch.argsort(vals, descending=True) hold on a CPU, in O(n) instead of a sort's
    O(n log n); None where std::sort would turn to heapsort (not followed here).

    torch sorts there with libstdc++'s std::sort, an introsort whose partitions decide
    where equal values land. Whether an entry ends in the first k depends only on the
    partitions that contain position k, so this runs those as std::sort does (the median
    of entries 1, mid and last is swapped to the front as pivot p; a left scan stops at
    v <= p, a right scan at v >= p, and they swap until they cross) and drops the other
    side; std::sort ends by insertion-sorting (stably) blocks of 16 or fewer."""
    mask = np.zeros(len(vals), dtype=bool)
    idx = np.arange(len(vals), dtype=np.int32 if len(vals) < 2**31 else np.int64)
    depth = 2 * (len(vals).bit_length() - 1)
    while len(vals) > 16 and 0 < k < len(vals):
        if depth == 0:
            return None
        depth -= 1
        m = len(vals)
        a, b, c = vals[1], vals[m // 2], vals[m - 1]
        s = (m // 2 if b > c else m - 1 if a > c else 1) if a > b else (1 if a > c else m - 1 if b > c else m // 2)
        vals[[0, s]], idx[[0, s]] = vals[[s, 0]], idx[[s, 0]]
        left_stops = np.flatnonzero(vals <= vals[0])[1:]  # [0] is the pivot itself
        right_stops = np.flatnonzero(vals >= vals[0])[:0:-1]
        swaps = bisect.bisect_left(range(min(len(left_stops), len(right_stops))), True,
                                   key=lambda t: left_stops[t] >= right_stops[t])  # pairs that cross
        cut = min(left_stops[swaps] if swaps < len(left_stops) else m, right_stops[swaps - 1] if swaps else m)
        left, right = left_stops[:swaps], right_stops[:swaps]
        if k < cut:  # follow the left part
            vals[left], idx[left] = vals[right], idx[right]
            vals, idx = vals[:cut], idx[:cut]
        else:  # the left part is all in the first k: follow the right part
            idx[left], idx[right] = idx[right], idx[left]
            mask[idx[:cut]] = True
            vals[right] = vals[left]
            vals, idx, k = vals[cut:], idx[cut:], k - cut
    mask[idx[np.argsort(-vals, kind="stable")[:k]]] = True
    return mask


@functools.cache
def _follows_torch_sort() -> bool:
    """Whether argsort_prefix_mask agrees with this torch's CPU sort (it emulates one)."""
    keys = torch.randint(0, 9, (4099,), generator=torch.Generator().manual_seed(0)).float()
    expected = torch.zeros(4099, dtype=torch.bool)
    expected[torch.argsort(keys, descending=True)[:1500]] = True
    return bool(np.array_equal(argsort_prefix_mask(keys.numpy().copy(), 1500), expected.numpy()))


# ---------------------------------------------------------------- sparsifiers as keep rules


@dataclass
class Keep:
    """Which entries of one task vector survive, and the factor survivors are scaled by.
    Either by magnitude (entries not below `low`, below `high`), or at random (`seed`,
    `density`), or by an explicit mask (mergekit's sort order, or a random mask already
    drawn)."""

    low: Cut | None = None
    high: Cut | None = None
    explicit: torch.Tensor | None = None  # flat bool mask over the whole tensor
    seed: int | None = None
    density: float = 1.0
    size: int = 0  # entries in the whole tensor (random keeps draw whole blocks of it)
    scale: torch.Tensor | float | None = None

    def mask(self, delta: torch.Tensor, start: int) -> torch.Tensor:
        """Bool mask of the survivors in `delta`, the flat slice starting at `start`."""
        n = delta.numel()
        if self.explicit is not None:
            return self.explicit[start:start + n]
        if self.seed is not None:
            return random_mask(self.seed, self.density, self.size, start, n, delta.device)
        mags = delta.abs().reshape(-1).float()
        keep = torch.ones(n, dtype=torch.bool, device=delta.device)
        if self.low is not None:
            keep &= ~self.low.below(mags, start)
        if self.high is not None:
            keep &= self.high.below(mags, start)
        return keep

    def apply(self, delta: torch.Tensor, start: int) -> torch.Tensor:
        return self.apply_(delta.clone(), start)

    def apply_(self, delta: torch.Tensor, start: int) -> torch.Tensor:
        """delta * mask (* scale), in place."""
        delta.mul_(self.mask(delta, start).reshape(delta.shape))
        return delta if self.scale is None else delta.mul_(self.scale)


def random_mask(seed: int, density: float, size: int, start: int, n: int, device: torch.device | str) -> torch.Tensor:
    """Entries [start, start + n) of the DARE mask of a tensor of `size` entries: each kept
    with probability `density`, drawn per whole RANDOM_BLOCK from a generator seeded by
    (seed, block), so that any slicing of the tensor sees the same mask."""
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=device)
    parts = []
    for block in range(start // RANDOM_BLOCK, (start + n - 1) // RANDOM_BLOCK + 1):
        b0 = block * RANDOM_BLOCK
        lo, hi = max(start, b0) - b0, min(start + n, b0 + RANDOM_BLOCK) - b0
        g = torch.Generator(device=device)
        g.manual_seed(derive_seed(seed, str(block)))
        parts.append(torch.rand(min(RANDOM_BLOCK, size - b0), generator=g, device=device)[lo:hi] < density)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def derive_seed(seed: int, *keys: str) -> int:
    """A 63-bit seed from a seed and names (tensor, input, block): stable across runs."""
    digest = hashlib.blake2b("\0".join([str(seed), *keys]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def prepare_keep(read: Callable[[int, int], torch.Tensor], n: int, dtype: torch.dtype | None, sparsify: str,
                 density: float, rescale: str | None, gamma: float = 0.01, tie_order: str = "sort",
                 seed: int | None = None) -> Keep | None:
    """The keep rule of one task vector, given `read(start, stop)`: a flat slice of it
    (in `dtype`, or None: whatever read returns). Magnitude sparsifiers keep every |d| of
    the tensor once (float32, as mergekit ranks them); random ones only stream through
    it for the L1 rescale."""
    if density >= 1 or n == 0:
        return None
    if sparsify == "random":
        keep = _random_keep(read, n, density, rescale, seed)
    else:
        keep = _magnitude_keep(read, n, dtype, sparsify, density, rescale, gamma, tie_order)
    if rescale == "density":
        keep.scale = 1 / density if density > 0 else None
    return keep


def _random_keep(read: Callable[[int, int], torch.Tensor], n: int, density: float, rescale: str | None,
                 seed: int | None) -> Keep:
    """prepare_keep for DARE: the L1 rescale needs the whole mask, so it is kept (a byte
    an entry) rather than drawn again."""
    keep = Keep(seed=seed, density=density, size=n)
    if rescale != "l1":
        return keep
    before = after = 0.0  # float32 sums within a block, float64 across blocks
    for a in range(0, n, RANDOM_BLOCK):
        mags = read(a, min(n, a + RANDOM_BLOCK)).abs().float()
        mask = keep.mask(mags, a)
        if keep.explicit is None:
            keep.explicit = torch.empty(n, dtype=torch.bool, device=mask.device)
        keep.explicit[a:a + RANDOM_BLOCK] = mask
        before += float(mags.sum())
        after += float((mags * mask).sum())
    if before >= 1e-7 and after >= 1e-7:
        keep.scale = before / after
    return keep


def _magnitude_keep(read: Callable[[int, int], torch.Tensor], n: int, dtype: torch.dtype | None, sparsify: str,
                    density: float, rescale: str | None, gamma: float, tie_order: str) -> Keep:
    """prepare_keep for the magnitude sparsifiers: cuts of |d| at ranks lo and hi (and
    the L1 rescale); among equal magnitudes, tie_order 'sort' keeps what mergekit's sort
    does (an explicit mask), 'index' the highest indices (streamable cuts)."""
    mags = None
    for a in range(0, n, BLOCK):
        part = read(a, min(n, a + BLOCK))
        if mags is None:
            mags = torch.empty(n, dtype=torch.float32, device=part.device)
        mags[a:a + BLOCK] = part.abs()
    dtype = dtype or part.dtype
    if sparsify == "magnitude":  # TIES: the top density fraction (at least one entry)
        lo, hi = (n - max(1, int(density * n)), n) if density > 0 else (n, n)
    else:  # breadcrumbs: drop the top gamma fraction (outliers) and the smallest, keep density
        kept, n_top = int(density * n), int(gamma * n)
        lo = max(0, n - kept - n_top)
        hi = lo + kept
    if tie_order == "sort":  # mergekit's choice among equal magnitudes: its argsort's
        keep = Keep(explicit=argsort_prefix(mags, n - lo, descending=True) if sparsify == "magnitude"
                    else argsort_prefix(mags, hi, descending=False) & ~argsort_prefix(mags, lo, descending=False))
    else:
        keep = Keep(low=magnitude_cut(mags, lo), high=magnitude_cut(mags, hi) if hi < n else None)
    if rescale == "l1":  # match the L1 norm of the whole task vector, summed as mergekit does
        whole = mags.to(dtype)
        before = whole.sum()
        after = whole.where(keep.mask(whole, 0), 0).sum()
        if before >= 1e-7 and after >= 1e-7:
            keep.scale = before / after
    return keep


def prepare_keeps(read: Callable[[int, int, int], torch.Tensor], n: int, dtype: torch.dtype | None, *,
                  sparsify: str | None, density: list[float] | None, rescale: str | None,
                  gamma: list[float] | None = None, tie_order: str = "sort",
                  seeds: list[int] | None = None) -> list[Keep | None] | None:
    """One keep rule per task vector; read(i, start, stop) is a flat slice of the i-th.
    None when nothing is sparsified this way (no sparsifier, or DELLA's per-row ranks)."""
    if sparsify not in ("magnitude", "magnitude_outliers", "random") or density is None:
        return None
    jobs = [functools.partial(prepare_keep, lambda a, b, i=i: read(i, a, b), n, dtype, sparsify, density[i], rescale,
                              gamma=gamma[i] if gamma else 0.01, tie_order=tie_order, seed=seeds[i] if seeds else None)
            for i in range(len(density))]
    # Task vectors are independent and torch and numpy release the GIL: prepare several at
    # once, as many as cores and PREPARE_BYTES allow. One takes 4 bytes an entry for |d|
    # and up to 25 more for its cut (argsort_prefix: a copy, positions, scans, the mask).
    workers = min(len(jobs), os.cpu_count() or 1, max(1, PREPARE_BYTES // (29 * max(1, n))))
    if workers <= 1:
        return [job() for job in jobs]
    with ThreadPoolExecutor(workers, thread_name_prefix="modelglue-prepare") as pool:
        return list(pool.map(lambda job: job(), jobs))


def _whole(delta: torch.Tensor, sparsify: str, density: float, rescale: str | None, **kwargs) -> torch.Tensor:
    flat = delta.reshape(-1)
    keep = prepare_keep(lambda a, b: flat[a:b], flat.numel(), delta.dtype, sparsify, density, rescale, **kwargs)
    return delta if keep is None else keep.apply(delta, 0)


def magnitude(delta: torch.Tensor, density: float, rescale: str | None = None, tie_order: str = "sort") -> torch.Tensor:
    """TIES trim: keep the top `density` fraction of entries by magnitude (at least one).
    Where equal non-zero magnitudes straddle the cut, tie_order 'sort' keeps the ones
    mergekit's argsort keeps (bit-exact parity; argsort_prefix, O(n)); 'index'
    keeps the highest-index ones (O(n): magnitude_cut)."""
    return _whole(delta, "magnitude", density, rescale, tie_order=tie_order)


def magnitude_outliers(delta: torch.Tensor, density: float, rescale: str | None = None,
                       gamma: float = 0.01, tie_order: str = "sort") -> torch.Tensor:
    """Breadcrumbs: drop the top `gamma` fraction (outliers) and the smallest entries,
    keeping `density` of them. tie_order as for `magnitude` (mergekit orders by an
    ascending sort; 'index' takes equal magnitudes lowest index first)."""
    return _whole(delta, "magnitude_outliers", density, rescale, gamma=gamma, tie_order=tie_order)


def random_drop(delta: torch.Tensor, density: float, rescale: str | None = None, seed: int = 0) -> torch.Tensor:
    """DARE: keep each entry with probability `density` (seeded)."""
    return _whole(delta, "random", density, rescale, seed=seed)


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


def della_magprune(delta: torch.Tensor, density: float, rescale: str | None = None,
                   epsilon: float = 0.15, seed: int = 0) -> torch.Tensor:
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
    generator = torch.Generator(device=delta.device)
    generator.manual_seed(seed)
    mask = torch.bernoulli(probs, generator=generator)
    return _rescale(rows, mask, rescale, density).reshape(delta.shape).to(delta.dtype)


# ---------------------------------------------------------------- consensus


def sign_election_mask(weighted_deltas: torch.Tensor, method: str = "sum") -> torch.Tensor:
    """TIES: elect a sign per entry (sign of the summed, or the majority of, weighted task
    vectors; ties go to +) and keep only the entries that agree with it (zeros never do)."""
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
    seeds: list[int] | None = None,
    tie_order: str = "sort",
    keeps: list[Keep | None] | None = None,
    start: int = 0,
    round_to: torch.dtype | None = None,
) -> torch.Tensor:
    """base + lambda * (elected, weighted, sparsified task vectors), see the module doc.
    With `keeps` (from prepare_keeps) the tensors may be any flat slice of the whole
    ones, starting at entry `start`; without, they are whole and keeps are made here.
    round_to: the 16-bit dtype mergekit computes in (float32 tensors here): the task
    vectors and weighted task vectors, which the trim and the sign election choose by,
    are rounded to it as mergekit's are; the sums after them are not."""
    if not others:
        return base
    if keeps is None:
        flat_base, flat = base.reshape(-1), [t.reshape(-1) for t in others]
        keeps = prepare_keeps(lambda i, a, b: as_rounded(flat[i][a:b] - flat_base[a:b], round_to), base.numel(),
                              base.dtype,
                              sparsify=sparsify, density=density, rescale=rescale, gamma=gamma,
                              tie_order=tie_order, seeds=seeds)
    w = torch.tensor(weight, dtype=round_to or base.dtype, device=base.device).to(base.dtype)
    deltas = _weighted_task_vectors(base, others, w, density, sparsify, rescale, epsilon, seeds, keeps, start,
                                    round_to if consensus else None, round_to)
    mixed = _combine(deltas, w, consensus, normalize, round_to)
    if lambda_ != 1:
        mixed *= lambda_
    return (base + mixed).to(base.dtype)


def _weighted_task_vectors(base: torch.Tensor, others: list[torch.Tensor], w: torch.Tensor, density, sparsify,
                           rescale, epsilon, seeds, keeps, start: int, round_weighted: torch.dtype | None,
                           round_to: torch.dtype | None) -> torch.Tensor:
    """w_i * sparsified(theta_i - base), stacked. In place where mergekit makes temporaries;
    every entry gets the same arithmetic (and mergekit's roundings, see task_vector_merge)."""
    deltas = torch.empty((len(others), *base.shape), dtype=base.dtype, device=base.device)
    for i, theta in enumerate(others):
        d = torch.sub(theta, base, out=deltas[i])
        if round_to is not None:
            d.copy_(d.to(round_to))
        if sparsify == "della":
            d.copy_(della_magprune(d, density[i] if density else 1.0, rescale,
                                   epsilon=epsilon[i] if epsilon else 0.15, seed=seeds[i] if seeds else 0))
        elif keeps is not None and keeps[i] is not None:
            keeps[i].apply_(d, start)
        d.mul_(w[i])  # the weighted task vector w_i d_i'
        if round_weighted is not None:  # the sign election chooses by these, as mergekit rounds them
            d.copy_(d.to(round_weighted))
    return deltas


def _combine(deltas: torch.Tensor, w: torch.Tensor, consensus: str | None, normalize: bool,
             round_to: torch.dtype | None) -> torch.Tensor:
    """Sum of the weighted task vectors (only the entries that agree with the elected sign,
    under a consensus), divided by the sum of their weights when normalizing."""
    if consensus:
        agree = sign_election_mask(deltas, consensus).to(deltas.dtype)
        mixed = deltas.mul_(agree).sum(dim=0)  # sum of the entries that agree
        divisor = agree.mul_(w.reshape(-1, *([1] * (deltas.dim() - 1)))).sum(dim=0)  # sum of their weights
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        if round_to is not None:  # mergekit rounds the sums and the quotient: the quotient of
            mixed.copy_(mixed.to(round_to))  # unrounded ones could be an ulp of the task vector off
            divisor.copy_(divisor.to(round_to))
        mixed /= divisor
        if round_to is not None:
            mixed.copy_(mixed.to(round_to))
    return mixed
