"""Planning: a validated recipe -> a Plan (see engine/__init__.py). Reads only headers and
config.json, and checks every parameter of every output tensor before any tensor is read."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from modelglue.arch import group_by_layer, layer_name, num_layers, tensor_role
from modelglue.errors import ModelGlueError
from modelglue.io import Checkpoint, TensorSpec
from modelglue.methods import REQUIRED, MergeMethod, get_method
from modelglue.engine.vocab import VocabPlan, is_vocab_tensor, plan_vocab
from modelglue.recipe import DTYPE_NAMES, OutputSlice, Recipe, SliceSource, evaluate_setting

TORCH_DTYPES = {name: getattr(torch, name) for name in set(DTYPE_NAMES.values())}  # recipe dtype names
TORCH_DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}
HALF_DTYPES = (torch.bfloat16, torch.float16)


@dataclass
class TensorTask:
    """One output tensor: where its inputs come from and how to combine them."""

    name: str
    inputs: list[tuple[int, str]]  # (index into Plan.models, tensor name in that model)
    base_index: int | None  # which of `inputs` is the base
    shared: dict[str, Any]
    per_input: list[dict[str, Any]]
    shape: tuple[int, ...]
    dtype: torch.dtype  # output dtype
    copy_only: bool = False  # non-float tensors (buffers) are copied from the base / first input
    # A per-input step on the read inputs before the method (vocabulary alignment of
    # embedding rows); such tensors are merged whole, not in chunks.
    prepare_inputs: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None


@dataclass
class Plan:
    recipe: Recipe
    method: MergeMethod
    models: list[Path]
    checkpoints: list[Checkpoint]
    tasks: list[TensorTask]
    num_out_layers: int
    layer_origin: list[tuple[int, int]] = field(default_factory=list)  # per output layer: (model idx, source layer)
    seed: int = 0
    # 16-bit arithmetic in 16 bits, as mergekit does (bit-identical outputs); else in
    # float32, rounded once at the end (see work_dtype)
    exact: bool = False
    vocab: VocabPlan | None = None  # the output tokenizer and row permutations (tokenizer_source / tokenizer:)

    def specs(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, t.shape, t.dtype) for t in self.tasks]

    def mergekit_dtype(self, stored: torch.dtype) -> torch.dtype:
        """The dtype mergekit computes in for inputs stored as `stored`: the recipe's `dtype`, else theirs."""
        return TORCH_DTYPES.get(self.recipe.dtype or "") or stored

    def work_dtype(self, stored: torch.dtype) -> torch.dtype:
        """The dtype the arithmetic runs in: mergekit's, except that 16-bit arithmetic runs
        in float32 unless `exact` (one rounding at the end instead of one per operation:
        closer to the exact result, within one 16-bit ulp of mergekit's, and faster on
        CPUs, whose 16-bit kernels convert to float32 and back at every operation)."""
        work = self.mergekit_dtype(stored)
        return torch.float32 if work in HALF_DTYPES and not self.exact_16bit else work

    def round_to(self, stored: torch.dtype) -> torch.dtype | None:
        """The 16-bit dtype mergekit computes in when this engine computes in float32
        instead (else None): methods that choose entries (a magnitude trim, a sign
        election) round the values they choose by to it, so the choices are mergekit's."""
        work = self.mergekit_dtype(stored)
        return work if work in HALF_DTYPES and not self.exact_16bit else None

    @property
    def exact_16bit(self) -> bool:
        return self.exact or self.method.keeps_16bit


def plan_merge(recipe: Recipe, *, seed: int | None = None, allow_pickle: bool = False,
               checkpoints: dict[Path, Checkpoint] | None = None, exact: bool = False,
               vocabs: dict[str, VocabPlan] | None = None) -> Plan:
    """Turn a validated recipe into a list of tensor tasks; reads headers only
    (exact: 16-bit arithmetic as mergekit does it, see Plan.work_dtype). `checkpoints`
    and `vocabs` (vocabulary plans, which load tokenizers) are reused across calls."""
    method = get_method(recipe.merge_method)
    models = recipe.models()
    cache = checkpoints if checkpoints is not None else {}
    ckpts = []
    for m in models:
        key = m.resolve()
        if key not in cache:
            cache[key] = Checkpoint(m, allow_pickle=allow_pickle)
        ckpts.append(cache[key])
    index = {m.resolve(): i for i, m in enumerate(models)}
    vocab = None
    if recipe.tokenizer is not None:
        base = index[recipe.base_model.resolve()] if recipe.base_model else None
        key = repr((recipe.tokenizer, [m.resolve() for m in models], base))
        vocab = vocabs.get(key) if vocabs is not None else None
        if vocab is None:
            vocab = plan_vocab(recipe.tokenizer, models, [ck.config for ck in ckpts], base)
            if vocabs is not None:
                vocabs[key] = vocab
    planner = _Planner(recipe, method, models, ckpts, index, vocab)
    tasks = planner.plan()
    return Plan(recipe, method, models, ckpts, tasks, planner.out_layers, planner.layer_origin,
                seed=0 if seed is None else seed, vocab=vocab, exact=exact)


class _Planner:
    def __init__(self, recipe: Recipe, method: MergeMethod, models: list[Path], ckpts: list[Checkpoint],
                 index: dict[Path, int], vocab: VocabPlan | None = None):
        self.recipe, self.method, self.models, self.ckpts, self.index = recipe, method, models, ckpts, index
        self.vocab = vocab
        self.out_layers = 0
        self.layer_origin: list[tuple[int, int]] = []
        self.out_dtype = TORCH_DTYPES.get(recipe.out_dtype or recipe.dtype or "")
        self._resolved: dict[Path, Path] = {}

    def resolved(self, path: Path) -> Path:
        """path.resolve(), which stats every component: once per path and plan (a search plans every candidate)."""
        if path not in self._resolved:
            self._resolved[path] = path.resolve()
        return self._resolved[path]

    def model_idx(self, path: Path) -> int:
        return self.index[self.resolved(path)]

    def layers_of(self, src: SliceSource) -> tuple[int, int]:
        ck = self.ckpts[self.model_idx(src.model)]
        n = num_layers(ck.config, ck.names())
        lo, hi = src.layer_range if src.layer_range else (0, n)
        if hi > n:
            raise ModelGlueError(f"{src.model}: layer_range [{lo}, {hi}) exceeds its {n} layers")
        return lo, hi

    def plan(self) -> list[TensorTask]:
        slices = self.recipe.slices
        for s in slices:
            spans = {hi - lo for lo, hi in map(self.layers_of, s.sources)}
            if len(spans) != 1:
                detail = ", ".join(f"{src.model.name}: {self.layers_of(src)[1] - self.layers_of(src)[0]}" for src in s.sources)
                raise ModelGlueError(f"inputs have different numbers of layers ({detail}); use slices to pick layer ranges")
        ref = self.ckpts[self.model_idx(slices[0].sources[0].model)]
        pre, _, post = group_by_layer(ref.names())
        tasks = [self.task(name, [(s, name) for s in slices[0].sources], slices[0], t=0.0) for name in pre]
        for s in slices:
            lo0, hi0 = self.layers_of(s.sources[0])
            n = hi0 - lo0
            first_ck = self.ckpts[self.model_idx(s.sources[0].model)]
            _, src_layers, _ = group_by_layer(first_ck.names())
            for j in range(n):
                t = j / (n - 1) if n > 1 else 1.0
                for name in src_layers.get(lo0 + j, []):
                    role = tensor_role(name)
                    out_name = layer_name(role, self.out_layers)
                    inputs = [(src, layer_name(role, self.layers_of(src)[0] + j)) for src in s.sources]
                    tasks.append(self.task(out_name, inputs, s, t))
                self.layer_origin.append((self.model_idx(s.sources[0].model), lo0 + j))
                self.out_layers += 1
        tasks += [self.task(name, [(s, name) for s in slices[-1].sources], slices[-1], t=0.0) for name in post]
        return tasks

    def task(self, out_name: str, inputs: list[tuple[SliceSource, str]], out_slice: OutputSlice, t: float) -> TensorTask:
        base_path = out_slice.base_model or self.recipe.base_model
        base_key = self.resolved(base_path) if base_path else None
        refs, shapes, dtypes = [], [], []
        for src, name in inputs:
            mi = self.model_idx(src.model)
            ck = self.ckpts[mi]
            if name not in ck:
                raise ModelGlueError(f"tensor {name!r} is missing from {src.model} (present in {inputs[0][0].model})")
            refs.append((mi, name))
            shapes.append(ck.shape(name))
            dtypes.append(ck.dtype(name))
        base_index = None
        if self.method.uses_base and base_key is not None:  # the recipe checked it is one of the inputs
            base_index = next(i for i, (src, _) in enumerate(inputs) if self.resolved(src.model) == base_key)
        shape, align = self.vocab_alignment(out_name, refs, shapes, base_key)
        if len(set(shapes)) > 1 and align is None:
            detail = ", ".join(f"{src.model.name}: {list(sh)}" for (src, _), sh in zip(inputs, shapes))
            vocab = " (different vocabularies)" if tensor_role(out_name).kind != "layer" and len({sh[0] for sh in shapes}) > 1 \
                and len({sh[1:] for sh in shapes}) == 1 else ""
            hint = " (tokenizer_source: union aligns them)" if vocab and self.vocab is None else ""
            raise ModelGlueError(f"shape mismatch for tensor {out_name!r}{vocab}: {detail}{hint}")
        shared = self.resolve(out_name, None, out_slice, t, scope=("shared",))
        per_input = []
        for i, (src, name) in enumerate(inputs):
            scopes = ("input",) if i == base_index else ("input", "non_base")
            per_input.append(self.resolve(name, src, out_slice, t, scope=scopes))
        floating = dtypes[0].is_floating_point
        dtype = (self.out_dtype or dtypes[base_index or 0]) if floating else dtypes[base_index or 0]
        return TensorTask(out_name, refs, base_index, shared, per_input, shape, dtype, copy_only=not floating,
                          prepare_inputs=align if floating else None)

    def vocab_alignment(self, out_name: str, refs: list[tuple[int, str]], shapes: list[tuple[int, ...]],
                        base_key: Path | None) -> tuple[tuple[int, ...], Any]:
        """(output shape, prepare step): a vocabulary tensor's rows are permuted onto the
        output vocabulary when the recipe names a tokenizer; any other tensor is as is."""
        if self.vocab is None or not all(is_vocab_tensor(name, sh, self.ckpts[m].config)
                                         for (m, name), sh in zip(refs, shapes)):
            return shapes[0], None
        if len({sh[1:] for sh in shapes}) > 1:
            detail = ", ".join(f"{self.models[m].name}: {list(sh)}" for (m, _), sh in zip(refs, shapes))
            raise ModelGlueError(f"shape mismatch for tensor {out_name!r} beyond its vocabulary rows: {detail}")
        base = self.index[base_key] if base_key is not None else None
        work = TORCH_DTYPES.get(self.recipe.dtype or "")
        align = self.vocab.aligner(tuple(m for m, _ in refs), base, [sh[0] for sh in shapes], out_name, work)
        return (self.vocab.rows, *shapes[0][1:]), align

    def resolve(self, tensor_name: str, src: SliceSource | None, out_slice: OutputSlice, t: float,
                scope: tuple[str, ...]) -> dict[str, Any]:
        """Parameters for one input (or the shared ones): the model's own settings, then
        the slice's, then the recipe's, then the method's default."""
        layers = ([src.parameters] if src is not None else []) + [out_slice.parameters, self.recipe.parameters]
        out = {}
        for p in self.method.params:
            if p.scope not in scope:
                continue
            value = None
            for settings in layers:
                if p.name in settings:
                    value = evaluate_setting(settings[p.name], tensor_name, t)
                    if value is not None:
                        break
            where = f"tensor {tensor_name}" + (f" of {src.model}" if src is not None else "")
            if value is None:
                if p.default is not None and p.default is not REQUIRED:
                    value = p.default
                elif p.default is None:
                    out[p.name] = None
                    continue
                else:
                    raise ModelGlueError(f"missing parameter {p.name!r} for {where}")
            out[p.name] = p.check(value, where)
        problem = self.method.constraint(out) if self.method.constraint and "non_base" in scope else None
        if problem:
            raise ModelGlueError(f"tensor {tensor_name} of {src.model}: {problem}")
        return out
