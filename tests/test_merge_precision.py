"""16-bit merges: float32 arithmetic rounded once (the default) against mergekit's
16-bit arithmetic (merge(exact=True), which tests/test_mergekit_golden.py checks against
mergekit 0.1.5's own outputs).

The default path must stay within one 16-bit ulp of mergekit's outputs, measured at the
scale of the values the entry was computed from (the largest of the output and the
inputs there): where an output nearly cancels (0.6 a - 0.4 b ~ 0), mergekit's own
roundings of the intermediate products are ulps of the inputs, not of the tiny output.
Its choices (the TIES trim, the sign election) must be mergekit's exactly.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelglue import merge

GOLDEN = Path(__file__).resolve().parent / "data" / "mergekit_golden"
MODELS = GOLDEN / "models"


@pytest.fixture(scope="module")
def finetunes(tmp_path_factory) -> tuple[str, str, str]:
    """The golden bfloat16 Llama and two fine-tunes of it whose task vectors are 2% of
    the weights' scale (a shared direction plus their own noise, as real fine-tunes and
    benchmarks/merge_bench.py's checkpoints): the golden fine-tunes' 21% make most
    outputs a cancellation."""
    import shutil

    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("finetunes")
    base = load_file(str(MODELS / "llama_base_bf16" / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    shared = {k: torch.randn(v.shape, generator=g) for k, v in base.items()}
    paths = []
    for i, name in enumerate(("base", "ft1", "ft2")):
        d = root / name
        d.mkdir()
        shutil.copy(MODELS / "llama_base_bf16" / "config.json", d / "config.json")
        tensors = base if i == 0 else {
            k: (v.float() + 0.0004 * (shared[k] + torch.randn(v.shape, generator=g))).to(v.dtype)
            for k, v in base.items()}
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
        paths.append(str(d))
    return tuple(paths)


def _recipe(method: str, models: tuple[str, str, str], dtype: str = "bfloat16") -> dict:
    BASE, FT1, FT2 = models
    two = [{"model": FT1, "parameters": {"weight": 0.6}}, {"model": FT2, "parameters": {"weight": 0.4}}]
    trimmed = [{"model": FT1, "parameters": {"weight": 0.6, "density": 0.5}},
               {"model": FT2, "parameters": {"weight": 0.3, "density": 0.7}}]
    recipes = {
        "linear": {"models": two},
        "task_arithmetic": {"base_model": BASE, "models": two},
        "ties": {"base_model": BASE, "models": trimmed},
        "breadcrumbs_ties": {"base_model": BASE, "models": trimmed, "parameters": {"gamma": 0.05}},
        "dare_ties": {"base_model": BASE, "models": two},  # density 1: no random drop
        "slerp": {"base_model": FT1, "models": [{"model": FT1}, {"model": FT2}], "parameters": {"t": 0.3}},
        "model_stock": {"base_model": BASE, "models": [{"model": FT1}, {"model": FT2}]},
        "nuslerp": {"models": two},
        "multislerp": {"base_model": BASE, "models": two},
        "karcher": {"models": [{"model": BASE}, {"model": FT1}, {"model": FT2}]},
        "sce": {"base_model": BASE, "models": [{"model": FT1}, {"model": FT2}]},
        "ram": {"base_model": BASE, "models": [{"model": FT1}, {"model": FT2}], "parameters": {"epsilon": 0.003}},
        "nearswap": {"base_model": BASE, "models": [{"model": FT1}], "parameters": {"t": 0.003}},
    }
    return {"merge_method": method, **recipes[method], "dtype": dtype}


def _merge(tmp_path: Path, recipe: dict, exact: bool) -> dict[str, torch.Tensor]:
    out = merge(recipe, tmp_path / ("exact" if exact else "fast"), seed=0, exact=exact)
    return load_file(str(next(out.glob("*.safetensors"))))


def _inputs(recipe: dict, dtype: torch.dtype) -> list[dict[str, torch.Tensor]]:
    paths = dict.fromkeys([recipe.get("base_model"), *(m["model"] for m in recipe["models"])] if recipe.get("base_model")
                          else [m["model"] for m in recipe["models"]])
    return [{k: v.to(dtype) for k, v in load_file(str(Path(p) / "model.safetensors")).items()} for p in paths if p]


def _ulp_at(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One ulp of `dtype` at the magnitude of each entry of x (float64)."""
    mantissa = {torch.bfloat16: 7, torch.float16: 10}[dtype]
    tiny = torch.finfo(dtype).tiny
    return torch.exp2(torch.floor(torch.log2(x.abs().clamp(min=tiny))) - mantissa)


def _check_within_one_ulp(fast: dict, exact: dict, inputs: list[dict], dtype: torch.dtype) -> None:
    assert fast.keys() == exact.keys()
    for name, a in fast.items():
        b = exact[name]
        assert a.dtype == b.dtype == dtype, name
        scale = torch.stack([b.double().abs(), *(x[name].double().abs() for x in inputs if name in x)]).amax(0)
        diff = (a.double() - b.double()).abs()
        worst = float((diff / _ulp_at(scale, dtype)).max())
        assert worst <= 1.0, f"{name}: {worst:.2f} ulp apart (at the scale of its inputs)"


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "breadcrumbs_ties", "dare_ties", "slerp"])
def test_float32_arithmetic_within_one_ulp_of_mergekits(tmp_path, finetunes, method):
    recipe = _recipe(method, finetunes)
    fast, exact = _merge(tmp_path, recipe, exact=False), _merge(tmp_path, recipe, exact=True)
    _check_within_one_ulp(fast, exact, _inputs(recipe, torch.bfloat16), torch.bfloat16)
    if method not in ("linear", "slerp", "ties"):  # float32 in both; ties rounds where mergekit does
        assert any(not torch.equal(fast[k], exact[k]) for k in fast), "the option changed nothing"


@pytest.mark.parametrize("method", ["model_stock", "nuslerp", "multislerp", "karcher", "sce", "ram", "nearswap"])
def test_methods_that_keep_16bit_arithmetic(tmp_path, finetunes, method):
    """Where float32 would move outputs more than one ulp from mergekit's (norms and angles
    mergekit takes in 16 bits, thresholds on rounded values), both paths are mergekit's."""
    recipe = _recipe(method, finetunes)
    fast, exact = _merge(tmp_path, recipe, exact=False), _merge(tmp_path, recipe, exact=True)
    assert all(torch.equal(fast[k], exact[k]) for k in exact)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_ties_within_one_ulp_in_both_16bit_dtypes(tmp_path, finetunes, dtype):
    """The trim (with its many equal magnitudes at the cut) and the sign election choose
    on mergekit's rounded task vectors: had they chosen other entries, those would be a
    whole task-vector entry (tens of ulps) apart."""
    recipe = _recipe("ties", finetunes, dtype)
    torch_dtype = getattr(torch, dtype)
    fast, exact = _merge(tmp_path, recipe, exact=False), _merge(tmp_path, recipe, exact=True)
    _check_within_one_ulp(fast, exact, _inputs(recipe, torch_dtype), torch_dtype)


def test_float32_arithmetic_is_closer_to_the_exact_result(tmp_path, finetunes):
    """task_arithmetic in float64 from the same rounded inputs: the default path is
    within half an ulp (one rounding); mergekit's 16-bit arithmetic is further off."""
    recipe = _recipe("task_arithmetic", finetunes)
    fast, exact = _merge(tmp_path, recipe, exact=False), _merge(tmp_path, recipe, exact=True)
    base, ft1, ft2 = _inputs(recipe, torch.bfloat16)
    w1, w2 = (float(torch.tensor(w, dtype=torch.bfloat16)) for w in (0.6, 0.4))  # mergekit's weights
    err_fast = err_exact = 0.0
    for name in fast:
        b, x1, x2 = (t[name].double() for t in (base, ft1, ft2))
        d1, d2 = ((x - b).to(torch.bfloat16).double() for x in (x1, x2))  # mergekit's task vectors
        ref = b + w1 * d1 + w2 * d2
        half_ulp = _ulp_at(ref, torch.bfloat16) / 2
        assert bool(((fast[name].double() - ref).abs() <= half_ulp * 1.001).all()), name
        err_fast += float((fast[name].double() - ref).abs().sum())
        err_exact += float((exact[name].double() - ref).abs().sum())
    assert err_fast < err_exact


def test_exact_matches_mergekits_golden_output(tmp_path):
    """merge(exact=True) on a bfloat16 golden recipe gives mergekit's own bytes, and the
    default path differs (the golden fine-tunes' 21% task vectors make many entries a
    cancellation, where mergekit's intermediate roundings are ulps of the inputs)."""
    import json

    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    entry = manifest["recipes"]["task_arithmetic_bf16.yml"]
    recipe = {"merge_method": "task_arithmetic", "base_model": str(MODELS / "llama_base"),
              "models": [{"model": str(MODELS / "llama_ft1"), "parameters": {"weight": 0.5}},
                         {"model": str(MODELS / "llama_ft2"), "parameters": {"weight": 0.5}}], "dtype": "bfloat16"}
    assert (GOLDEN / "task_arithmetic_bf16.yml").read_text().count("weight: 0.5") == 2
    ref = {}
    for f in (GOLDEN / entry["output"]).glob("*.safetensors"):
        ref.update(load_file(str(f)))
    exact, fast = _merge(tmp_path, recipe, exact=True), _merge(tmp_path, recipe, exact=False)
    assert ref.keys() == exact.keys() and all(torch.equal(exact[k], ref[k]) for k in ref)
    assert not all(torch.equal(fast[k], ref[k]) for k in ref)
    assert all(bool(torch.isfinite(v).all()) for v in fast.values())
