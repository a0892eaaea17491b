"""nuslerp, multislerp and karcher work in reused buffers and cache-sized blocks; in
bfloat16 they must still give, bit for bit, what mergekit's whole-tensor expressions
give (its operations, in its order, each rounding to bfloat16). The references below are
those expressions written plainly; the blocks and the reused buffers are made small so
that every tensor here spans many blocks and comes from the buffers."""
from __future__ import annotations

import pytest
import torch

from modelglue.methods import spherical
from modelglue.methods.spherical import karcher, multislerp, nuslerp


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(spherical, "BLOCK", 256)
    monkeypatch.setattr(spherical, "SCRATCH_MIN", 1000)


def _ref_slerp_last_axis(v0, v1, t, eps=1e-8):
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    spherical_ = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    return torch.where(colinear, (1 - t) * v0 + t * v1, spherical_)


def _ref_nuslerp(base, a, b, w, row_wise=False, flatten=True):
    t = w[1] / sum(w)
    if base is not None:
        a, b = a - base, b - base
    if flatten:
        out = _ref_slerp_last_axis(a.reshape(-1), b.reshape(-1), t).reshape(a.shape)
    elif row_wise:
        out = _ref_slerp_last_axis(a.transpose(0, -1), b.transpose(0, -1), t).transpose(0, -1)
    else:
        out = _ref_slerp_last_axis(a, b, t)
    return out if base is None else base + out


def _ref_multislerp(base, others, weight, normalize=True, eps=1e-8):
    x = torch.stack(others)
    if base is not None:
        x -= base
    flat = x.view(len(others), -1)
    w = torch.tensor(weight, dtype=x.dtype)
    if normalize:
        w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean = mean / torch.norm(mean)
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    step = (tangents * w.view(-1, 1)).sum(0)
    angle = torch.norm(step) + eps
    out = (mean * torch.cos(angle) + step * (torch.sin(angle) / angle)) * (norms.squeeze(-1) * w).sum()
    out = out.view(x.shape[1:])
    return out if base is None else out + base


def _ref_karcher(tensors, max_iter=10, tol=1e-5):
    n = len(tensors)
    norms = [torch.linalg.vector_norm(x.float()) for x in tensors]
    units = [(x / m).to(x.dtype) for x, m in zip(tensors, norms)]
    mean = torch.zeros_like(units[0])
    for u in units:
        mean += (1 / n) * u
    mean = (mean / torch.linalg.vector_norm(mean.float())).to(mean.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for u in units:
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += (1 / n) * (theta / torch.sin(theta)) * (u - dot * mean)
        step = torch.linalg.vector_norm(tangent.float())
        if step.item() < tol:
            break
        mean = (torch.cos(step) * mean + torch.sin(step) * (tangent / step)).to(mean.dtype)
        mean = (mean / torch.linalg.vector_norm(mean.float())).to(mean.dtype)
    return sum((1 / n) * m for m in norms) * mean


def _models(seed, shape=(300, 40), dtype=torch.bfloat16, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g) * 0.02
    return [(base + spread * torch.randn(shape, generator=g) * 0.02).to(dtype) for _ in range(3)]


def _same(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    bits = torch.int32 if got.dtype == torch.float32 else torch.int16
    assert torch.equal(got.view(bits), want.view(bits)), \
        f"{int((got != want).sum())} entries differ, max {float((got.float() - want.float()).abs().max())}"


@pytest.mark.parametrize("flatten,row_wise", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("with_base", [False, True])
def test_nuslerp_is_mergekits_arithmetic(flatten, row_wise, with_base):
    base, a, b = _models(1)
    base = base if with_base else None
    got = nuslerp(base, [a, b], [0.6, 0.4], nuslerp_row_wise=row_wise, nuslerp_flatten=flatten)
    _same(got, _ref_nuslerp(base, a, b, [0.6, 0.4], row_wise, flatten))


def test_nuslerp_colinear_rows_are_lerped_as_mergekit_does():
    _, a, b = _models(2)
    b = b.clone()
    b[::3] = a[::3] * 2  # every third row colinear
    got = nuslerp(None, [a, b], [0.3, 0.7], nuslerp_flatten=False)
    _same(got, _ref_nuslerp(None, a, b, [0.3, 0.7], flatten=False))


@pytest.mark.parametrize("with_base,normalize,count", [(False, True, 3), (True, True, 3), (True, False, 3),
                                                       (False, True, 2), (True, False, 2)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_multislerp_is_mergekits_arithmetic(with_base, normalize, count, dtype):
    base, a, b = _models(3, spread=3.0, dtype=dtype)
    c = _models(4, spread=3.0, dtype=dtype)[1]
    a[:7], b[:5] = -0.0, 0.0  # signed zeros (times a negative weight, +0 is -0): -0 + -0 is -0, a sum from +0 is +0
    others, weight = [a, b, c][:count], [0.5, -0.3, 0.4][:count]
    base = base if with_base else None
    got = multislerp(base, others, weight, normalize_weights=normalize)
    _same(got, _ref_multislerp(base, others, weight, normalize))


def _uneven(seed, dtype=torch.bfloat16):
    """Two close directions and a nearly opposite one: the Karcher mean lies far from the
    Euclidean one, so the iteration takes large steps (the first about 0.67 rad)."""
    g = torch.Generator().manual_seed(seed)
    x, y, z = (torch.randn(300, 40, generator=g) for _ in range(3))
    return [t.to(dtype) for t in (x, x + 0.1 * y, -x + 0.3 * z)]


@pytest.mark.parametrize("inputs,max_iter", [("close", 10), ("uneven", 10), ("uneven", 2)])
def test_karcher_is_mergekits_arithmetic(inputs, max_iter):
    tensors = _models(5) if inputs == "close" else _uneven(5)
    _same(karcher(tensors, max_iter=max_iter), _ref_karcher(tensors, max_iter=max_iter))


def test_results_survive_reuse_of_the_buffers():
    first_inputs, second_inputs = _uneven(6), _uneven(7)
    first = karcher(first_inputs)
    kept = first.clone()
    karcher(second_inputs)
    multislerp(None, second_inputs, [0.2, 0.3, 0.5])
    _same(first, kept)
    _same(karcher(first_inputs), kept)


def test_float32_is_mergekits_arithmetic_too():
    base, a, b = _models(8, dtype=torch.float32, spread=30.0)
    _same_f32 = lambda got, want: torch.equal(got, want)  # noqa: E731
    assert _same_f32(nuslerp(base, [a, b], [0.6, 0.4]), _ref_nuslerp(base, a, b, [0.6, 0.4]))
    assert _same_f32(multislerp(base, [a, b], [0.6, 0.4]), _ref_multislerp(base, [a, b], [0.6, 0.4]))
    assert _same_f32(karcher(_uneven(9, torch.float32)), _ref_karcher(_uneven(9, torch.float32)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows", [2, 3])
def test_row_sums_are_torchs_bit_for_bit(dtype, rows):
    g = torch.Generator().manual_seed(10)
    x = (torch.randn(rows, 5000, generator=g) * torch.exp(torch.randn(rows, 5000, generator=g) * 3)).to(dtype)
    x[:, :100] = -0.0  # all rows -0: the sum is +0
    x[0, 100:200] = -0.0
    _same(spherical._sum_rows(x, out=torch.empty(5000, dtype=dtype)), x.sum(0))
