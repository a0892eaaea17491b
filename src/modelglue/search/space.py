"""The search space: a vector of merge coefficients <-> a mergekit recipe.

Every strategy proposes points in one continuous box (per-model weights, optionally one
weight per layer group, optionally per-model densities for ties/dare methods) and turns
them into `Candidate`s here. Coefficients are rounded before the recipe is built, so two
proposals that differ below the rounding are the same recipe, hash to the same key and
are scored once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from modelglue.errors import ModelGlueError
from modelglue.methods import get_method

DENSITY_RANGE = (0.1, 1.0)  # below ~0.1 ties/dare keep too little of a task vector to matter


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

    def flat_weights(self) -> list[float]:
        """One number per model: the mean over its layer groups (for tables and plots)."""
        return [float(np.mean(w)) for w in self.weights]

    def nonzero(self) -> int:
        """How many models contribute to this merge (a model outside the members, such
        as the base of a ties search scored alone, counts as one)."""
        n = sum(1 for w in self.weights if any(v > 0 for v in w))
        return n or len(self.recipe.get("models", []))

    def params(self) -> dict[str, Any]:
        return {"weights": [list(w) for w in self.weights],
                "densities": list(self.densities) if self.densities is not None else None}


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
    search_density: bool = False
    precision: int = 2
    max_weight: float = 1.0
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
        if self.method in ("slerp", "model_stock", "passthrough"):
            raise ModelGlueError(f"method {self.method!r} has no per-model coefficients to search; "
                                 "use linear, task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs or della")
        if self.layer_groups < 1:
            raise ModelGlueError("--layer-groups must be at least 1")
        has_density = self._method.param("density") is not None
        if self.search_density and not has_density:
            raise ModelGlueError(f"--search-density: method {self.method!r} has no density parameter")
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
        return self.n * self.layer_groups + (self.n if self.search_density else 0)

    def bounds(self) -> np.ndarray:
        rows = [[0.0, self.max_weight]] * (self.n * self.layer_groups)
        rows += [list(DENSITY_RANGE)] * (self.n if self.search_density else 0)
        return np.array(rows, dtype=float)

    def x0(self) -> np.ndarray:
        """The centre of the search: equal weights (the uniform merge), density 0.5."""
        x = [self.max_weight / 2] * (self.n * self.layer_groups)
        return np.array(x + ([0.5] * self.n if self.search_density else []), dtype=float)

    def encode(self, cand: Candidate) -> np.ndarray:
        """The vector of a candidate (the inverse of `decode`, up to rounding)."""
        x = [v for w in cand.weights for v in w]
        if self.search_density:
            x += list(cand.densities or [0.5] * self.n)
        return np.array(x, dtype=float)

    # ------------------------------------------------------------------ candidates
    def decode(self, x: Sequence[float], origin: str = "") -> Candidate:
        x = np.clip(np.asarray(x, dtype=float), self.bounds()[:, 0], self.bounds()[:, 1])
        g = self.layer_groups
        weights = [x[i * g:(i + 1) * g] for i in range(self.n)]
        dens = x[self.n * g:] if self.search_density else None
        return self.candidate(weights, dens, origin)

    def candidate(self, weights: Sequence[Sequence[float] | float], densities: Sequence[float] | None = None,
                  origin: str = "") -> Candidate:
        """Build a candidate from per-model weights (a number or one per layer group)."""
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
        rounded = []
        for groups in rows:
            # +0.0 turns -0.0 into 0.0 so equal candidates hash equally
            rounded.append(tuple(round(v, r) + 0.0 for v in groups))
        dens = tuple(round(min(max(float(d), DENSITY_RANGE[0]), DENSITY_RANGE[1]), r) for d in densities) \
            if densities is not None else None
        recipe = self._recipe(rounded, dens)
        feasible = recipe is not None
        if recipe is None:
            recipe = {}
        return Candidate(tuple(rounded), dens, recipe, recipe_key(recipe, self.merge_seed) if feasible else "infeasible",
                         origin, feasible)

    @property
    def normalizes(self) -> bool:
        """Whether the method divides by the sum of the weights (linear, ties, della)."""
        p = self._method.param("normalize")
        return p is not None and self.extra_parameters.get("normalize", p.default) is not False

    def equal_weight(self, k: int) -> float:
        """The weight of each of k models in their plain average: 1 where the method
        normalises, else 1/k (task arithmetic's sum of k task vectors / k)."""
        return 1.0 if self.normalizes else 1.0 / max(1, k)

    def uniform(self) -> Candidate:
        return self.candidate([self.equal_weight(self.n)] * self.n, [1.0] * self.n if self.search_density else None,
                              origin="uniform")

    def single(self, i: int) -> Candidate:
        """Model i on its own (exactly its weights, whatever the method)."""
        w = [0.0] * self.n
        w[i] = 1.0
        cand = self.candidate(w, [1.0] * self.n if self.search_density else None)
        own = self.single_path(self.members[i])
        return Candidate(cand.weights, cand.densities, own.recipe, own.key, own.origin, True)

    def single_path(self, path: str) -> Candidate:
        """Any model on its own, e.g. the base of a ties search (not a member)."""
        recipe = {"merge_method": "linear", "models": [{"model": path, "parameters": {"weight": 1.0}}],
                  "dtype": self.dtype}
        return Candidate(tuple((0.0,) * self.layer_groups for _ in range(self.n)), None, recipe, recipe_key(recipe),
                         f"single:{Path(path).name}", True)

    def label(self, i: int) -> str:
        return Path(self.members[i]).name

    def _recipe(self, weights: list[tuple[float, ...]], dens: tuple[float, ...] | None) -> dict[str, Any] | None:
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
        if self._method.needs_base:
            if not entries:
                return None  # the base alone is a "single" candidate, not a merge of this method
            recipe: dict[str, Any] = {"merge_method": self.method, "base_model": self.base_path,
                                      "models": [{"model": self.base_path}] + entries}
        else:
            if not entries:
                return None  # all weights zero: a normalised average is undefined
            recipe = {"merge_method": self.method, "models": entries}
        if self.extra_parameters:
            recipe["parameters"] = dict(self.extra_parameters)
        recipe["dtype"] = self.dtype
        return recipe
