"""The front door of the merge engine (modelglue/engine/ holds its parts, by job):
`merge()` writes a merged model directory from a recipe, `InMemoryMerger` merges into
memory or a live model for search loops. Both plan first (engine/plan.py: everything is
validated before a tensor is read), then run one Executor (engine/execute.py).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator
from weakref import WeakKeyDictionary

import torch

from modelglue.engine.execute import (CHUNK_ELEMS, DiskSource, Executor, ResidentSource, compute_tensor, execute,
                                      prepare_state, write_merge)
from modelglue.engine.output import model_card, output_config
from modelglue.engine.plan import Plan, TensorTask, plan_merge
from modelglue.engine.vocab import VocabPlan
from modelglue.errors import ModelGlueError
from modelglue.io import Checkpoint, check_output_dir, keep_freed_memory
from modelglue.recipe import Recipe, load_recipe


def merge(recipe: str | Path | dict | Recipe, out_dir: str | Path, *, device: str = "cpu", seed: int | None = None,
          threads: int | None = None, shard_size: int | None = None, allow_pickle: bool = False,
          overwrite: bool = False, progress: bool = False, fsync: bool = False, strict: bool = False,
          exact: bool = False) -> Path:
    """Merge as a recipe says and write a Hugging Face model directory at out_dir.

    Everything is validated before any tensor is read; the output is assembled in a
    hidden sibling directory and renamed into place only when complete. On the CPU this
    sets glibc's malloc thresholds for the rest of the process (io.keep_freed_memory).
    Keys mergekit ignores are ignored with a warning each; strict=True refuses them.
    16-bit merges compute in float32 and round once (within one ulp of mergekit's
    outputs); exact=True does their arithmetic in 16 bits as mergekit does (bit-identical).
    """
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, strict=strict)
    if strict and rec.warnings:
        raise ModelGlueError(f"{rec.warnings[0]} (strict: refused)")
    out_dir = Path(out_dir)
    device = _check_device(device)
    check_output_dir(out_dir, rec.models(), overwrite)
    plan = plan_merge(rec, seed=seed, allow_pickle=allow_pickle, exact=exact)
    if threads is None and _one_thread(plan, device):
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


def _one_thread(plan: Plan, device: str) -> bool:
    """Whether a CPU merge runs on one torch thread. Streamed in small chunks, the
    arithmetic of one chunk is too short for torch's intra-op threads to pay off (and they
    spin when a core is busy): the reader and writer threads already keep the other cores
    working. Methods that sum like mergekit keep its thread count (same speed here, and
    bit-identical sums); so do task-vector methods in 16 bits (their dozen operations a
    chunk each convert to float32 and back, enough work for the threads: bfloat16
    dare_ties 18.4 -> 14.9 s)."""
    m = plan.method
    return device == "cpu" and m.elementwise and not m.sums_like_mergekit \
        and not (m.needs_base and _work_dtype(plan).itemsize < 4)


def _work_dtype(plan: Plan) -> torch.dtype:
    """The dtype the arithmetic runs in (Plan.work_dtype of the first input's)."""
    task = next((t for t in plan.tasks if not t.copy_only), None)
    if task is None:
        return torch.float32
    m, name = task.inputs[task.base_index or 0]
    return plan.work_dtype(plan.checkpoints[m].dtype(name))


def _check_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelGlueError(f"--device {device}: CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise ModelGlueError(f"--device {device!r}: use cpu or cuda")
    return device


# ----------------------------------------------------------------------------- in memory


IN_MEMORY_CHUNK = 1 << 19  # entries: a 2 MB float32 chunk of the output stays in cache (L2/L3) through
# all the passes of a method's arithmetic, so each input is read from memory once and the
# target written once (whole tensors stream every pass through DRAM). At 0.5B, linear:
# 256K-entry chunks 0.82 s a candidate, 512K 0.71-0.76 s, 1M 0.68-0.75 s (bare loops, one thread).
IN_MEMORY_WORKERS = 2  # threads that take a tensor's chunks in turn, each with one torch thread:
# no barrier between them (torch's intra-op threads spin at one per operation, and took
# 5.5-7 s for what one thread does in 0.9 s on this 2-core machine at load 1.8); a busy
# core only delays the chunks it holds.


class _FlatParts:
    """Flat parts of a tensor's resident inputs, as prepare_state reads them: fresh copies
    (prepare may work in place on what it reads) or, for map_part, views only read."""

    def __init__(self, task: TensorTask, inputs: list[torch.Tensor]):
        self.flat = {ref: t.reshape(-1) for ref, t in zip(task.inputs, inputs)}

    def get_part(self, model_index: int, name: str, start: int, stop: int) -> torch.Tensor:
        return self.flat[model_index, name][start:stop].clone()

    def map_part(self, model_index: int, name: str, start: int, stop: int) -> torch.Tensor:
        return self.flat[model_index, name][start:stop]


class InMemoryMerger:
    """Merges into memory, keeping the inputs loaded: the search calls this in a loop.

    The first call reads each input tensor once; later calls with new coefficients only
    recompute. Results go into a state dict or straight into a live torch.nn.Module.
    merge_into recomputes only the tensors whose inputs or parameters changed since it
    last wrote them into that module (and that nothing else has written to since), and
    computes elementwise methods chunk by chunk straight into the module's parameters:
    the same arithmetic as the disk merge, so the same bits. Vocabulary plans
    (`tokenizer_source`, which load tokenizers) are made once per merger, and the
    vocabulary tensors' inputs aligned once (the aligned copy replaces the read).
    """

    def __init__(self, *, device: str = "cpu", allow_pickle: bool = False):
        self.device = _check_device(device)
        self.allow_pickle = allow_pickle
        self._checkpoints: dict[Path, Checkpoint] = {}
        self._resident: dict[tuple[Path, str], torch.Tensor] = {}
        self._vocabs: dict[str, VocabPlan] = {}  # recipe's tokenizer spec and models -> its vocabulary plan
        self._aligned: dict[tuple, list[torch.Tensor]] = {}  # a vocabulary tensor's inputs, rows aligned
        # per module: tensor name -> (what it was merged from, the tensor's storage and version then)
        self._written: WeakKeyDictionary[torch.nn.Module, dict[str, tuple]] = WeakKeyDictionary()

    def plan(self, recipe: str | Path | dict | Recipe, seed: int | None = None) -> Plan:
        rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        return plan_merge(rec, seed=seed, allow_pickle=self.allow_pickle, checkpoints=self._checkpoints,
                          vocabs=self._vocabs)

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
        the parameters); every tensor of the plan must exist in the module with its shape.
        A tensor whose merge is unchanged since this merger last wrote it there, and which
        has not been modified since (torch's version counter), is left as it is."""
        plan = self.plan(recipe, seed)
        target = module.state_dict(keep_vars=True)
        for task in plan.tasks:
            if task.name not in target:
                raise ModelGlueError(f"merged tensor {task.name!r} has no counterpart in the target model")
            if tuple(target[task.name].shape) != task.shape:
                raise ModelGlueError(f"merged tensor {task.name!r} is {list(task.shape)}, the target's is {list(target[task.name].shape)}")
        if self.device == "cpu":
            keep_freed_memory()  # chunk temporaries come back from the heap, not fresh pages
        written = self._written.setdefault(module, {})
        source = self._source(plan)
        old_threads = torch.get_num_threads()
        if _one_thread(plan, self.device):  # as merge() (two threads on a loaded 2-core machine
            torch.set_num_threads(1)         # took 149 s for a 0.5B linear merge, far more than one)
        parallel = self.device == "cpu" and torch.get_num_threads() == 1 and IN_MEMORY_WORKERS > 1
        try:
            with torch.no_grad(), (ThreadPoolExecutor(IN_MEMORY_WORKERS, thread_name_prefix="modelglue-merge")
                                   if parallel else nullcontext()) as pool:
                for task in plan.tasks:
                    dest = target[task.name]
                    key = self._task_key(plan, source, task)
                    if written.get(task.name) == (key, dest.data_ptr(), dest._version):
                        continue
                    written.pop(task.name, None)
                    self._merge_task(plan, task, self._inputs(plan, source, task), dest, pool)
                    written[task.name] = (key, dest.data_ptr(), dest._version)
        finally:
            torch.set_num_threads(old_threads)
        return module

    def _inputs(self, plan: Plan, source: ResidentSource, task: TensorTask) -> list[torch.Tensor]:
        """A task's inputs as its method takes them: the resident reads, or for a vocabulary
        tensor its inputs with rows aligned onto the output vocabulary, once per
        vocabulary plan (a copy replaces its read in memory; other plans read it again)."""
        reads = [source.get(m, name) for m, name in task.inputs]
        if task.prepare_inputs is None:
            return reads
        key = (id(plan.vocab), task.name, self._task_key(plan, source, task)[2], plan.recipe.dtype)
        if key not in self._aligned:
            aligned = task.prepare_inputs(reads)
            for (m, name), read, rows in zip(task.inputs, reads, aligned):
                if rows.untyped_storage().data_ptr() != read.untyped_storage().data_ptr():
                    self._resident.pop((source.paths[m], name), None)
            self._aligned[key] = aligned
        return self._aligned[key]

    def _merge_task(self, plan: Plan, task: TensorTask, inputs: list[torch.Tensor], dest: torch.Tensor,
                    pool: ThreadPoolExecutor | None = None) -> None:
        """Compute one tensor into `dest`: elementwise methods in cache-sized flat chunks
        (after the method's look at the whole tensors, if it has one; on `pool`'s threads
        if given), others whole; a method that can writes straight into dest
        (MergeMethod.writes_out)."""
        n = dest.numel()
        if task.copy_only or not plan.method.elementwise or n <= IN_MEMORY_CHUNK or not dest.is_contiguous():
            _put(dest, compute_tensor(plan, task, inputs, self.device, into=dest))
            return
        state = prepare_state(plan, task, _FlatParts(task, inputs), self.device)[0] if plan.method.prepare else None
        flat_inputs = [t.reshape(-1) for t in inputs]
        flat_dest = dest.view(-1)

        def chunk(start: int) -> None:
            with torch.no_grad():  # (grad mode is per thread)
                part = flat_dest[start:start + IN_MEMORY_CHUNK]
                _put(part, compute_tensor(plan, task, [t[start:start + IN_MEMORY_CHUNK] for t in flat_inputs],
                                          self.device, state=state, start=start, into=part))

        for _ in (pool.map if pool is not None else map)(chunk, range(0, n, IN_MEMORY_CHUNK)):
            pass

    def _task_key(self, plan: Plan, source: ResidentSource, task: TensorTask) -> tuple:
        """Everything one output tensor's values depend on."""
        def frozen(params: dict) -> tuple:
            return tuple(sorted(params.items()))

        seed = plan.seed if plan.method.randomized else None
        # a vocabulary tensor's rows: the vocabulary plan, kept by this merger (so its id is its own)
        vocab = id(plan.vocab) if task.prepare_inputs is not None else None
        return (plan.method.name, plan.recipe.dtype, tuple((source.paths[m], name) for m, name in task.inputs),
                task.base_index, frozen(task.shared), tuple(frozen(p) for p in task.per_input), seed, task.dtype,
                task.copy_only, vocab)

    def clear(self) -> None:
        self._resident.clear()
        self._aligned.clear()
        self._vocabs.clear()
        self._written.clear()


def _put(dest: torch.Tensor, result: torch.Tensor) -> None:
    """Copy a result into its destination, unless the method wrote it there already."""
    if result.data_ptr() != dest.data_ptr():
        dest.copy_(result)


__all__ = ["CHUNK_ELEMS", "DiskSource", "Executor", "InMemoryMerger", "Plan", "ResidentSource", "TensorTask",
           "compute_tensor", "execute", "merge", "model_card", "output_config", "plan_merge", "prepare_state"]
