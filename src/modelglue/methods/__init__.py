"""The one registry of merge methods.

A method is a plain function on tensors plus declared parameters. Parameters have a
scope: 'shared' (one value per output tensor, e.g. slerp's t), 'input' (one per input
model, e.g. linear's weight) or 'non_base' (one per non-base input, e.g. ties' density).
Names, scopes and defaults follow mergekit 0.1.5 so its recipes run unchanged.

A new method is a pure function plus one call:

    register("my_mean", my_mean, Param("weight", float, "input", search=(0.0, 1.0)),
             Param("mode", str, default="a", choices=("a", "b")), elementwise=True)

Types, ranges (low/high) and choices are checked when a recipe is validated, before any
model is read; `constraint` checks rules across one input's parameters at plan time.
`search` is the box the search explores (None: not searched).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from modelglue.errors import ModelGlueError, did_you_mean
from modelglue.methods.basic import linear, model_stock, model_stock_prepare, passthrough, slerp, slerp_prepare
from modelglue.methods.consensus import ram, ramplus_tl, sce
from modelglue.methods.pairwise import arcee_fusion, nearswap
from modelglue.methods.spherical import karcher, multislerp, nuslerp
from modelglue.methods.task_vectors import as_rounded, prepare_keeps, task_vector_merge

REQUIRED = object()


@dataclass(frozen=True)
class Param:
    name: str
    type: type  # float, int, bool or str (ints are accepted as floats; an int takes whole numbers only)
    scope: str = "shared"  # 'shared' | 'input' | 'non_base'
    default: Any = REQUIRED
    low: float | None = None  # inclusive range, checked when the recipe is validated
    high: float | None = None
    # The box the search explores for this parameter (None: not searched). Declared by the
    # method, so the search asks the registry instead of naming methods.
    search: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None  # the values a string parameter may take

    def check(self, value: Any, where: str) -> Any:
        """Validate one resolved value; returns it converted, or raises a one-line error."""
        if self.type is bool:
            if not isinstance(value, bool):
                raise ModelGlueError(f"{where}: parameter {self.name!r} must be true or false, got {value!r}")
            return value
        if self.type is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                allowed = " or ".join(map(repr, self.choices)) if self.choices else "a string"
                raise ModelGlueError(f"{where}: parameter {self.name!r} must be {allowed}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModelGlueError(f"{where}: parameter {self.name!r} must be a number, got {value!r}")
        if self.type is int:  # e.g. an iteration count: 10.0 is 10, 2.5 is no count
            if not float(value).is_integer():
                raise ModelGlueError(f"{where}: parameter {self.name!r} must be a whole number, got {value!r}")
            value = int(value)
            self._check_range(value, where)
            return value
        value = float(value)
        self._check_range(value, where)
        return value

    def _check_range(self, value: float, where: str) -> None:
        if value != value or (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            lo = "-inf" if self.low is None else self.low
            hi = "inf" if self.high is None else self.high
            raise ModelGlueError(f"{where}: parameter {self.name!r}={value:g} is out of range [{lo}, {hi}]")


@dataclass(frozen=True)
class MergeMethod:
    """A registered method. `fn` is called as fn(tensors, **params) when the method takes
    no base, or fn(base, others, **params) when it needs one or may take one (base is
    None when an optional base is not given); per-input parameters arrive as lists
    aligned with the inputs (or with `others`, the non-base inputs)."""

    name: str
    fn: Callable[..., torch.Tensor]
    params: tuple[Param, ...] = ()
    needs_base: bool = False
    optional_base: bool = False  # uses base_model when the recipe gives one (mergekit's BasePolicy.OPTIONAL)
    min_inputs: int = 1
    max_inputs: int | None = None
    # Counts of the inputs other than the base (nuslerp: exactly two, with a base or not).
    min_non_base: int = 0
    max_non_base: int | None = None
    randomized: bool = False  # takes `seeds`: one per non-base input
    # Each output entry depends only on the same entry of the inputs (given what `prepare`
    # found, if the method has one): big tensors can then be streamed in chunks, memory =
    # chunk x inputs instead of tensor x inputs.
    elementwise: bool = False
    # prepare(read, shape, base_index, num_inputs, **params) -> state looks at the whole
    # inputs once (read(i, start, stop): a fresh flat slice of input i, which prepare may
    # overwrite) before `fn` runs on flat chunks with state=..., start=... (TIES needs
    # each task vector's magnitude ranks first, slerp the angle between the tensors).
    prepare: Callable[..., Any] | None = None
    # prepare takes keep_inputs=True and then writes nothing into what read returns: the
    # engine merges a small tensor's chunks from those very reads instead of reading again.
    prepare_keeps_inputs: bool = False
    # `prepare` takes float32 sums over whole tensors, as mergekit does. Their last bits
    # depend on how torch splits a sum over its intra-op threads, so the engine leaves
    # torch's default thread count (mergekit's) in place for these methods.
    sums_like_mergekit: bool = False
    # fn (and prepare) take round_to=: the 16-bit dtype mergekit computes in while the
    # engine computes in float32 (else None), to make their choices on its rounded values.
    takes_round_to: bool = False
    # The engine keeps mergekit's 16-bit arithmetic for it even without exact: in float32
    # its outputs would move more than one 16-bit ulp from mergekit's (thresholds on
    # rounded values; norms and angles that mergekit takes in 16 bits).
    keeps_16bit: bool = False
    # fn takes out=: a tensor to write the result into (no allocation; the engine passes it
    # only when it is of the dtype the inputs arrive and are computed in, float32 or float64).
    writes_out: bool = False
    description: str = ""
    reference: str = ""
    # constraint(values) -> an error message or None: a rule across one input's resolved
    # parameters (DELLA's density +- epsilon inside (0, 1)), checked at plan time.
    constraint: Callable[[dict[str, Any]], str | None] | None = None

    @property
    def uses_base(self) -> bool:
        """Whether a base_model given in the recipe is this method's base (not just one more input)."""
        return self.needs_base or self.optional_base

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def searchable(self) -> bool:
        """Whether the search can tune this method: it has a searched per-model weight."""
        p = self.param("weight")
        return p is not None and p.search is not None

    def _kwargs(self, base_index: int | None, shared: dict[str, Any], per_input: list[dict[str, Any]],
                seeds: list[int] | None) -> dict[str, Any]:
        kwargs = {}
        for p in self.params:
            key = "lambda_" if p.name == "lambda" else p.name
            if p.scope == "shared":
                kwargs[key] = shared[p.name]
            elif p.scope == "input":
                kwargs[key] = [pi[p.name] for pi in per_input]
            elif p.scope == "non_base":  # every input when there is no base
                kwargs[key] = [pi[p.name] for i, pi in enumerate(per_input) if i != base_index]
        if self.randomized:
            kwargs["seeds"] = seeds
        return kwargs

    def __call__(self, tensors: list[torch.Tensor], base_index: int | None, shared: dict[str, Any],
                 per_input: list[dict[str, Any]], seeds: list[int] | None = None, *,
                 state: Any = None, start: int = 0, round_to: torch.dtype | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """Bind resolved parameters to the plain function and run it (on whole tensors, or
        with `state` from prepare_state on the flat slice beginning at entry `start`;
        into `out` if given, which needs writes_out)."""
        kwargs = self._kwargs(base_index, shared, per_input, seeds)
        if out is not None:
            if not self.writes_out:
                raise ValueError(f"{self.name}: it cannot write into a given tensor")
            kwargs["out"] = out
        if self.takes_round_to:
            kwargs["round_to"] = round_to
        if self.prepare is not None:
            kwargs.update(state=state, start=start)
        if not self.uses_base:
            return self.fn(tensors, **kwargs)
        others = [t for i, t in enumerate(tensors) if i != base_index]
        return self.fn(None if base_index is None else tensors[base_index], others, **kwargs)

    def prepare_state(self, read: Callable[[int, int, int], torch.Tensor], shape: tuple[int, ...],
                      base_index: int | None, shared: dict[str, Any], per_input: list[dict[str, Any]],
                      seeds: list[int] | None = None, *, keep_inputs: bool = False,
                      round_to: torch.dtype | None = None) -> Any:
        """What `fn` needs to know about the whole tensors before it can run on chunks
        (keep_inputs: leave what `read` returns unchanged; needs prepare_keeps_inputs)."""
        if keep_inputs and not self.prepare_keeps_inputs:
            raise ValueError(f"{self.name}: its prepare cannot keep its inputs unchanged")
        if self.prepare is None:
            return None
        kwargs = self._kwargs(base_index, shared, per_input, seeds)
        if keep_inputs:
            kwargs["keep_inputs"] = True
        if self.takes_round_to:
            kwargs["round_to"] = round_to
        return self.prepare(read, shape, base_index, len(per_input), **kwargs)


REGISTRY: dict[str, MergeMethod] = {}


def register(name: str, fn: Callable[..., torch.Tensor], *params: Param, **options: Any) -> MergeMethod:
    """Register a method: its name, its plain function, its parameters, and MergeMethod's
    options by keyword (needs_base=True, min_inputs=2, ...). Returns the entry."""
    if name in REGISTRY:
        raise ValueError(f"merge method {name!r} is already registered")
    REGISTRY[name] = MergeMethod(name, fn, tuple(params), **options)
    return REGISTRY[name]


def get_method(name: str) -> MergeMethod:
    if not isinstance(name, str):
        raise ModelGlueError(f"merge_method must be a method name, got {name!r}")
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelGlueError(f"unknown merge_method {name!r}{did_you_mean(name, REGISTRY)}; known: {', '.join(sorted(REGISTRY))}") from None


# ---------------------------------------------------------------- the methods

UNIT = dict(low=0.0, high=1.0)

register("linear", linear, Param("weight", float, "input", search=(0.0, 1.0)), Param("normalize", bool, default=True),
         elementwise=True, writes_out=True, description="Weighted average of the models (model soup).",
         reference="https://arxiv.org/abs/2203.05482")

register("slerp", slerp, Param("t", float, **UNIT), needs_base=True, min_inputs=2, max_inputs=2,
         elementwise=True, prepare=slerp_prepare, sums_like_mergekit=True,
         description="Spherical interpolation from the base to one other model.",
         reference="https://en.wikipedia.org/wiki/Slerp")

register("model_stock", model_stock, Param("filter_wise", bool, default=False), needs_base=True, min_inputs=3,
         elementwise=True, prepare=model_stock_prepare, prepare_keeps_inputs=True, sums_like_mergekit=True,
         keeps_16bit=True,
         description="Interpolate towards the fine-tunes' mean by their task vectors' geometry.",
         reference="https://arxiv.org/abs/2403.19522")

register("passthrough", passthrough, Param("scale", float, "input", default=None), max_inputs=1, elementwise=True,
         description="Copy tensors unchanged: layer stacking, depth up-scaling, frankenmerges.")


def _task_vector_method(name: str, *, sparsify: str | None, consensus: str | None, normalize: bool,
                        rescale: bool, description: str, reference: str) -> MergeMethod:
    """Register one task-vector method: task_vector_merge with a sparsifier, a consensus
    and mergekit's defaults (see methods/task_vectors.py)."""
    # Search boxes: a method that normalises by the sum of weights only sees their ratios,
    # so its scale is lambda; otherwise the weights carry the scale themselves. Fine-tuned
    # skills often need (near) full weight on their task vector, hence the upper ends > 1.
    params = [
        Param("weight", float, "non_base", search=(0.0, 1.0) if normalize else (0.0, 1.5)),
        # below ~0.1 ties/dare keep too little of a task vector to matter; della needs
        # density +- epsilon (default 0.15) inside (0, 1)
        Param("density", float, "non_base", default=1.0, **UNIT,
              search=None if not sparsify else (0.2, 0.8) if sparsify == "della" else (0.1, 1.0)),
        Param("normalize", bool, default=normalize),
        Param("rescale", bool, default=rescale),
        # The DARE paper rescales kept entries by 1/density; mergekit matches the L1 norm.
        Param("rescale_mode", str, default="l1", choices=("l1", "density")),
        Param("lambda", float, default=1.0, search=(0.5, 2.0) if normalize else None),
        Param("int8_mask", bool, default=False),  # accepted for mergekit recipes; no effect here
    ]
    if sparsify in ("magnitude", "magnitude_outliers"):
        # Equal magnitudes at the trim cut: 'sort' keeps mergekit's choice, 'index' is always O(n).
        params.append(Param("tie_order", str, default="sort", choices=("sort", "index")))
    if sparsify == "magnitude_outliers":
        params.append(Param("gamma", float, "non_base", default=0.01, **UNIT))
    if sparsify == "della":
        params.append(Param("epsilon", float, "non_base", default=0.15, **UNIT))
    streamed = sparsify in ("magnitude", "magnitude_outliers", "random")
    return register(
        name, functools.partial(_task_vector_call, sparsify=sparsify, consensus=consensus), *params,
        needs_base=True, min_inputs=1, randomized=sparsify in ("random", "della"),
        elementwise=sparsify is None or streamed,
        prepare=functools.partial(_task_vector_prepare, sparsify=sparsify) if streamed else None,
        constraint=_della_constraint if sparsify == "della" else None, takes_round_to=True,
        description=description, reference=reference)


def _della_constraint(values: dict[str, Any]) -> str | None:
    d, e = values["density"], values["epsilon"]
    if d < 1 and not (0 < d - e and d + e < 1):
        return f"della needs 0 < density - epsilon and density + epsilon < 1 (density {d:g}, epsilon {e:g})"
    return None


def _task_vector_prepare(read, shape, base_index, num_inputs, *, density, rescale, rescale_mode, gamma=None,
                         seeds=None, tie_order="sort", sparsify=None, round_to=None, **_):
    """Keep rules of the task vectors d_i = input_i - base, read slice by slice (rounded
    to round_to as mergekit's are: its trim ranks those)."""
    others = [i for i in range(num_inputs) if i != base_index]
    return prepare_keeps(lambda i, a, b: as_rounded(read(others[i], a, b) - read(base_index, a, b), round_to),
                         math.prod(shape), None,
                         sparsify=sparsify, density=density, rescale=rescale_mode if rescale else None,
                         gamma=gamma, tie_order=tie_order, seeds=seeds)


def _task_vector_call(base, others, *, weight, density, normalize, rescale, rescale_mode, lambda_,
                      int8_mask, gamma=None, epsilon=None, seeds=None, sparsify=None, consensus=None,
                      tie_order="sort", state=None, start=0, round_to=None):
    return task_vector_merge(
        base, others, weight, density, sparsify=sparsify, consensus=consensus, normalize=normalize,
        rescale=rescale_mode if rescale else None, lambda_=lambda_, gamma=gamma, epsilon=epsilon,
        seeds=seeds, tie_order=tie_order, keeps=state, start=start, round_to=round_to)


_task_vector_method("task_arithmetic", sparsify=None, consensus=None, normalize=False, rescale=False,
                    description="base + lambda * sum w_i (theta_i - base).", reference="https://arxiv.org/abs/2212.04089")
_task_vector_method("ties", sparsify="magnitude", consensus="sum", normalize=True, rescale=False,
                    description="Trim to top-density magnitudes, elect signs, disjoint mean.", reference="https://arxiv.org/abs/2306.01708")
_task_vector_method("dare_ties", sparsify="random", consensus="sum", normalize=False, rescale=True,
                    description="Random drop-and-rescale of task vectors, then TIES sign election.",
                    reference="https://arxiv.org/abs/2311.03099")
_task_vector_method("dare_linear", sparsify="random", consensus=None, normalize=False, rescale=True,
                    description="Random drop-and-rescale of task vectors, then a weighted sum.",
                    reference="https://arxiv.org/abs/2311.03099")
_task_vector_method("breadcrumbs", sparsify="magnitude_outliers", consensus=None, normalize=False, rescale=False,
                    description="Drop outliers and small entries of task vectors.",
                    reference="https://arxiv.org/abs/2312.06795")
_task_vector_method("breadcrumbs_ties", sparsify="magnitude_outliers", consensus="sum", normalize=False,
                    rescale=False, description="Breadcrumbs with TIES sign election.",
                    reference="https://arxiv.org/abs/2312.06795")
_task_vector_method("della", sparsify="della", consensus="sum", normalize=True, rescale=True,
                    description="Magnitude-ranked random pruning (DELLA) with TIES sign election.",
                    reference="https://arxiv.org/abs/2406.11617")
_task_vector_method("della_linear", sparsify="della", consensus=None, normalize=False, rescale=True,
                    description="Magnitude-ranked random pruning (DELLA), weighted sum.",
                    reference="https://arxiv.org/abs/2406.11617")



# ---------------------------------------------------------------- on the sphere, by consensus, in pairs
# Methods without `elementwise` get whole tensors: their norms, angles, variances and
# counts run over all of a tensor's entries.

register("nuslerp", nuslerp, Param("weight", float, "non_base"), Param("nuslerp_row_wise", bool, default=False),
         Param("nuslerp_flatten", bool, default=True), optional_base=True, min_non_base=2, max_non_base=2,
         # not searched: it takes exactly two models, and the search leaves out zero-weight ones
         keeps_16bit=True,
         description="Slerp of two models (or of their task vectors from a base) at t = w_2 / (w_1 + w_2); "
                     "whole tensor, per row or per column.",
         reference="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md")

register("multislerp", multislerp, Param("weight", float, "non_base", search=(0.0, 1.0)),
         Param("normalize_weights", bool, default=True), Param("eps", float, default=1e-8, low=0.0),
         optional_base=True, min_non_base=1,
         keeps_16bit=True,
         description="Weighted barycentre of the models (or task vectors) on the hypersphere, scaled to the mean norm.",
         reference="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea")

register("karcher", karcher, Param("max_iter", int, default=10, low=0), Param("tol", float, default=1e-5, low=0.0),
         keeps_16bit=True,
         description="Riemannian (Karcher) mean of the models' directions, times their mean norm.",
         reference="https://arxiv.org/abs/2603.04972")

register("sce", sce, Param("select_topk", float, default=1.0, **UNIT),
         Param("int8_mask", bool, default=False),  # accepted for mergekit recipes; no effect on the result
         needs_base=True,
         keeps_16bit=True,
         description="Keep the highest-variance entries, weigh task vectors by energy, erase minority signs.",
         reference="https://arxiv.org/abs/2408.07990")

register("ram", ram, Param("epsilon", float, default=1e-5, low=0.0), needs_base=True, elementwise=True,
         keeps_16bit=True,
         description="Per entry, the mean of the task vectors that change it (|d| > epsilon).",
         reference="https://arxiv.org/abs/2601.13572")

register("ramplus_tl", ramplus_tl, Param("r", float, default=0.1, low=0.0), Param("alpha", float, default=0.2, low=0.0),
         Param("epsilon", float, default=1e-5, low=0.0), needs_base=True,
         keeps_16bit=True,
         description="RAM with each fine-tune's unique entries scaled by 1 + r min(shared/unique, alpha), per tensor.",
         reference="https://arxiv.org/abs/2601.13572")

register("nearswap", nearswap, Param("t", float, low=0.0), needs_base=True, min_inputs=2, max_inputs=2,
         elementwise=True, keeps_16bit=True,
         description="Take the other model's value where it lies within t of the base's.",
         reference="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001")

register("arcee_fusion", arcee_fusion, needs_base=True, min_inputs=2, max_inputs=2,
         keeps_16bit=True,
         description="Take the other model's value where |difference| x row KL is an outlier (median + 1.5 IQR).",
         reference="https://arcee.ai")


def searchable_methods() -> list[str]:
    """Methods the search can tune (those declaring a searched weight), in registry order."""
    return [name for name, m in REGISTRY.items() if m.searchable]


__all__ = ["MergeMethod", "Param", "REGISTRY", "get_method", "register", "searchable_methods"]
