"""Execution: one Executor walks a plan (see engine/__init__.py); the sources it reads
from, and the background writer of merge-to-disk."""
from __future__ import annotations

import math
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from tqdm.auto import tqdm

from modelglue.errors import ModelGlueError
from modelglue.engine.output import write_model_files
from modelglue.engine.plan import Plan, TensorTask
from modelglue.io import BufferPool, Checkpoint, ShardedWriter, atomic_output_dir
from modelglue.methods.task_vectors import derive_seed


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
                   state: Any = None, start: int = 0, into: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the plan's method to one output tensor's inputs (already fetched): whole
    tensors, or with the method's prepared `state` a flat slice beginning at `start`.
    `into`: a tensor of the output's shape that the method writes into where it can
    (see MergeMethod.writes_out; the result is then `into` itself, else a new tensor)."""
    if task.copy_only:
        return tensors[task.base_index or 0]
    stored = tensors[task.base_index or 0].dtype
    tensors = [_as_work(plan, t, device) for t in tensors]
    if into is not None and not (plan.method.writes_out and into.dtype == task.dtype in (torch.float32, torch.float64)
                                 and all(t.dtype == into.dtype for t in tensors)):
        into = None  # a conversion lies between the arithmetic and the output
    try:
        out = plan.method(tensors, task.base_index, task.shared, task.per_input, _seeds(plan, task),
                          state=state, start=start, round_to=plan.round_to(stored), out=into)
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


def _as_work(plan: Plan, t: torch.Tensor, device: str) -> torch.Tensor:
    """An input in the dtype the arithmetic runs in, holding the values mergekit's
    arithmetic starts from (a float32 input of a bfloat16 recipe is rounded first)."""
    t = t.to(device=device, dtype=plan.mergekit_dtype(t.dtype), non_blocking=True)
    return t.to(plan.work_dtype(t.dtype))


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
    n = math.prod(task.shape)
    m, name = task.inputs[task.base_index or 0]
    round_to = plan.round_to(plan.checkpoints[m].dtype(name))
    whole: dict[int, torch.Tensor] = {}

    # Reads that prepare leaves unchanged are only ever read: map them rather than copy.
    get_part = source.map_part if keep_inputs and device == "cpu" and hasattr(source, "map_part") else source.get_part

    def read(i: int, start: int, stop: int) -> torch.Tensor:
        m, name = task.inputs[i]
        t = get_part(m, name, start, stop)
        t = _as_work(plan, t, device)
        if keep_inputs and (start, stop) == (0, n):
            whole[i] = t
        return t

    try:
        state = plan.method.prepare_state(read, task.shape, task.base_index, task.shared, task.per_input,
                                          _seeds(plan, task), keep_inputs=keep_inputs, round_to=round_to)
    except ModelGlueError as exc:
        raise ModelGlueError(f"tensor {task.name}: {exc}") from None
    return state, [whole.get(i) for i in range(len(task.inputs))] if keep_inputs else None


def _inputs_bytes(task: TensorTask) -> int:
    """What a tensor's inputs take, as float32 (the usual working dtype)."""
    return math.prod(task.shape) * len(task.inputs) * 4


Item = tuple[TensorTask, "tuple[int, int] | None"]  # an output tensor, whole or a flat chunk of it


class Executor:
    """For each output tensor: fetch its inputs, compute, hand the result to `sink`.

    With prefetch > 0 the inputs of the next `prefetch` pieces of work are read on a
    background thread while the current one is computed (file reads and torch kernels
    release the GIL), so disk, CPU and device work overlap. With chunk_elems (and a
    source that reads parts), tensors of elementwise methods larger than that are done
    in flat chunks handed to `sink` in order: memory stays a few chunks, not tensors.
    A method's `prepare` (its look at a whole tensor before the chunks) runs on its own
    threads, ahead of the tensor being merged (the next one, and a second one when it is
    small), so that it overlaps the chunks of the current one.
    """

    def __init__(self, plan: Plan, source: TensorSource, sink: Callable[[TensorTask, torch.Tensor], None], *,
                 device: str = "cpu", prefetch: int = 2, progress: bool = False, desc: str = "merging",
                 chunk_elems: int | None = None):
        self.plan, self.source, self.sink, self.device, self.prefetch = plan, source, sink, device, prefetch
        self.progress, self.desc = progress, desc
        self.copy_stream = torch.cuda.Stream(device=device) if device.startswith("cuda") else None
        self.work: list[Item] = []
        self.prepared: list[TensorTask] = []  # chunked tensors whose method prepares a state, in order
        self.kept: set[str] = set()  # of those, the ones whose chunks are cut from prepare's own reads
        chunked = chunk_elems and plan.method.elementwise and hasattr(source, "get_part")
        for task in plan.tasks:
            n = math.prod(task.shape)
            if chunked and not task.copy_only and n > chunk_elems and task.prepare_inputs is None:
                self.work += [(task, (a, min(n, a + chunk_elems))) for a in range(0, n, chunk_elems)]
                if plan.method.prepare is not None:
                    self.prepared.append(task)
                    if plan.method.prepare_keeps_inputs and _inputs_bytes(task) <= KEEP_INPUTS_BYTES:
                        self.kept.add(task.name)
            else:
                self.work.append((task, None))
        self.states: dict[str, Future] = {}
        self.state: Any = None  # the current tensor's prepared state
        self.whole_inputs: list[torch.Tensor | None] | None = None  # prepare's reads of it, if kept

    def run(self) -> None:
        preparer = ThreadPoolExecutor(PREPARE_AHEAD, thread_name_prefix="modelglue-prepare") if self.prepared else None
        self.preparer = preparer
        self.bar = tqdm(total=len(self.plan.tasks), desc=self.desc, unit="tensor", disable=not self.progress,
                        leave=False)
        try:
            if self.prefetch <= 0:
                for item in self.work:
                    self._compute(item, self._fetch(item))
                return
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelglue-read") as reader:
                pending = [reader.submit(self._fetch, w) for w in self.work[:self.prefetch]]
                for i, item in enumerate(self.work):
                    fetched = pending.pop(0).result()
                    if i + self.prefetch < len(self.work):
                        pending.append(reader.submit(self._fetch, self.work[i + self.prefetch]))
                    self._compute(item, fetched)
        finally:
            self.bar.close()
            if preparer is not None:
                preparer.shutdown(wait=True, cancel_futures=True)

    def _state_of(self, task: TensorTask) -> Any:
        """The prepared state of `task`, after queueing the next chunked tensors': the next
        one always, further ones (up to PREPARE_AHEAD in all) while their inputs are small."""
        k = next(i for i, t in enumerate(self.prepared) if t is task)
        small = 0
        for ahead, t in enumerate(self.prepared[k:k + 1 + PREPARE_AHEAD]):
            if ahead > 1:
                small += _inputs_bytes(t)
                if small > PREPARE_AHEAD_BYTES:
                    break
            if t.name not in self.states:
                self.states[t.name] = self.preparer.submit(
                    prepare_state, self.plan, t, self.source, self.device, t.name in self.kept)
        return self.states.pop(task.name).result()

    def _fetch(self, item: Item) -> tuple[list[torch.Tensor] | None, Any]:
        """The inputs of one piece of work (on the reader thread), and a CUDA event when
        they are still being copied to the device."""
        task, part = item
        if part is not None and task.name in self.kept:
            return None, None  # cut from prepare's reads when its turn comes
        if part is None:
            tensors = [self.source.get(m, n) for m, n in task.inputs]
            if task.prepare_inputs is not None:  # e.g. embedding rows onto the output vocabulary
                tensors = task.prepare_inputs(tensors)
        else:
            tensors = [self.source.get_part(m, n, *part) for m, n in task.inputs]  # type: ignore[attr-defined]
        if self.copy_stream is None or all(t.device.type == "cuda" for t in tensors):
            return tensors, None
        # Host-to-device copies on a side stream, so they overlap the previous tensor's kernels.
        with torch.cuda.stream(self.copy_stream):
            tensors = [t.to(self.device, non_blocking=True) for t in tensors]
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        return tensors, done

    def _compute(self, item: Item, fetched: tuple[list[torch.Tensor] | None, Any]) -> None:
        (task, part), (tensors, done) = item, fetched
        if done is not None:
            main_stream = torch.cuda.current_stream(self.device)
            main_stream.wait_event(done)
            for t in tensors:  # memory made on the copy stream is now used on the main one
                t.record_stream(main_stream)
        if part is not None and part[0] == 0 and self.prepared:  # first chunk: the look at the whole
            self.state, self.whole_inputs = self._state_of(task)
        if tensors is None:  # a kept tensor: the chunk is a view of prepare's reads (any it lacks: read now)
            tensors = [w[part[0]:part[1]] if w is not None else self.source.get_part(m, name, *part)  # type: ignore[attr-defined]
                       for w, (m, name) in zip(self.whole_inputs, task.inputs)]
        self.sink(task, compute_tensor(self.plan, task, tensors, self.device, state=self.state,
                                       start=part[0] if part else 0))
        if part is None or part[1] == math.prod(task.shape):
            self.state = self.whole_inputs = None
            self.bar.update()


def execute(plan: Plan, source: TensorSource, sink: Callable[[TensorTask, torch.Tensor], None], **options: Any) -> None:
    """Run an Executor over the plan (options as Executor's)."""
    Executor(plan, source, sink, **options).run()


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


def write_merge(plan: Plan, out_dir: Path, device: str, shard_size: int | None, progress: bool,
                fsync: bool) -> None:
    """Stream the plan from disk into sharded safetensors in a hidden sibling of out_dir,
    with the model files, renamed into place only when complete."""
    with atomic_output_dir(out_dir) as tmp:
        writer = ShardedWriter(tmp, plan.specs(), shard_size, metadata={"merged_by": "modelglue"}, fsync=fsync)
        background = _BackgroundWriter(writer)
        try:
            execute(plan, DiskSource(plan.checkpoints, pin_memory=device.startswith("cuda")), background,
                    device=device, progress=progress, chunk_elems=CHUNK_ELEMS)
        finally:
            background.finish()
        writer.close()
        write_model_files(plan, tmp)
