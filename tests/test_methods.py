"""Each merge method against its formula, computed independently in numpy (float64)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modelglue.errors import ModelGlueError
from modelglue.methods import REGISTRY, get_method
from modelglue.methods.basic import linear, model_stock, passthrough, slerp
from modelglue.methods.task_vectors import magnitude, magnitude_outliers, random_drop, task_vector_merge

rng = np.random.default_rng(0)
BASE = rng.normal(size=(16, 12))
FTS = [BASE + 0.1 * rng.normal(size=BASE.shape) for _ in range(3)]
T = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731


def close(a: torch.Tensor, b: np.ndarray, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(a.double().numpy(), b, atol=tol, rtol=0)


def test_registry_has_every_required_method():
    # mergekit 0.1.5's twenty methods (mergekit/merge_methods/registry.py)
    required = {"linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
                "breadcrumbs_ties", "della", "della_linear", "model_stock", "passthrough", "nuslerp", "multislerp",
                "karcher", "sce", "nearswap", "arcee_fusion", "ram", "ramplus_tl"}
    assert required <= set(REGISTRY)


def test_unknown_method_suggests_a_name():
    with pytest.raises(ModelGlueError, match="did you mean 'ties'"):
        get_method("tie")


def test_linear_normalized_and_not():
    w = [0.2, 0.3, 0.9]
    expected = sum(wi * f for wi, f in zip(w, FTS))
    close(linear([T(f) for f in FTS], w, normalize=False), expected)
    close(linear([T(f) for f in FTS], w, normalize=True), expected / sum(w))


def _slerp_reference(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    va, vb = a.ravel(), b.ravel()
    cos = np.dot(va / np.linalg.norm(va), vb / np.linalg.norm(vb))
    omega = np.arccos(np.clip(cos, -1, 1))
    out = (np.sin((1 - t) * omega) * va + np.sin(t * omega) * vb) / np.sin(omega)
    return out.reshape(a.shape)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_slerp_matches_formula(t):
    other = rng.normal(size=BASE.shape)  # far from colinear
    close(slerp(T(BASE), [T(other)], t), _slerp_reference(BASE, other, t))


def test_slerp_colinear_falls_back_to_lerp():
    out = slerp(T(BASE), [T(2 * BASE)], 0.25)
    close(out, 0.75 * BASE + 0.25 * 2 * BASE)


def test_task_arithmetic():
    w, lam = [0.5, 1.0, -0.3], 0.7
    expected = BASE + lam * sum(wi * (f - BASE) for wi, f in zip(w, FTS))
    close(task_vector_merge(T(BASE), [T(f) for f in FTS], w, lambda_=lam), expected)


def _trim(d: np.ndarray, density: float) -> np.ndarray:
    k = max(1, int(density * d.size))
    thresh_idx = np.argsort(-np.abs(d).ravel(), kind="stable")[:k]
    mask = np.zeros(d.size)
    mask[thresh_idx] = 1
    return d * mask.reshape(d.shape)


def test_ties_matches_trim_elect_disjoint_mean():
    w, dens = [1.0, 0.5, 0.8], [0.5, 0.3, 0.7]
    deltas = np.stack([wi * _trim(f - BASE, di) for wi, f, di in zip(w, FTS, dens)])
    elected = np.where(deltas.sum(0) >= 0, 1.0, -1.0)
    agree = np.sign(deltas) == elected
    num = (deltas * agree).sum(0)
    den = (np.array(w)[:, None, None] * agree).sum(0)
    den[den == 0] = 1
    expected = BASE + num / den
    out = get_method("ties")([T(BASE)] + [T(f) for f in FTS], 0,
                             {"normalize": True, "rescale": False, "rescale_mode": "l1", "lambda": 1.0, "int8_mask": False,
                              "tie_order": "sort"},
                             [{}] + [{"weight": wi, "density": di} for wi, di in zip(w, dens)])
    close(out, expected)


def test_magnitude_keeps_top_density_fraction():
    d = T(FTS[0] - BASE)
    out = magnitude(d, 0.25)
    kept = out != 0
    assert int(kept.sum()) == int(0.25 * d.numel())
    assert d.abs()[kept].min() >= d.abs()[~kept].max()


def test_breadcrumbs_drops_outliers_and_small_values():
    d = T(FTS[0] - BASE)
    n = d.numel()
    out = magnitude_outliers(d, density=0.5, gamma=0.1)
    order = np.argsort(np.abs(d.numpy()).ravel())
    n_top, keep = int(0.1 * n), int(0.5 * n)
    n_bottom = n - keep - n_top
    expected = np.zeros(n)
    idx = order[n_bottom:n_bottom + keep]
    expected[idx] = d.numpy().ravel()[idx]
    close(out, expected.reshape(d.shape))


def test_dare_is_seeded_keeps_density_and_rescales():
    d = T(rng.normal(size=(200, 200)))
    a, b = random_drop(d, 0.3, "density", seed=7), random_drop(d, 0.3, "density", seed=7)
    assert torch.equal(a, b) and not torch.equal(a, random_drop(d, 0.3, "density", seed=8))
    kept = a != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01
    close(a[kept], (d[kept] / 0.3).double().numpy())  # the DARE paper's 1/p rescale
    l1 = random_drop(d, 0.3, "l1", seed=1)
    assert abs(l1.abs().sum().item() - d.abs().sum().item()) / d.abs().sum().item() < 1e-4  # mergekit's L1 rescale


def test_della_keeps_large_magnitudes_more_often():
    d = T(rng.normal(size=(64, 512)))
    m = get_method("della")
    out = m.fn(T(np.zeros((64, 512))), [d], weight=[1.0], density=[0.5], normalize=False, rescale=False,
               rescale_mode="l1", lambda_=1.0, int8_mask=False, epsilon=[0.3],
               seeds=[0])
    kept = (out != 0).double()
    big = d.abs() > d.abs().median(dim=1, keepdim=True).values
    assert kept[big].mean() > kept[~big].mean() + 0.15  # keep-probability rises with rank
    assert abs(kept.mean().item() - 0.5) < 0.02


def test_della_rejects_bad_epsilon_before_writing_anything(tmp_path):
    from pathlib import Path

    from modelglue.merge import merge

    models = Path(__file__).parent / "data" / "mergekit_golden" / "models"
    recipe = {"merge_method": "della", "base_model": str(models / "llama_base"),
              "models": [{"model": str(models / "llama_ft1"), "parameters": {"weight": 1.0, "density": 0.9, "epsilon": 0.2}}]}
    with pytest.raises(ModelGlueError, match="epsilon"):
        merge(recipe, tmp_path / "out", seed=0)
    assert not (tmp_path / "out").exists()


def test_model_stock_formula():
    offsets = [f - BASE for f in FTS]
    cos = np.mean([np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b)
                   for i, a in enumerate(offsets) for b in offsets[i + 1:]])
    k = len(FTS)
    t = k * cos / (1 + (k - 1) * cos)
    expected = t * np.mean(FTS, axis=0) + (1 - t) * BASE
    close(model_stock(T(BASE), [T(f) for f in FTS]), expected)


def test_passthrough_copies_and_scales():
    close(passthrough([T(BASE)]), BASE)
    close(passthrough([T(BASE)], [0.5]), 0.5 * BASE)


def test_ties_at_the_trim_cut_follow_mergekit_sort_order_or_index():
    # 6 entries, magnitudes 3,1,1,1,1,0: keeping 2 must pick one of four tied 1s
    d = torch.tensor([3.0, 1.0, -1.0, 1.0, -1.0, 0.0])
    by_index = magnitude(d, 2 / 6, tie_order="index")
    assert by_index.tolist() == [3.0, 0.0, 0.0, 0.0, -1.0, 0.0]  # highest-index tie kept
    by_sort = magnitude(d, 2 / 6, tie_order="sort")
    expected = torch.zeros(6)
    order = torch.argsort(d.abs(), descending=True)[:2]  # mergekit's choice
    expected[order] = d[order]
    assert torch.equal(by_sort, expected)
    untied = torch.tensor([5.0, -4.0, 3.0, 0.5, -0.2, 0.1])
    assert torch.equal(magnitude(untied, 0.5, tie_order="index"), magnitude(untied, 0.5, tie_order="sort"))


@pytest.mark.parametrize("values", ["distinct", "few_levels", "zeros", "bf16"])
def test_magnitude_cut_matches_a_stable_sort(values):
    """The kthvalue cut + index tie rule puts exactly the first p entries of a stable
    ascending sort below the cut, for any p, with or without equal magnitudes."""
    from modelglue.methods.task_vectors import magnitude_cut

    g = torch.Generator().manual_seed(3)
    n = 5000
    mags = {"distinct": torch.rand(n, generator=g),
            "few_levels": torch.randint(1, 7, (n,), generator=g).float() / 3,
            "zeros": torch.zeros(n),
            "bf16": torch.randn(n, generator=g).abs().bfloat16().float()}[values]
    order = torch.sort(mags, stable=True).indices
    for p in [0, 1, 2, 17, n // 3, n // 2, n - 1, n]:
        cut = magnitude_cut(mags, p)
        expected = torch.zeros(n, dtype=torch.bool)
        expected[order[:p]] = True
        got = torch.cat([cut.below(mags[a:a + 777], a) for a in range(0, n, 777)])  # any slicing
        assert torch.equal(got, expected), (values, p)


@pytest.mark.parametrize("descending", [True, False])
def test_argsort_prefix_is_torch_argsort(descending):
    """The O(n) emulation keeps exactly the entries torch.argsort puts at [lo, hi):
    heavy ties, few ties, zeros, infinities, tiny and 16-entry blocks, bfloat16 magnitudes."""
    from modelglue.methods.task_vectors import argsort_prefix, argsort_prefix_mask

    g = torch.Generator().manual_seed(7)
    cases = [torch.randint(0, 50, (20_000,), generator=g).float(),
             (torch.randn(300_000, generator=g) * 0.02).bfloat16().abs().float(),
             torch.randn(50_000, generator=g).abs(),
             torch.cat([torch.zeros(999), torch.full((77,), math.inf), torch.ones(1000)])]
    cases += [torch.randint(0, int(levels), (int(n),), generator=g).float()
              for n, levels in torch.randint(1, 3000, (60, 2), generator=g)]
    for mags in cases:
        n, copy = mags.numel(), mags.clone()
        order = torch.argsort(mags, descending=descending)
        for k in {0, 1, n // 3, n // 2, n - n // 7, n}:
            expected = torch.zeros(n, dtype=torch.bool)
            expected[order[:k]] = True
            assert torch.equal(argsort_prefix(mags, k, descending), expected), (n, k)
            keys = (mags if descending else -mags).numpy().copy()  # the emulation itself (argsort_prefix
            assert np.array_equal(argsort_prefix_mask(keys, k), expected.numpy()), (n, k)  # falls back to a sort)
        assert torch.equal(mags, copy)


def test_dare_mask_is_the_same_whole_or_in_slices():
    from modelglue.methods.task_vectors import RANDOM_BLOCK, random_mask

    size = 2 * RANDOM_BLOCK + 1234
    whole = random_mask(5, 0.3, size, 0, size, "cpu")
    parts = torch.cat([random_mask(5, 0.3, size, a, min(size, a + 100_000) - a, "cpu") for a in range(0, size, 100_000)])
    assert torch.equal(whole, parts)
    assert abs(whole.float().mean().item() - 0.3) < 0.005
    assert not torch.equal(whole, random_mask(6, 0.3, size, 0, size, "cpu"))


def _mergekit_magnitude(d: torch.Tensor, density: float) -> torch.Tensor:
    # mergekit 0.1.5 sparsify.magnitude: the first k of a descending argsort
    k = int(density * d.numel())
    mask = torch.zeros(d.numel())
    mask[torch.argsort(d.abs().reshape(-1).float(), descending=True)[:k]] = 1
    return d * mask.reshape(d.shape)


def _mergekit_outliers(d: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    # mergekit 0.1.5 sparsify.magnitude_outliers: [lo, hi) of an ascending sort
    n = d.numel()
    kept, top = int(density * n), int(gamma * n)
    lo = max(0, n - kept - top)
    mask = torch.zeros(n)
    mask[torch.sort(d.abs().reshape(-1).float()).indices[lo:lo + kept]] = 1
    return d * mask.reshape(d.shape)


@pytest.mark.parametrize("grid", [1e-2, 1e-3, 1e-5])
def test_ties_and_breadcrumbs_keep_mergekits_tied_entries(grid):
    """Rounded task vectors tie at every cut: the kept entries equal mergekit's sort-based
    choice, whole or in slices; with tie_order 'index' the same magnitudes are kept."""
    from modelglue.methods.task_vectors import prepare_keep

    g = torch.Generator().manual_seed(11)
    d = (torch.randn(300, 200, generator=g) * 0.01 / grid).round() * grid
    for density in (0.1, 0.37, 0.8):
        assert torch.equal(magnitude(d, density), _mergekit_magnitude(d, density)), density
        assert torch.equal(magnitude_outliers(d, density, gamma=0.05), _mergekit_outliers(d, density, 0.05)), density
        by_index = magnitude(d, density, tie_order="index")
        assert torch.equal(by_index.abs().flatten().sort().values, magnitude(d, density).abs().flatten().sort().values)
    flat = d.reshape(-1)
    keep = prepare_keep(lambda a, b: flat[a:b], flat.numel(), flat.dtype, "magnitude", 0.37, None)
    sliced = torch.cat([keep.apply(flat[a:a + 5000], a) for a in range(0, flat.numel(), 5000)])
    assert torch.equal(sliced.reshape(d.shape), _mergekit_magnitude(d, 0.37))


def test_model_stock_prepare_with_keep_inputs_leaves_its_reads_alone_and_agrees():
    """prepare may overwrite what it reads, unless keep_inputs (the engine then merges
    from those reads): both ways give the same t, bit for bit."""
    method = get_method("model_stock")
    inputs = [T(BASE), T(FTS[0]), T(FTS[1])]
    states, reads = [], []
    for keep in (False, True):
        given = []

        def read(i, start, stop):
            given.append(inputs[i].reshape(-1)[start:stop].clone())
            return given[-1]

        states.append(method.prepare_state(read, tuple(BASE.shape), 0, {"filter_wise": False}, [{}] * 3,
                                           keep_inputs=keep))
        reads.append(given)
    assert len(reads[1]) == len(inputs)
    assert all(torch.equal(r, x.reshape(-1)) for r, x in zip(reads[1], inputs))  # untouched
    assert any(not torch.equal(r, x.reshape(-1)) for r, x in zip(reads[0], inputs))  # overwritten without it
    (t_kept, per_kept), (t_overwritten, per_overwritten) = states[1], states[0]
    assert torch.equal(t_kept, t_overwritten) and per_kept == per_overwritten == BASE.size
    for name in ("ties", "slerp"):  # their prepares overwrite what they read
        with pytest.raises(ValueError, match="cannot keep"):
            get_method(name).prepare_state(read, tuple(BASE.shape), 0, {}, [{}, {}], keep_inputs=True)


@pytest.mark.parametrize("method,key,value", [("ties", "tie_order", "sorted"), ("dare_ties", "rescale_mode", "foo"),
                                              ("breadcrumbs", "tie_order", 1)])
def test_string_parameters_outside_their_choices_fail_recipe_validation(tmp_path, method, key, value):
    """Checked when the recipe is validated (no model file read, no output made): one
    line naming the key and the allowed values."""
    from modelglue.errors import ModelGlueError
    from modelglue.recipe import load_recipe

    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    recipe = {"merge_method": method, "base_model": str(tmp_path / "b"),
              "models": [{"model": str(tmp_path / "a"), "parameters": {"weight": 1.0, "density": 0.5}}],
              "parameters": {key: value}}
    with pytest.raises(ModelGlueError) as err:
        load_recipe(recipe)
    message = str(err.value)
    assert "\n" not in message and repr(key) in message and repr(value) in message and "must be" in message


def test_della_density_epsilon_rule():
    check = get_method("della").constraint
    assert check({"density": 0.5, "epsilon": 0.15}) is None
    assert "density - epsilon" in check({"density": 0.1, "epsilon": 0.15})
    assert check({"density": 1.0, "epsilon": 0.15}) is None  # nothing dropped


# ---------------------------------------------------------------- nuslerp, multislerp, karcher, sce, ram, nearswap, arcee_fusion


def test_nuslerp_whole_tensor_rows_and_columns():
    from modelglue.methods.spherical import nuslerp

    a, b = rng.normal(size=BASE.shape), rng.normal(size=BASE.shape)
    t = 0.7 / (0.3 + 0.7)
    close(nuslerp(None, [T(a), T(b)], [0.3, 0.7]), _slerp_reference(a, b, t))
    da, db = a - BASE, b - BASE  # with a base: slerp of the task vectors, added back
    close(nuslerp(T(BASE), [T(a), T(b)], [0.3, 0.7]), BASE + _slerp_reference(da, db, t))
    rows = np.stack([_slerp_reference(x, y, t) for x, y in zip(da, db)])
    close(nuslerp(T(BASE), [T(a), T(b)], [0.3, 0.7], nuslerp_flatten=False), BASE + rows)
    cols = np.stack([_slerp_reference(x, y, t) for x, y in zip(da.T, db.T)]).T
    close(nuslerp(T(BASE), [T(a), T(b)], [0.3, 0.7], nuslerp_row_wise=True, nuslerp_flatten=False), BASE + cols)
    close(nuslerp(None, [T(a), T(b)], [1.0, -1.0]), _slerp_reference(a, b, 0.5))  # weights summing to 0: t = 0.5


def test_nuslerp_lerps_colinear_rows():
    from modelglue.methods.spherical import nuslerp

    a = rng.normal(size=BASE.shape)
    b = a.copy()
    b[0] *= 3.0  # row 0 colinear, the other rows equal (colinear too)
    b[1] = rng.normal(size=b.shape[1])  # row 1 not
    out = nuslerp(None, [T(a), T(b)], [0.5, 0.5], nuslerp_flatten=False)
    assert torch.isfinite(out).all()
    close(out[0], 0.5 * a[0] + 0.5 * b[0])
    close(out[1], _slerp_reference(a[1], b[1], 0.5))
    close(out[2:], a[2:])


def _multislerp_reference(xs: list[np.ndarray], w: np.ndarray) -> np.ndarray:
    """Barycentre on the sphere: tangent space at the weighted mean direction, exp map back."""
    flat = np.stack([x.ravel() for x in xs])
    norms = np.linalg.norm(flat, axis=1)
    units = flat / norms[:, None]
    m = (w[:, None] * units).sum(0)
    m /= np.linalg.norm(m)
    tangent = units - (units @ m)[:, None] * m
    s = (w[:, None] * tangent).sum(0)
    angle = np.linalg.norm(s)
    out = m * np.cos(angle) + s * np.sin(angle) / angle
    return (out * (w * norms).sum()).reshape(xs[0].shape)


def test_multislerp_matches_formula_with_and_without_base():
    from modelglue.methods.spherical import multislerp

    w = [0.5, 0.3, 0.2]
    close(multislerp(None, [T(f) for f in FTS], w), _multislerp_reference(FTS, np.array(w)))
    raw = [2.0, 1.0, 1.0]  # normalize_weights: only the ratios count
    close(multislerp(T(BASE), [T(f) for f in FTS], raw),
          BASE + _multislerp_reference([f - BASE for f in FTS], np.array(raw) / 4))
    close(multislerp(T(BASE), [T(f) for f in FTS], raw, normalize_weights=False),
          BASE + _multislerp_reference([f - BASE for f in FTS], np.array(raw)))
    assert torch.equal(multislerp(T(BASE), [T(FTS[0])], [0.3]), T(FTS[0]))  # one model: itself


def test_multislerp_antipodal_inputs():
    from modelglue.methods.spherical import multislerp

    a = T(FTS[0])
    close(multislerp(None, [a, -a], [0.5, 0.5]), np.zeros(BASE.shape))  # a pair: the weighted sum
    with pytest.raises(ModelGlueError, match="weighted mean of the inputs' directions is zero"):
        multislerp(None, [a, -a, a, -a], [0.25] * 4)


def test_karcher_mean_is_a_fixed_point_of_the_log_map():
    """The Karcher mean m of unit vectors u_i is where sum_i log_m(u_i) = 0; the result is
    m times the mean norm. For two inputs m is their slerp midpoint."""
    from modelglue.methods.spherical import karcher

    xs = [f.astype(np.float64) for f in FTS] + [rng.normal(size=BASE.shape)]
    out = karcher([torch.tensor(x) for x in xs], max_iter=50, tol=1e-12).numpy().ravel()
    norms = [np.linalg.norm(x) for x in xs]
    assert np.linalg.norm(out) == pytest.approx(np.mean(norms), rel=1e-9)
    m = out / np.linalg.norm(out)
    log = sum(np.arccos(np.clip(u @ m, -1, 1)) / np.sqrt(1 - (u @ m) ** 2) * (u - (u @ m) * m)
              for u in (x.ravel() / np.linalg.norm(x) for x in xs))
    assert np.linalg.norm(log) < 1e-9
    a, b = rng.normal(size=BASE.shape), rng.normal(size=BASE.shape)
    pair = karcher([torch.tensor(a), torch.tensor(b)], max_iter=50, tol=1e-12).numpy()
    mid = _slerp_reference(a / np.linalg.norm(a), b / np.linalg.norm(b), 0.5)
    np.testing.assert_allclose(pair, mid * (np.linalg.norm(a) + np.linalg.norm(b)) / 2, atol=1e-9)


def test_karcher_leaves_out_inputs_without_direction():
    from modelglue.methods.spherical import karcher

    zero = torch.zeros(BASE.shape)
    out = karcher([T(FTS[0]), zero])  # direction of the only non-zero input, half its norm
    close(out, FTS[0] / 2)
    assert torch.equal(karcher([zero, zero]), zero)


def test_sce_matches_formula():
    from modelglue.methods.consensus import sce

    d = np.stack([f - BASE for f in FTS])
    for topk in (1.0, 0.3):
        kept = d.copy()
        if topk < 1:
            var = d.var(axis=0)
            k = int(np.count_nonzero(var) * topk)
            mask = np.zeros(var.size)
            mask[np.argsort(-var.ravel())[:k]] = 1
            kept = kept * mask.reshape(var.shape)
        energy = (kept ** 2).reshape(len(FTS), -1).mean(1)
        w = (energy / energy.sum())[:, None, None]
        agree = np.sign(kept) == np.where(kept.sum(0) >= 0, 1.0, -1.0)
        expected = BASE + (kept * w * agree).sum(0) / np.maximum((w * agree).sum(0), 1e-6)
        close(sce(T(BASE), [T(f) for f in FTS], select_topk=topk), expected)


def _ram_reference(base: np.ndarray, fts: list[np.ndarray], eps: float, r: float | None = None,
                   alpha: float = 0.0) -> np.ndarray:
    d = np.stack([f - base for f in fts])
    active = np.abs(d) > eps
    count = active.sum(0)
    out = base.copy()
    for i in range(len(fts)):
        boost = 1.0
        if r is not None:  # ramplus_tl: shared / unique entries of this task vector, capped
            shared, unique = (active[i] & (count > 1)).sum(), (active[i] & (count == 1)).sum()
            boost = 1 + r * min(shared / max(unique, eps), alpha)
        out += np.where(active[i] & (count == 1), boost * d[i], 0)
        out += np.where(active[i] & (count > 1), d[i] / np.maximum(count, 1), 0)
    return out


def test_ram_and_ramplus_tl_match_formula():
    from modelglue.methods.consensus import ram, ramplus_tl

    eps = 0.08  # about half the entries of each task vector (|d| ~ 0.1 |N(0,1)|) count as changed
    close(ram(T(BASE), [T(f) for f in FTS], epsilon=eps), _ram_reference(BASE, FTS, eps))
    close(ramplus_tl(T(BASE), [T(f) for f in FTS], r=0.5, alpha=0.4, epsilon=eps),
          _ram_reference(BASE, FTS, eps, r=0.5, alpha=0.4))
    assert torch.equal(ram(T(BASE), []), T(BASE))


def test_ramplus_tl_with_epsilon_zero_and_an_unchanged_model_is_finite():
    from modelglue.methods.consensus import ramplus_tl

    out = ramplus_tl(T(BASE), [T(FTS[0]), T(BASE)], epsilon=0.0)  # the second changes nothing: 0/0 shared/unique
    close(out, FTS[0])


def test_nearswap_matches_formula():
    from modelglue.methods.pairwise import nearswap

    t = 0.1
    w = np.clip(t / np.maximum(np.abs(BASE - FTS[0]), 1e-6), 0, 1)
    close(nearswap(T(BASE), [T(FTS[0])], t), w * FTS[0] + (1 - w) * BASE)
    assert torch.equal(nearswap(T(BASE), [T(FTS[0])], 1e9), T(FTS[0]))  # everything within t: swapped
    close(nearswap(T(BASE), [T(FTS[0])], 0.0), BASE)


def test_arcee_fusion_matches_formula():
    from modelglue.methods.pairwise import arcee_fusion

    other = FTS[0]
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    p, q = softmax(other) + 1e-8, softmax(BASE) + 1e-8
    importance = np.abs(other - BASE) * (p * np.log(p / q)).sum(-1, keepdims=True)
    s = np.sort(importance.ravel())
    n = s.size
    q1, med, q3 = s[(n - 1) // 4], s[(n - 1) // 2], s[3 * (n - 1) // 4]
    keep = importance >= med + 1.5 * (q3 - q1)
    assert 0 < keep.sum() < keep.size
    close(arcee_fusion(T(BASE), [T(other)]), np.where(keep, other, BASE))


def test_quantiles_are_the_sorted_entries_at_floor_q_n_minus_1():
    from modelglue.methods.pairwise import quantiles

    x = torch.randint(0, 40, (3, 1001), generator=torch.Generator().manual_seed(2)).float()  # many ties
    s = x.flatten().sort().values
    got = quantiles(x, (0.25, 0.5, 0.75))
    assert [float(v) for v in got] == [float(s[int(q * (x.numel() - 1))]) for q in (0.25, 0.5, 0.75)]


@pytest.mark.parametrize("name,params", [("ram", {"epsilon": 0.08}), ("nearswap", {"t": 0.05})])
def test_elementwise_methods_give_the_same_bits_in_chunks(name, params):
    """ram and nearswap are declared elementwise (the engine streams them in chunks)."""
    method = get_method(name)
    assert method.elementwise
    inputs = [T(BASE)] + [T(f) for f in FTS[:3 if name == "ram" else 1]]
    per_input = [{}] * len(inputs)
    whole = method(inputs, 0, params, per_input)
    flat = [x.reshape(-1) for x in inputs]
    parts = [method([x[a:a + 37] for x in flat], 0, params, per_input, start=a) for a in range(0, BASE.size, 37)]
    assert torch.equal(torch.cat(parts).reshape(BASE.shape), whole)


@pytest.mark.parametrize("method,models,params,key,words", [
    ("karcher", 2, {"max_iter": 2.5}, "max_iter", "whole number"),
    ("karcher", 2, {"tol": -1.0}, "tol", "out of range"),
    ("sce", 2, {"select_topk": 1.5}, "select_topk", "out of range"),
    ("nearswap", 1, {"t": -0.1}, "t", "out of range"),
    ("ramplus_tl", 2, {"alpha": "big"}, "alpha", "must be a number"),
    ("multislerp", 2, {"normalize_weights": 2}, "normalize_weights", "true or false"),  # 1 is true, as in mergekit
    ("nuslerp", 2, {"nuslerp_flatten": "maybe"}, "nuslerp_flatten", "true or false"),  # "yes" is true, as in mergekit
])
def test_new_methods_reject_bad_parameters_when_the_recipe_is_read(tmp_path, method, models, params, key, words):
    from modelglue.recipe import load_recipe

    dirs = []
    for i in range(models + 1):
        (tmp_path / f"m{i}").mkdir()
        dirs.append(str(tmp_path / f"m{i}"))
    recipe = {"merge_method": method, "base_model": dirs[0],
              "models": [{"model": d, "parameters": {"weight": 0.5}} for d in dirs[1:]], "parameters": params}
    with pytest.raises(ModelGlueError) as err:
        load_recipe(recipe)  # empty directories: nothing is read
    message = str(err.value)
    assert "\n" not in message and repr(key) in message and words in message


@pytest.mark.parametrize("method,base,models,words", [
    ("nuslerp", True, 3, "exactly 2 model(s) besides the base"),
    ("nuslerp", False, 1, "exactly 2 model(s) besides the base"),
    ("nearswap", True, 2, "exactly 2 input model(s)"),
    ("arcee_fusion", False, 1, "needs a base_model"),
    ("multislerp", True, 0, "at least 1 model(s) besides the base"),
])
def test_new_methods_check_their_inputs_when_the_recipe_is_read(tmp_path, method, base, models, words):
    from modelglue.recipe import load_recipe

    dirs = []
    for i in range(models + 1):
        (tmp_path / f"m{i}").mkdir()
        dirs.append(str(tmp_path / f"m{i}"))
    recipe = {"merge_method": method, "models": [{"model": d, "parameters": {"weight": 0.5}} for d in dirs[1:]]
              or [{"model": dirs[0]}], "parameters": {"t": 0.1}}  # no models: the base alone
    if base:
        recipe["base_model"] = dirs[0]
    with pytest.raises(ModelGlueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(recipe)


def test_missing_required_parameter_fails_at_plan_time(tmp_path):
    """nearswap's t and nuslerp's weight have no default: the plan (headers only) says which."""
    from pathlib import Path

    from modelglue.merge import merge

    models = Path(__file__).parent / "data" / "mergekit_golden" / "models"
    for recipe, key in [({"merge_method": "nearswap", "base_model": str(models / "llama_base"),
                          "models": [{"model": str(models / "llama_ft1")}]}, "t"),
                        ({"merge_method": "nuslerp", "models": [{"model": str(models / "llama_ft1")},
                                                                 {"model": str(models / "llama_ft2")}]}, "weight")]:
        with pytest.raises(ModelGlueError, match=f"missing parameter '{key}'"):
            merge(recipe, tmp_path / "out")
        assert not (tmp_path / "out").exists()
