"""The search space: a vector of merge coefficients <-> a mergekit recipe.

Every strategy proposes points in one continuous box per merge method (per-model
weights, optionally one weight per layer group, per-model densities for the sparsifying
methods, and the overall scale lambda for methods that normalise their weights) and turns
them into `Candidate`s here. The box comes from the registry: each method declares which
parameters are searched and over which range (`Param.search`). Coefficients are rounded
before the recipe is built, so two proposals that differ below the rounding are the same
recipe, hash to the same key and are scored once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from modelglue.errors import ModelGlueError
from modelglue.methods import get_method, searchable_methods

# `--method auto`: the portfolio of Model-GLUE's "optimal merging strategy selection"
# (kept to the methods that differ in kind; any other searchable method can be named).
AUTO_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties", "della")


def portfolio(method: str, has_base: bool) -> list[str]:
    """The methods a search over `method` explores: itself, or for "auto" the portfolio
    (only base-free methods without a base model)."""
    if method != "auto":
        return [method]
    known = set(searchable_methods())
    return [m for m in AUTO_METHODS if m in known and (has_base or not get_method(m).needs_base)]


@dataclass(frozen=True)
class Candidate:
    """One merge to score: its rounded coefficients, the recipe they give, and its key.

    `weights[i]` holds one weight per layer group for `SearchSpace.members[i]` (a single
    group means one weight for the whole model); `densities` is None unless searched.
    """

    weights: tuple[tuple[float, ...], ...]
    densities: tuple[float, ...] | None
    recipe: dict[str, Any]
    key: str
    origin: str = ""  # who proposed it first: "uniform", "single:NAME", "cmaes:g3", ...
    feasible: bool = True  # False: no usable recipe (e.g. a linear merge with all weights zero); never scored
    method: str = "linear"
    labels: tuple[str, ...] = ()  # the model behind each entry of `weights`
    lambda_: float | None = None  # searched scale (None: the method's default)

    def flat_weights(self) -> list[float]:
        """One number per model: the mean over its layer groups (for tables and plots)."""
        return [float(np.mean(w)) for w in self.weights]

    def nonzero(self) -> int:
        """How many models contribute to this merge (a model outside the members, such
        as the base of a ties search scored alone, counts as one)."""
        n = sum(1 for w in self.weights if any(v > 0 for v in w))
        return n or len(self.recipe.get("models", []))

    def params(self) -> dict[str, Any]:
        return {"method": self.method, "models": list(self.labels), "weights": [list(w) for w in self.weights],
                "densities": list(self.densities) if self.densities is not None else None, "lambda": self.lambda_}

    @property
    def is_single(self) -> bool:
        return self.origin.startswith("single:")

    def describe(self) -> str:
        """One line: the method and its non-zero coefficients."""
        if self.is_single:
            return f"{self.origin.split(':', 1)[1]} alone"
        parts = [f"{lab}={w:g}" for lab, w in zip(self.labels, self.flat_weights()) if w > 0]
        if self.densities is not None:
            parts.append("density " + "/".join(f"{d:g}" for d, w in zip(self.densities, self.flat_weights()) if w > 0))
        if self.lambda_ is not None:
            parts.append(f"lambda={self.lambda_:g}")
        return f"{self.method}: " + ", ".join(parts)


def recipe_key(recipe: dict[str, Any], seed: int | None = None) -> str:
    """A stable hash of a recipe (canonical JSON); the merge seed counts only for
    randomised methods, where it changes the weights."""
    payload = {"recipe": recipe}
    if seed is not None and get_method(recipe["merge_method"]).randomized:
        payload["seed"] = seed
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]


@dataclass
class SearchSpace:
    """Maps vectors in [low, high]^dim to candidates for a fixed set of models and method.

    For methods that need a base (ties, dare_*, task_arithmetic, ...), `base` is the base
    model and the searched `members` are the other models; for base-free methods (linear)
    the base, if given, is just one more member.
    """

    models: Sequence[str | Path]
    method: str = "linear"
    base: str | Path | None = None
    layer_groups: int = 1
    search_density: bool | None = None  # None: where the method declares a searched density
    precision: int = 2
    max_weight: float | None = None  # None: the method's declared search range
    dtype: str = "float32"
    merge_seed: int = 0
    extra_parameters: dict[str, Any] = field(default_factory=dict)  # recipe-level, e.g. {"normalize": True}

    def __post_init__(self) -> None:
        self._method = get_method(self.method)
        paths = [str(Path(m).resolve()) for m in self.models]
        base = str(Path(self.base).resolve()) if self.base is not None else None
        if len(set(paths)) != len(paths):
            raise ModelGlueError("--models lists the same model twice")
        if self._method.needs_base:
            if base is None:
                raise ModelGlueError(f"method {self.method!r} needs --base")
            self.members = [p for p in paths if p != base]
        else:
            self.members = paths + ([base] if base is not None and base not in paths else [])
        self.base_path = base
        if not self.members:
            raise ModelGlueError("no models to search over (give --models)")
        if not self._method.searchable:
            raise ModelGlueError(f"method {self.method!r} has no per-model coefficients to search; "
                                 f"use auto or one of {', '.join(searchable_methods())}")
        if self.layer_groups < 1:
            raise ModelGlueError("--layer-groups must be at least 1")
        density = self._method.param("density")
        if self.search_density is None:
            self.search_density = density is not None and density.search is not None
        elif self.search_density and density is None:
            raise ModelGlueError(f"--search-density: method {self.method!r} has no density parameter")
        self.density_range = density.search if density is not None and density.search else (0.1, 1.0)
        low, high = self._method.param("weight").search
        self.weight_range = (low, float(self.max_weight) if self.max_weight is not None else high)
        lam = self._method.param("lambda")
        # a normalising method only sees its weights' ratios: its scale is lambda
        self.search_lambda = (lam is not None and lam.search is not None and self.normalizes
                              and "lambda" not in self.extra_parameters)
        self.lambda_range = lam.search if self.search_lambda else None
        if self.precision < 1:
            raise ModelGlueError("--precision must be at least 1 decimal")
        # Only with one layer group: gradients interpolate between anchors, so rescaling
        # each anchor separately would change the interpolated layers' ratios.
        self._scale_free = (self.method == "linear" and self.layer_groups == 1
                            and self.extra_parameters.get("normalize", True) is not False)

    # ------------------------------------------------------------------ geometry
    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def dim(self) -> int:
        return self.n * self.layer_groups + (self.n if self.search_density else 0) + (1 if self.search_lambda else 0)

    def bounds(self) -> np.ndarray:
        rows = [list(self.weight_range)] * (self.n * self.layer_groups)
        rows += [list(self.density_range)] * (self.n if self.search_density else 0)
        rows += [list(self.lambda_range)] if self.search_lambda else []
        return np.array(rows, dtype=float)

    def x0(self) -> np.ndarray:
        """The centre of the search: equal weights (the uniform merge), density 0.5, lambda 1."""
        x = [sum(self.weight_range) / 2] * (self.n * self.layer_groups)
        x += [0.5] * self.n if self.search_density else []
        x += [1.0] if self.search_lambda else []
        return np.array(x, dtype=float)

    def encode(self, cand: Candidate) -> np.ndarray:
        """The vector of a candidate of this space (the inverse of `decode`, up to rounding)."""
        if cand.method != self.method and not cand.is_single:
            raise ValueError(f"a {cand.method} candidate is not a point of the {self.method} space")
        x = [v for w in cand.weights for v in w]
        if self.search_density:
            x += list(cand.densities or [0.5] * self.n)
        if self.search_lambda:
            x.append(cand.lambda_ if cand.lambda_ is not None else 1.0)
        return np.array(x, dtype=float)

    # ------------------------------------------------------------------ candidates
    def decode(self, x: Sequence[float], origin: str = "") -> Candidate:
        x = np.clip(np.asarray(x, dtype=float), self.bounds()[:, 0], self.bounds()[:, 1])
        g, n = self.layer_groups, self.n
        weights = [x[i * g:(i + 1) * g] for i in range(n)]
        dens = x[n * g:n * g + n] if self.search_density else None
        lam = float(x[-1]) if self.search_lambda else None
        return self.candidate(weights, dens, origin, lambda_=lam)

    def candidate(self, weights: Sequence[Sequence[float] | float], densities: Sequence[float] | None = None,
                  origin: str = "", *, lambda_: float | None = None) -> Candidate:
        """Build a candidate from per-model weights (a number or one per layer group);
        densities default to 0.5 and lambda to 1 where they are searched."""
        if len(weights) != self.n:
            raise ModelGlueError(f"expected {self.n} weights, got {len(weights)}")
        r = self.precision
        rows = []
        for w in weights:
            groups = [float(w)] * self.layer_groups if np.ndim(w) == 0 else [float(v) for v in w]
            if len(groups) != self.layer_groups:
                raise ModelGlueError(f"expected {self.layer_groups} weights per model, got {len(groups)}")
            rows.append([max(0.0, v) for v in groups])
        total = sum(row[0] for row in rows)
        if self._scale_free and total > 0:
            # A normalised linear merge ignores the scale of its weights: (0.3, 0.3) and
            # (0.5, 0.5) are the same model. Normalise first so they are the same candidate.
            rows = [[row[0] / total] for row in rows]
        # +0.0 turns -0.0 into 0.0 so equal candidates hash equally
        rounded = [tuple(round(v, r) + 0.0 for v in groups) for groups in rows]
        if self.search_density and densities is None:
            densities = [0.5] * self.n
        lo, hi = self.density_range
        dens = tuple(round(min(max(float(d), lo), hi), r) for d in densities) if densities is not None else None
        lam = None
        if self.search_lambda:
            lo, hi = self.lambda_range
            lam = round(min(max(float(1.0 if lambda_ is None else lambda_), lo), hi), r) + 0.0
        recipe = self._recipe(rounded, dens, lam)
        key = recipe_key(recipe, self.merge_seed) if recipe is not None else "infeasible"
        return Candidate(tuple(rounded), dens, recipe or {}, key, origin, recipe is not None, self.method, self.labels, lam)

    @property
    def normalizes(self) -> bool:
        """Whether the method divides by the sum of the weights (linear, ties, della)."""
        p = self._method.param("normalize")
        return p is not None and self.extra_parameters.get("normalize", p.default) is not False

    def equal_weight(self, k: int) -> float:
        """The weight of each of k models in their plain average: 1 where the method
        normalises, else 1/k (task arithmetic's sum of k task vectors / k)."""
        return 1.0 if self.normalizes else 1.0 / max(1, k)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(Path(m).name for m in self.members)

    def uniform(self) -> Candidate:
        """The plain average of all members in this method (the "uniform" baseline is the
        linear space's): densities 1, lambda 1."""
        return self.candidate([self.equal_weight(self.n)] * self.n, [1.0] * self.n if self.search_density else None,
                              origin="uniform")

    def single(self, i: int) -> Candidate:
        """Model i on its own (exactly its weights, whatever the method)."""
        w = [0.0] * self.n
        w[i] = 1.0
        cand = self.candidate(w, [1.0] * self.n if self.search_density else None)
        own = self.single_path(self.members[i])
        return Candidate(cand.weights, cand.densities, own.recipe, own.key, own.origin, True, self.method, self.labels)

    def single_path(self, path: str) -> Candidate:
        """Any model on its own, e.g. the base of a ties search (not a member); the same
        recipe and key in every method's space, so it is scored once."""
        recipe = {"merge_method": "linear", "models": [{"model": path, "parameters": {"weight": 1.0}}],
                  "dtype": self.dtype}
        return Candidate(tuple((0.0,) * self.layer_groups for _ in range(self.n)), None, recipe, recipe_key(recipe),
                         f"single:{Path(path).name}", True, self.method, self.labels)

    def label(self, i: int) -> str:
        return Path(self.members[i]).name

    def _recipe(self, weights: list[tuple[float, ...]], dens: tuple[float, ...] | None,
                lam: float | None) -> dict[str, Any] | None:
        """The mergekit recipe; models with all-zero weights are left out (they contribute
        nothing, and leaving them out keeps equal merges equal). None: nothing to merge."""
        entries = []
        for i, w in enumerate(weights):
            if not any(v > 0 for v in w):
                continue
            params: dict[str, Any] = {"weight": w[0] if len(w) == 1 else list(w)}
            if dens is not None:
                params["density"] = dens[i]
            entries.append({"model": self.members[i], "parameters": params})
        if self.method == "linear" and self.extra_parameters.get("normalize", True) is not False:
            # a layer group whose weights are all zero has no normalised average (0 / 0);
            # layers between anchors interpolate, so positive anchors are enough
            if any(sum(w[g] for w in weights) <= 0 for g in range(self.layer_groups)):
                return None
        if not entries:  # all weights zero: no average; the base alone is a "single" candidate
            return None
        if self._method.needs_base:
            recipe: dict[str, Any] = {"merge_method": self.method, "base_model": self.base_path,
                                      "models": [{"model": self.base_path}] + entries}
        else:
            recipe = {"merge_method": self.method, "models": entries}
        parameters = dict(self.extra_parameters)
        if lam is not None:
            parameters["lambda"] = lam
        if parameters:
            recipe["parameters"] = parameters
        recipe["dtype"] = self.dtype
        return recipe
