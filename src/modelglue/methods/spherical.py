"""Merges on the hypersphere: nuslerp, multislerp, karcher.

Each treats a whole tensor (or each of its rows) as one vector, so each needs whole
tensors: norms and angles are taken over all of a tensor's entries. Formulas, defaults
and edge cases follow mergekit 0.1.5 (see tests/test_mergekit_golden.py).

Every torch operation is mergekit's, on the same values and in its operand order (a
float32 0-d tensor times a bfloat16 tensor rounds the scalar first; the reverse does
not), so 16-bit results agree with mergekit's bit for bit (tests/test_spherical_exact.py):
each reduction runs on a whole tensor of mergekit's shape (torch's order of summation),
and each elementwise step rounds as mergekit's does. Where mergekit makes a new tensor
for each step, these write into a few buffers, reused across tensors (_empty), or run
on blocks that stay in cache without torch's thread pool (_blocks): new memory costs
more in page faults than the arithmetic on it, and on a busy machine each hand-off to
the pool waits a time slice (BENCHMARKS.md, "spherical methods in bfloat16").
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch

from modelglue.errors import ModelGlueError
from modelglue.io.buffers import BufferPool

BLOCK = 1 << 14  # entries an elementwise step handles at once: see _blocks


# Tensors of at least SCRATCH_MIN entries come from buffers reused across calls (so across
# a merge's tensors), up to SCRATCH_BYTES in all, kept for the life of the process: new
# memory is page-faulted in, which costs more than the arithmetic (a new 151936 x 896
# bfloat16 tensor: 0.1-0.7 s to fill on a shared 2-core machine, 0.02-0.05 s reused).
SCRATCH_MIN, SCRATCH_BYTES = 1 << 20, 3 << 30
_SCRATCH = BufferPool(SCRATCH_BYTES)


def _empty(shape: torch.Size | tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised tensor on like's device (in like's dtype unless given), from the
    scratch buffers when large and on the CPU; a buffer is reused once its tensors are gone."""
    dtype = dtype or like.dtype
    n = math.prod(shape)
    if like.device.type != "cpu" or n < SCRATCH_MIN:
        return torch.empty(shape, dtype=dtype, device=like.device)
    return _SCRATCH.take(n * dtype.itemsize).view(dtype).view(shape)


def _blocks(x: torch.Tensor, size: int = BLOCK) -> list:
    """Slices along x's first axis of about `size` entries each (a 0-d tensor: all of it).
    BLOCK is below torch's grain size (at::internal::GRAIN_SIZE, 32,768): an operation
    on that many entries runs on the calling thread, and stays in cache for the next
    one. Larger ones go to torch's thread pool, whose hand-off waits a whole time slice
    when the other cores are busy (65,536-entry blocks ran 5-25x slower than 16,384 on
    a loaded 2-core machine)."""
    if x.dim() == 0:
        return [...]
    step = max(1, size * x.shape[0] // max(1, x.numel()))
    return [slice(i, i + step) for i in range(0, x.shape[0], step)]


def _at(c: torch.Tensor, rows: slice) -> torch.Tensor:
    """The part of a per-row coefficient (keepdim shape) that broadcasts against x[rows]."""
    return c[rows] if c.dim() and c.shape[0] > 1 else c


def slerp_rows(v0: torch.Tensor, v1: torch.Tensor, t: float, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of each vector along `dim` of v0 towards the same vector of
    v1: (sin((1-t) theta) v0 + sin(t theta) v1) / sin theta, theta the angle between
    them; vectors with 1 - cos^2 theta <= eps^2 (colinear) are lerped instead."""
    n0 = torch.norm(v0, dim=dim, keepdim=True).clamp(min=1e-7)
    n1 = torch.norm(v1, dim=dim, keepdim=True).clamp(min=1e-7)
    out = _empty(v0.shape, v0)  # first the products u0 * u1, summed; then the result
    for rows in _blocks(v0):
        torch.mul(v0[rows] / _at(n0, rows), v1[rows] / _at(n1, rows), out=out[rows])
    cos = torch.sum(out, dim=dim, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))  # colinear vectors get a finite stand-in angle, replaced below
    c0, c1, sin = torch.sin((1 - t) * theta), torch.sin(t * theta), torch.sin(theta)
    lerp_some = bool(colinear.any())
    for rows in _blocks(v0):
        x, y, o = v0[rows], v1[rows], out[rows]
        torch.mul(x, _at(c0, rows), out=o).add_(y * _at(c1, rows)).div_(_at(sin, rows))
        if lerp_some:
            torch.where(_at(colinear, rows), (1 - t) * x + t * y, o, out=o)
    return out


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
        a, b = torch.sub(a, base, out=_empty(a.shape, a)), torch.sub(b, base, out=_empty(b.shape, b))
    if nuslerp_flatten:
        out = slerp_rows(a.reshape(-1), b.reshape(-1), t).reshape(a.shape)
    else:  # row_wise: mergekit's vectors along axis -1 of the transpose are those along axis 0
        out = slerp_rows(a, b, t, dim=0 if nuslerp_row_wise else -1)
    return out if base is None else out.add_(base)


def multislerp(base: torch.Tensor | None, others: list[torch.Tensor], weight: list[float],
               normalize_weights: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Weighted barycentre on the hypersphere (Goddard's multislerp): the inputs (or their
    task vectors from `base`) as unit vectors, mapped to the tangent space at their
    weighted mean direction m, averaged there with weights w (divided by sum w when
    normalize_weights), mapped back by exp_m, and scaled to the weighted mean norm.
    A single model is returned as it is."""
    if len(others) == 1:
        return others[0]
    k, shape = len(others), others[0].shape
    flat = [x.reshape(-1) for x in others]
    units = _empty((k, flat[0].numel()), flat[0])  # first the inputs (task vectors), stacked
    mean, products = _empty(flat[0].shape, flat[0]), _empty(units.shape, units)
    cols = _blocks(mean, BLOCK // k)  # column blocks: a block of every input at once
    for c in cols:
        for i in range(k):
            if base is None:
                units[i, c].copy_(flat[i][c])
            else:
                torch.sub(flat[i][c], base.reshape(-1)[c], out=units[i, c])
    w = torch.tensor(weight, dtype=units.dtype, device=units.device)
    w = (w / w.sum() if normalize_weights else w).view(-1, 1)
    norms = torch.norm(units, dim=-1, keepdim=True)
    lengths = norms + eps
    for c in cols:  # unit vectors, in place, and their weighted mean
        _sum_rows(torch.mul(units[:, c].div_(lengths), w, out=products[:, c]), out=mean[c])
    mean_norm = torch.norm(mean)
    if mean_norm < eps:  # no mean direction: the weighted units cancel
        return _multislerp_fallback(base, others, w)
    for c in cols:
        torch.mul(units[:, c], mean[c].div_(mean_norm), out=products[:, c])
    dots = products.sum(-1, keepdim=True)
    for c in cols:  # the log maps (to first order), weighted and summed: into units[0]
        tangents = torch.sub(units[:, c], torch.mul(dots, mean[c], out=products[:, c]), out=products[:, c])
        _sum_rows(tangents.mul_(w), out=units[0, c])
    step = units[0]
    angle = torch.norm(step) + eps
    cos, sinc, scale = torch.cos(angle), torch.sin(angle) / angle, (norms.squeeze(-1) * w.view(-1)).sum()
    for c in cols:  # exp map back to the sphere, scaled (into mean)
        out = mean[c].mul_(cos).add_(step[c].mul_(sinc)).mul_(scale)
        if base is not None:
            out.add_(base.reshape(-1)[c])
    return mean.view(shape)


def _sum_rows(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """x.sum(0) for [k, n], bit for bit. Torch sums 16-bit rows in float32 from +0, row by
    row, and rounds once: for two rows that is their 16-bit add, plus 0 (for -0 + -0),
    3-4x faster than its reduction over the outer axis."""
    if x.dtype in (torch.bfloat16, torch.float16) and x.shape[0] == 2 and x.device.type == "cpu":
        return torch.add(x[0], x[1], out=out).add_(0.0)
    return torch.sum(x, 0, out=out)


def _multislerp_fallback(base: torch.Tensor | None, others: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """mergekit's answer when the weighted unit vectors cancel: for a pair, the weighted
    sum (of the task vectors, plus the base); for more, an error."""
    if len(others) != 2:
        raise ModelGlueError("multislerp: the weighted mean of the inputs' directions is zero (antipodal "
                             "inputs whose weights balance); change the weights")
    x0, x1 = others if base is None else (others[0] - base, others[1] - base)
    out = x0 * w[0, 0] + x1 * w[1, 0]
    return out if base is None else out + base


def karcher(tensors: list[torch.Tensor], max_iter: int = 10, tol: float = 1e-5) -> torch.Tensor:
    """The Karcher (Riemannian) mean of the inputs' directions, equal weights 1/n, times
    their mean norm. Fixed-point iteration from the normalised Euclidean mean:
    m <- exp_m(sum_i a_i log_m(u_i)), for at most max_iter steps or until the step is
    below tol. Inputs with norm <= tol have no direction and are left out of the mean
    (their norms still count in the scale); all of them: zero."""
    if len(tensors) == 1:
        return tensors[0]
    norm = _Norm(tensors[0])
    alphas = [1.0 / len(tensors)] * len(tensors)
    norms = [norm(x) for x in tensors]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    a = [alphas[i] / sum(alphas[i] for i in valid) for i in valid]
    u = [_empty(tensors[i].shape, tensors[i]) for i in valid]  # the unit vectors
    mean, tmp = _empty(u[0].shape, u[0]), _empty(u[0].shape, u[0])
    for c in _blocks(mean):
        m = mean[c].zero_()
        for i, ai, ui in zip(valid, a, u):
            m += torch.mul(torch.div(tensors[i][c], norms[i], out=ui[c]), ai, out=tmp[c])
    mean_norm = norm(mean)
    if mean_norm.item() < tol:
        mean.copy_(u[0])
    else:
        _divide(mean, mean_norm)
    tangent = _empty(mean.shape, mean)
    # torch.dot runs on one thread in 16 bits (its own kernel): the inputs' dots run side by
    # side. In 32 and 64 bits it is BLAS's, whose sums depend on the calling thread's settings.
    half = mean.dtype in (torch.bfloat16, torch.float16) and mean.device.type == "cpu"
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        for _ in range(max_iter):
            dots = (pool.map if half else map)(lambda ui: torch.clamp(torch.dot(mean.flatten(), ui.flatten()), -1.0, 1.0), u)
            thetas = [(torch.arccos(d), d, ai, ui) for d, ai, ui in zip(dots, a, u)]
            terms = [(ai * (theta / torch.sin(theta)), ui, d) for theta, d, ai, ui in thetas
                     if theta.item() >= tol]  # u_i (nearly) at the mean: log_m(u_i) ~ 0, theta / sin theta is 0/0
            if not terms or not _karcher_step(mean, terms, tangent, tmp, norm, tol):
                break
    out = _empty(mean.shape, mean)
    scale = sum(ai * n for ai, n in zip(alphas, norms))
    for c in _blocks(mean):
        torch.mul(scale, mean[c], out=out[c])
    return out


def _karcher_step(mean: torch.Tensor, terms: list, tangent: torch.Tensor, tmp: torch.Tensor, norm: "_Norm",
                  tol: float) -> bool:
    """mean <- exp_mean(tangent), tangent = sum_i a_i log_mean(u_i) from `terms` (a_i theta_i
    / sin theta_i, u_i, cos theta_i), then back onto the sphere; False (mean unchanged)
    when the step is below tol."""
    for c in _blocks(mean):
        tv = tangent[c].zero_()
        for coef, ui, d in terms:
            tv += torch.mul(coef, torch.sub(ui[c], torch.mul(d, mean[c], out=tmp[c]), out=tmp[c]), out=tmp[c])
    step = norm(tangent)
    if step.item() < tol:
        return False
    cos, sin = torch.cos(step), torch.sin(step)
    for c in _blocks(mean):
        exp_step = torch.mul(sin, torch.div(tangent[c], step, out=tmp[c]), out=tmp[c])
        torch.mul(cos, mean[c], out=mean[c]).add_(exp_step)
    length = norm(mean)
    if length.item() > tol:  # back onto the sphere against rounding drift
        _divide(mean, length)
    return True


def _divide(x: torch.Tensor, n: torch.Tensor) -> None:
    """x /= n in place, block by block."""
    for c in _blocks(x):
        x[c].div_(n)


class _Norm:
    """vector_norm(x.to(float32)) (float64 stays float64) as mergekit takes it, through one
    buffer reused for every tensor of this shape instead of a new copy each time."""

    def __init__(self, like: torch.Tensor):
        acc = torch.float64 if like.dtype == torch.float64 else torch.float32
        self.buffer = None if like.dtype == acc else _empty(like.shape, like, acc)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.buffer is None:
            return torch.linalg.vector_norm(x)
        for c in _blocks(x):
            self.buffer[c].copy_(x[c])
        return torch.linalg.vector_norm(self.buffer)
