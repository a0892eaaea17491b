"""The merge engine: recipe -> plan -> one streaming executor -> a sink.

Planning reads only headers and config.json: it lists every output tensor with its
inputs, resolved parameters, shape and dtype, and validates all of it before a single
tensor is read. The executor then walks the plan once: fetch the inputs of one output
tensor, apply the method, hand the result to a sink. The same executor serves both
uses: `merge()` streams from disk into sharded safetensors (prefetching the next inputs
and writing the previous output on background threads), and `InMemoryMerger` feeds it
from tensors kept resident and writes into a live model, for search loops.
"""
from __future__ import annotations

import json
import math
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from tqdm.auto import tqdm

from modelglue.arch import group_by_layer, layer_count_key, layer_name, num_layers, per_layer_config_keys, tensor_role
from modelglue.errors import ModelGlueError
from modelglue.io import (BufferPool, Checkpoint, ShardedWriter, TensorSpec, atomic_output_dir, check_output_dir,
                          copy_tokenizer_files, keep_freed_memory)
from modelglue.methods import REQUIRED, MergeMethod, get_method
from modelglue.methods.task_vectors import derive_seed
from modelglue.recipe import DTYPE_NAMES, OutputSlice, Recipe, SliceSource, evaluate_setting, load_recipe, recipe_to_yaml

TORCH_DTYPES = {name: getattr(torch, name) for name in set(DTYPE_NAMES.values())}  # recipe dtype names
TORCH_DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


# ----------------------------------------------------------------------------- the plan


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

    def specs(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, t.shape, t.dtype) for t in self.tasks]


def plan_merge(recipe: Recipe, *, seed: int | None = None, allow_pickle: bool = False,
               checkpoints: dict[Path, Checkpoint] | None = None) -> Plan:
    """Turn a validated recipe into a list of tensor tasks; reads headers only."""
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
    planner = _Planner(recipe, method, models, ckpts, index)
    tasks = planner.plan()
    return Plan(recipe, method, models, ckpts, tasks, planner.out_layers, planner.layer_origin,
                seed=0 if seed is None else seed)


class _Planner:
    def __init__(self, recipe: Recipe, method: MergeMethod, models: list[Path], ckpts: list[Checkpoint],
                 index: dict[Path, int]):
        self.recipe, self.method, self.models, self.ckpts, self.index = recipe, method, models, ckpts, index
        self.out_layers = 0
        self.layer_origin: list[tuple[int, int]] = []
        self.out_dtype = TORCH_DTYPES.get(recipe.out_dtype or recipe.dtype or "")

    def model_idx(self, path: Path) -> int:
        return self.index[path.resolve()]

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
        base_key = base_path.resolve() if base_path else None
        refs, shapes, dtypes = [], [], []
        for src, name in inputs:
            mi = self.model_idx(src.model)
            ck = self.ckpts[mi]
            if name not in ck:
                raise ModelGlueError(f"tensor {name!r} is missing from {src.model} (present in {inputs[0][0].model})")
            refs.append((mi, name))
            shapes.append(ck.shape(name))
            dtypes.append(ck.dtype(name))
        if len(set(shapes)) > 1:
            detail = ", ".join(f"{src.model.name}: {list(sh)}" for (src, _), sh in zip(inputs, shapes))
            vocab = " (different vocabularies)" if tensor_role(out_name).kind != "layer" and len({sh[0] for sh in shapes}) > 1 \
                and len({sh[1:] for sh in shapes}) == 1 else ""
            raise ModelGlueError(f"shape mismatch for tensor {out_name!r}{vocab}: {detail}")
        base_index = None
        if self.method.needs_base:
            base_index = next(i for i, (src, _) in enumerate(inputs) if src.model.resolve() == base_key)
        shared = self.resolve(out_name, None, out_slice, t, scope=("shared",))
        per_input = []
        for i, (src, name) in enumerate(inputs):
            scopes = ("input",) if i == base_index else ("input", "non_base")
            per_input.append(self.resolve(name, src, out_slice, t, scope=scopes))
        floating = dtypes[0].is_floating_point
        dtype = (self.out_dtype or dtypes[base_index or 0]) if floating else dtypes[base_index or 0]
        return TensorTask(out_name, refs, base_index, shared, per_input, shapes[0], dtype, copy_only=not floating)

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



# ----------------------------------------------------------------------------- execution


class TensorSource(Protocol):
    def get(self, model_index: int, name: str) -> torch.Tensor: ...


PREPARE_AHEAD = 2  # tensors whose `prepare` may run at once, ahead of the one being merged
PREPARE_AHEAD_BYTES = 1 << 28  # beyond the next tensor, only while their inputs are this small
# Where prepare can leave its whole reads unchanged, a tensor whose inputs take at most
# this many bytes is merged from them: no second read, for a few tensors' worth of memory.
KEEP_INPUTS_BYTES = 1 << 26
CHUNK_ELEMS = 1 << 19  # 512K entries per input per chunk: 2 MB of float32 stays below glibc's mmap
# threshold, so chunk buffers are reused from the heap instead of page-faulted in afresh
READ_POOL_BYTES = 4 << 30  # read buffers kept for reuse, at most


class DiskSource:
    """Reads each input tensor from its checkpoint when asked (no cache): into buffers
    reused once their tensors are gone, or into pinned memory when the arithmetic runs
    on a GPU."""

    def __init__(self, checkpoints: list[Checkpoint], pin_memory: bool = False):
        self.checkpoints, self.pin_memory = checkpoints, pin_memory
        self.pool = BufferPool(READ_POOL_BYTES)

    def get(self, model_index: int, name: str) -> torch.Tensor:
        return self.checkpoints[model_index].get(name, pin_memory=self.pin_memory, pool=self.pool)

    def get_part(self, model_index: int, name: str, start: int, stop: int) -> torch.Tensor:
        return self.checkpoints[model_index].get_flat(name, start, stop, pin_memory=self.pin_memory, pool=self.pool)

    def map_part(self, model_index: int, name: str, start: int, stop: int) -> torch.Tensor:
        """Like get_part, mapped instead of copied: for parts that are only read."""
        return self.checkpoints[model_index].map_flat(name, start, stop)


class ResidentSource:
    """Keeps every tensor it has read: for search loops that merge the same inputs often."""

    def __init__(self, checkpoints: list[Checkpoint], device: str = "cpu"):
        self.checkpoints, self.device = checkpoints, device
        self.paths = [ck.path.resolve() for ck in checkpoints]  # cache keys: shared across plans
        self.cache: dict[tuple[Path, str], torch.Tensor] = {}

    def get(self, model_index: int, name: str) -> torch.Tensor:
        key = (self.paths[model_index], name)
        if key not in self.cache:
            self.cache[key] = self.checkpoints[model_index].get(name).to(self.device)
        return self.cache[key]


def compute_tensor(plan: Plan, task: TensorTask, tensors: list[torch.Tensor], device: str = "cpu", *,
                   state: Any = None, start: int = 0) -> torch.Tensor:
    """Apply the plan's method to one output tensor's inputs (already fetched): whole
    tensors, or with the method's prepared `state` a flat slice beginning at `start`."""
    if task.copy_only:
        return tensors[task.base_index or 0]
    work = TORCH_DTYPES.get(plan.recipe.dtype or "")
    tensors = [t.to(device=device, dtype=work or t.dtype, non_blocking=True) for t in tensors]
    try:
        out = plan.method(tensors, task.base_index, task.shared, task.per_input, _seeds(plan, task),
                          state=state, start=start)
    except ModelGlueError as exc:
        raise ModelGlueError(f"tensor {task.name}: {exc}") from None
    out = out.to(task.dtype)
    # A sum is finite iff every entry is (short of overflow, which the exact check below
    # then settles): a single pass, no mask the size of the tensor.
    if out.is_floating_point() and not math.isfinite(float(out.sum())) \
            and not bool(torch.isfinite(out).all()):
        bad = [plan.models[m].name for (m, n), t in zip(task.inputs, tensors) if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        why = f"non-finite values in input {', '.join(bad)}" if bad else "the result is not finite (weights summing to zero?)"
        raise ModelGlueError(f"tensor {task.name}: {why}")
    return out


def _seeds(plan: Plan, task: TensorTask) -> list[int] | None:
    """Randomised methods get one seed per non-base input, from (seed, tensor, input)."""
    if not plan.method.randomized:
        return None
    return [derive_seed(plan.seed, task.name, str(i)) for i in range(len(task.inputs)) if i != task.base_index]


def prepare_state(plan: Plan, task: TensorTask, source: Any, device: str = "cpu",
                  keep_inputs: bool = False) -> tuple[Any, list[torch.Tensor | None] | None]:
    """What a two-pass method must know of the whole tensors before chunks of them
    (TIES: each task vector's magnitude ranks), read slice by slice from `source`.
    Returns (state, inputs): with keep_inputs, the whole flat inputs that prepare read
    and left unchanged (None for any it did not read whole), to cut the chunks from."""
    if task.copy_only or plan.method.prepare is None:
        return None, None
    work = TORCH_DTYPES.get(plan.recipe.dtype or "")
    n = math.prod(task.shape)
    whole: dict[int, torch.Tensor] = {}

    # Reads that prepare leaves unchanged are only ever read: map them rather than copy.
    get_part = source.map_part if keep_inputs and device == "cpu" and hasattr(source, "map_part") else source.get_part

    def read(i: int, start: int, stop: int) -> torch.Tensor:
        m, name = task.inputs[i]
        t = get_part(m, name, start, stop)
        t = t.to(device=device, dtype=work or t.dtype)
        if keep_inputs and (start, stop) == (0, n):
            whole[i] = t
        return t

    try:
        state = plan.method.prepare_state(read, task.shape, task.base_index, task.shared, task.per_input,
                                          _seeds(plan, task), keep_inputs=keep_inputs)
    except ModelGlueError as exc:
        raise ModelGlueError(f"tensor {task.name}: {exc}") from None
    return state, [whole.get(i) for i in range(len(task.inputs))] if keep_inputs else None


def _inputs_bytes(task: TensorTask) -> int:
    """What a tensor's inputs take, as float32 (the usual working dtype)."""
    return math.prod(task.shape) * len(task.inputs) * 4


def execute(plan: Plan, source: TensorSource, sink: Callable[[TensorTask, torch.Tensor], None], *,
            device: str = "cpu", prefetch: int = 2, progress: bool = False, desc: str = "merging",
            chunk_elems: int | None = None) -> None:
    """The one executor: for each output tensor, fetch inputs, compute, hand to `sink`.

    With prefetch > 0 the inputs of the next `prefetch` pieces of work are read on a
    background thread while the current one is computed (file reads and torch kernels
    release the GIL), so disk, CPU and device work overlap. With chunk_elems (and a
    source that reads parts), tensors of elementwise methods larger than that are done
    in flat chunks handed to `sink` in order: memory stays a few chunks, not tensors.
    A method's `prepare` (its look at a whole tensor before the chunks) runs on its own
    threads, ahead of the tensor being merged (the next one, and a second one when it is
    small), so that it overlaps the chunks of the current one.
    """
    on_gpu = device.startswith("cuda")
    copy_stream = torch.cuda.Stream(device=device) if on_gpu else None
    chunked = chunk_elems and plan.method.elementwise and hasattr(source, "get_part")
    work: list[tuple[TensorTask, tuple[int, int] | None]] = []
    prepared_tasks: list[TensorTask] = []  # chunked tensors whose method prepares a state, in order
    kept: set[str] = set()  # of those, the ones whose chunks are cut from prepare's own reads
    for task in plan.tasks:
        n = math.prod(task.shape)
        if chunked and not task.copy_only and n > chunk_elems:
            work += [(task, (a, min(n, a + chunk_elems))) for a in range(0, n, chunk_elems)]
            if plan.method.prepare is not None:
                prepared_tasks.append(task)
                if plan.method.prepare_keeps_inputs and _inputs_bytes(task) <= KEEP_INPUTS_BYTES:
                    kept.add(task.name)
        else:
            work.append((task, None))
    preparer = ThreadPoolExecutor(max_workers=PREPARE_AHEAD, thread_name_prefix="modelglue-prepare") \
        if prepared_tasks else None
    states: dict[str, Future] = {}

    def state_of(task: TensorTask) -> Any:
        """The prepared state of `task`, after queueing the next chunked tensors': the next
        one always, further ones (up to PREPARE_AHEAD in all) while their inputs are small."""
        k = next(i for i, t in enumerate(prepared_tasks) if t is task)
        small = 0
        for ahead, t in enumerate(prepared_tasks[k:k + 1 + PREPARE_AHEAD]):
            if ahead > 1:
                small += _inputs_bytes(t)
                if small > PREPARE_AHEAD_BYTES:
                    break
            if t.name not in states:
                states[t.name] = preparer.submit(  # type: ignore[union-attr]
                    prepare_state, plan, t, source, device, t.name in kept)
        return states.pop(task.name).result()

    def fetch(item: tuple[TensorTask, tuple[int, int] | None]) -> tuple[list[torch.Tensor] | None, Any]:
        task, part = item
        if part is not None and task.name in kept:
            return None, None  # cut from prepare's reads when its turn comes
        if part is None:
            tensors = [source.get(m, n) for m, n in task.inputs]
        else:
            tensors = [source.get_part(m, n, *part) for m, n in task.inputs]  # type: ignore[attr-defined]
        if copy_stream is None or all(t.device.type == "cuda" for t in tensors):
            return tensors, None
        # Host-to-device copies on a side stream, so they overlap the previous tensor's kernels.
        with torch.cuda.stream(copy_stream):
            tensors = [t.to(device, non_blocking=True) for t in tensors]
            done = torch.cuda.Event()
            done.record(copy_stream)
        return tensors, done

    state: Any = None
    whole_inputs: list[torch.Tensor | None] | None = None  # prepare's reads of the current tensor, if kept

    def run(item: tuple[TensorTask, tuple[int, int] | None], fetched: tuple[list[torch.Tensor] | None, Any]) -> None:
        nonlocal state, whole_inputs
        (task, part), (tensors, done) = item, fetched
        if done is not None:
            main_stream = torch.cuda.current_stream(device)
            main_stream.wait_event(done)
            for t in tensors:  # memory made on the copy stream is now used on the main one
                t.record_stream(main_stream)
        if part is not None and part[0] == 0 and preparer is not None:  # first chunk: the look at the whole
            state, whole_inputs = state_of(task)
        if tensors is None:  # a kept tensor: the chunk is a view of prepare's reads (any it lacks: read now)
            assert part is not None and whole_inputs is not None
            tensors = [w[part[0]:part[1]] if w is not None else source.get_part(m, name, *part)  # type: ignore[attr-defined]
                       for w, (m, name) in zip(whole_inputs, task.inputs)]
        sink(task, compute_tensor(plan, task, tensors, device, state=state, start=part[0] if part else 0))
        if part is None or part[1] == math.prod(task.shape):
            state = whole_inputs = None
            bar.update()

    bar = tqdm(total=len(plan.tasks), desc=desc, unit="tensor", disable=not progress, leave=False)
    try:
        if prefetch <= 0:
            for item in work:
                run(item, fetch(item))
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelglue-read") as reader:
            pending: list[Future] = [reader.submit(fetch, w) for w in work[:prefetch]]
            for i, item in enumerate(work):
                fetched = pending.pop(0).result()
                if i + prefetch < len(work):
                    pending.append(reader.submit(fetch, work[i + prefetch]))
                run(item, fetched)
    finally:
        bar.close()
        if preparer is not None:
            preparer.shutdown(wait=True, cancel_futures=True)


class _BackgroundWriter:
    """Writes outputs on one thread, in order, with at most `depth` outputs in flight.

    Only C-level queues (SimpleQueue) pass between the threads: a KeyboardInterrupt
    (Ctrl-C, or SIGTERM turned into one) can strike the main thread between any two
    bytecodes, and inside queue.Queue's Python-level condition variables it can lose a
    wake-up and leave finish() waiting forever. `slots` holds one token per free place.
    """

    def __init__(self, writer: ShardedWriter, depth: int = 2):
        self.writer = writer
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.slots: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(depth):
            self.slots.put(None)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="modelglue-write", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.writer.write(*item)
                except BaseException as exc:  # surfaced on the main thread
                    self.error = exc
            self.slots.put(None)

    def __call__(self, task: TensorTask, tensor: torch.Tensor) -> None:
        if self.error is not None:
            raise self.error
        self.slots.get()  # wait for a free place (backpressure)
        self.q.put((task.name, tensor))  # a GPU result is copied back on the writer thread

    def finish(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


# ----------------------------------------------------------------------------- merge to disk


def merge(recipe: str | Path | dict | Recipe, out_dir: str | Path, *, device: str = "cpu", seed: int | None = None,
          threads: int | None = None, shard_size: int | None = None, allow_pickle: bool = False,
          overwrite: bool = False, progress: bool = False, fsync: bool = False) -> Path:
    """Merge as a recipe says and write a Hugging Face model directory at out_dir.

    Everything is validated before any tensor is read; the output is assembled in a
    hidden sibling directory and renamed into place only when complete. On the CPU this
    sets glibc's malloc thresholds for the rest of the process (io.keep_freed_memory).
    """
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
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
        _merge_planned(plan, out_dir, device, shard_size, progress, fsync)
    finally:
        torch.set_num_threads(old_threads)
    return out_dir


def _merge_planned(plan: Plan, out_dir: Path, device: str, shard_size: int | None, progress: bool,
                   fsync: bool) -> None:
    with atomic_output_dir(out_dir) as tmp:
        writer = ShardedWriter(tmp, plan.specs(), shard_size, metadata={"merged_by": "modelglue"}, fsync=fsync)
        background = _BackgroundWriter(writer)
        try:
            execute(plan, DiskSource(plan.checkpoints, pin_memory=device.startswith("cuda")), background,
                    device=device, progress=progress, chunk_elems=CHUNK_ELEMS)
        finally:
            background.finish()
        writer.close()
        _write_model_files(plan, tmp)


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


def output_config(plan: Plan) -> dict:
    """config.json of the result: the reference model's, with depth, per-layer lists and dtype updated."""
    rec = plan.recipe
    ref_idx = plan.models.index(rec.base_model) if rec.base_model in plan.models else \
        plan.models.index(rec.slices[0].sources[0].model)
    config = json.loads(json.dumps(plan.checkpoints[ref_idx].config))
    target = config.get("text_config") if "text_config" in config and not any(
        k in config for k in ("num_hidden_layers", "n_layer", "num_layers")) else config
    per_layer = per_layer_config_keys(target)
    src_cfgs = [ck.config.get("text_config", ck.config) for ck in plan.checkpoints]
    for key in per_layer:  # keep per-layer lists (e.g. layer_types) consistent with the new depth
        target[key] = [src_cfgs[m][key][layer] if isinstance(src_cfgs[m].get(key), list) and layer < len(src_cfgs[m][key])
                       else target[key][min(layer, len(target[key]) - 1)] for m, layer in plan.layer_origin]
    target[layer_count_key(target)] = plan.num_out_layers
    if "max_window_layers" in target and isinstance(target["max_window_layers"], int):
        target["max_window_layers"] = min(target["max_window_layers"], plan.num_out_layers)
    out_dtype = next((t.dtype for t in plan.tasks if t.dtype.is_floating_point), None)
    if out_dtype is not None:
        for key in ("torch_dtype", "dtype"):
            if key in config or key == "dtype":
                config[key] = TORCH_DTYPE_NAMES[out_dtype]
    return config


def _write_model_files(plan: Plan, out: Path) -> None:
    rec = plan.recipe
    (out / "config.json").write_text(json.dumps(output_config(plan), indent=2) + "\n")
    tok_src = rec.tokenizer_source
    if tok_src in (None, "base"):
        tok_src = rec.base_model or rec.slices[0].sources[0].model
    copy_tokenizer_files(Path(tok_src), out)
    (out / "mergekit_config.yml").write_text(recipe_to_yaml(rec.raw))
    (out / "README.md").write_text(model_card(plan))


def model_card(plan: Plan) -> str:
    rec = plan.recipe
    lines = [
        "---", "library_name: transformers", "tags:", "- modelglue", "- merge", "---", "",
        "# Merged model", "",
        f"Made with [modelglue](https://github.com/) using the **{rec.merge_method}** method"
        + (f" ({plan.method.reference})" if plan.method.reference else "") + ".", "",
    ]
    if rec.base_model:
        lines += [f"Base model: `{rec.base_model}`", ""]
    lines += ["## Inputs", ""] + [f"- `{m}`" for m in plan.models] + [""]
    lines += [f"Output: {plan.num_out_layers} layers, {len(plan.tasks)} tensors.", ""]
    if plan.method.randomized:
        lines += [f"Random seed: {plan.seed}", ""]
    lines += ["## Recipe", "", "```yaml", recipe_to_yaml(rec.raw).rstrip(), "```", ""]
    return "\n".join(lines)


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
