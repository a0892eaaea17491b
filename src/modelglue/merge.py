"""The front door of the merge engine (modelglue/engine/ holds its parts, by job):
`merge()` writes a merged model directory from a recipe, `InMemoryMerger` merges into
memory or a live model for search loops. Both plan first (engine/plan.py: everything is
validated before a tensor is read), then run one Executor (engine/execute.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from modelglue.engine.execute import (CHUNK_ELEMS, DiskSource, Executor, ResidentSource, compute_tensor, execute,
                                      prepare_state, write_merge)
from modelglue.engine.output import model_card, output_config
from modelglue.engine.plan import TORCH_DTYPES, Plan, TensorTask, plan_merge
from modelglue.errors import ModelGlueError
from modelglue.io import Checkpoint, check_output_dir, keep_freed_memory
from modelglue.recipe import Recipe, load_recipe


def merge(recipe: str | Path | dict | Recipe, out_dir: str | Path, *, device: str = "cpu", seed: int | None = None,
          threads: int | None = None, shard_size: int | None = None, allow_pickle: bool = False,
          overwrite: bool = False, progress: bool = False, fsync: bool = False, strict: bool = False) -> Path:
    """Merge as a recipe says and write a Hugging Face model directory at out_dir.

    Everything is validated before any tensor is read; the output is assembled in a
    hidden sibling directory and renamed into place only when complete. On the CPU this
    sets glibc's malloc thresholds for the rest of the process (io.keep_freed_memory).
    Keys mergekit ignores are ignored with a warning each; strict=True refuses them.
    """
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, strict=strict)
    if strict and rec.warnings:
        raise ModelGlueError(f"{rec.warnings[0]} (strict: refused)")
    out_dir = Path(out_dir)
    device = _check_device(device)
    check_output_dir(out_dir, rec.models(), overwrite)
    plan = plan_merge(rec, seed=seed, allow_pickle=allow_pickle)
    if threads is None and plan.method.elementwise and not plan.method.sums_like_mergekit and device == "cpu" \
            and not (plan.method.needs_base and _work_dtype(plan).itemsize < 4):
        # Streamed in 2 MB chunks, the arithmetic of one chunk is too short for torch's
        # intra-op threads to pay off (and they spin when a core is busy): the reader
        # and writer threads already keep the other cores working. (Methods that sum like
        # mergekit keep its thread count: same speed here, and bit-identical sums. So do
        # task-vector methods in 16 bits: their dozen operations a chunk each convert to
        # float32 and back, enough work for the threads: bfloat16 dare_ties 18.4 -> 14.9 s.)
        threads = 1
    if device == "cpu":
        keep_freed_memory()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        write_merge(plan, out_dir, device, shard_size, progress, fsync)
    finally:
        torch.set_num_threads(old_threads)
    return out_dir


def _work_dtype(plan: Plan) -> torch.dtype:
    """The dtype the arithmetic runs in: the recipe's `dtype`, else the first input's."""
    work = TORCH_DTYPES.get(plan.recipe.dtype or "")
    if work is not None:
        return work
    task = next((t for t in plan.tasks if not t.copy_only), None)
    if task is None:
        return torch.float32
    m, name = task.inputs[task.base_index or 0]
    return plan.checkpoints[m].dtype(name)


def _check_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelGlueError(f"--device {device}: CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise ModelGlueError(f"--device {device!r}: use cpu or cuda")
    return device


# ----------------------------------------------------------------------------- in memory


class InMemoryMerger:
    """Merges into memory, keeping the inputs loaded: the search calls this in a loop.

    The first call reads each input tensor once; later calls with new coefficients only
    recompute. Results go into a state dict or straight into a live torch.nn.Module.
    """

    def __init__(self, *, device: str = "cpu", allow_pickle: bool = False):
        self.device = _check_device(device)
        self.allow_pickle = allow_pickle
        self._checkpoints: dict[Path, Checkpoint] = {}
        self._resident: dict[tuple[Path, str], torch.Tensor] = {}

    def plan(self, recipe: str | Path | dict | Recipe, seed: int | None = None) -> Plan:
        rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        return plan_merge(rec, seed=seed, allow_pickle=self.allow_pickle, checkpoints=self._checkpoints)

    def _source(self, plan: Plan) -> ResidentSource:
        src = ResidentSource(plan.checkpoints, self.device)
        src.cache = self._resident  # one cache across plans: a tensor is read once per merger
        return src

    def iter_tensors(self, recipe: str | Path | dict | Recipe, seed: int | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        plan = self.plan(recipe, seed)
        results: list[tuple[str, torch.Tensor]] = []
        execute(plan, self._source(plan), lambda task, t: results.append((task.name, t)), device=self.device, prefetch=0)
        yield from results

    def state_dict(self, recipe: str | Path | dict | Recipe, seed: int | None = None) -> dict[str, torch.Tensor]:
        return dict(self.iter_tensors(recipe, seed))

    def merge_into(self, module: torch.nn.Module, recipe: str | Path | dict | Recipe, seed: int | None = None) -> torch.nn.Module:
        """Write the merged weights into `module` in place (no disk, no new allocations for
        the parameters); every tensor of the plan must exist in the module with its shape."""
        plan = self.plan(recipe, seed)
        target = module.state_dict(keep_vars=True)
        for task in plan.tasks:
            if task.name not in target:
                raise ModelGlueError(f"merged tensor {task.name!r} has no counterpart in the target model")
            if tuple(target[task.name].shape) != task.shape:
                raise ModelGlueError(f"merged tensor {task.name!r} is {list(task.shape)}, the target's is {list(target[task.name].shape)}")

        def sink(task: TensorTask, tensor: torch.Tensor) -> None:
            with torch.no_grad():
                target[task.name].copy_(tensor)

        execute(plan, self._source(plan), sink, device=self.device, prefetch=0)
        return module

    def clear(self) -> None:
        self._resident.clear()


__all__ = ["CHUNK_ELEMS", "DiskSource", "Executor", "InMemoryMerger", "Plan", "ResidentSource", "TensorTask",
           "compute_tensor", "execute", "merge", "model_card", "output_config", "plan_merge", "prepare_state"]
