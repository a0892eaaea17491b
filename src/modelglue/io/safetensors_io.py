"""Safetensors reading and writing, one tensor at a time.

Reading parses and validates the header ourselves (so a corrupt or hostile file fails
with a one-line error before any data is touched) and reads each tensor with a plain
positioned read into memory of its own. We deliberately do not keep a long-lived mmap:
pages touched through a mapping stay in the process's RSS until unmapped, and a file
truncated under an mmap kills the process with SIGBUS instead of raising. Only
`map_tensor` maps, one tensor for the short while it is merged, where a copy would cost
more than the arithmetic.

Writing knows every output name, shape and dtype before the first byte (the merge plan
does), so the header and shard layout are fixed up front and tensors are streamed to
their offsets in order: peak memory is one tensor, whatever the model size.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
import torch

from modelglue.errors import ModelGlueError
from modelglue.io.buffers import BufferPool

# safetensors dtype tag <-> torch dtype (the subset transformers checkpoints use)
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
if hasattr(torch, "float8_e4m3fn"):
    DTYPES["F8_E4M3"] = torch.float8_e4m3fn
    DTYPES["F8_E5M2"] = torch.float8_e5m2
DTYPE_TAGS: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, absolute byte offset, length, dtype and shape."""

    path: Path
    offset: int  # absolute, from the start of the file
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header: every check happens before data is read.

    Returns (tensors by name, the file's __metadata__). Raises ModelGlueError naming the
    file and the problem for truncated files, bad JSON, unknown dtypes, offsets out of
    range, overlapping or non-contiguous data, and sizes that disagree with shapes.
    """
    path = Path(path)
    header, data_start, size = _read_header_json(path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelGlueError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    data_len = size - data_start
    tensors = {name: _tensor_info(path, name, entry, data_start, data_len) for name, entry in header.items()}
    _check_tiling(path, tensors, data_start, data_len)
    return tensors, metadata


def _read_header_json(path: Path) -> tuple[dict, int, int]:
    """The header as a JSON object, where the data starts, and the file size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ModelGlueError(f"{path}: not a safetensors file (only {len(prefix)} bytes)")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise ModelGlueError(
                    f"{path}: corrupt safetensors header (declared length {n} bytes, file is {size} bytes)"
                )
            raw = f.read(n)
    except OSError as exc:
        raise ModelGlueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelGlueError(f"{path}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise ModelGlueError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, 8 + n, size


def _tensor_info(path: Path, name: str, entry: object, data_start: int, data_len: int) -> TensorInfo:
    """One header entry, checked: known dtype, a shape of non-negative ints, offsets inside the data
    that hold exactly shape x itemsize bytes."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) - {"dtype", "shape", "data_offsets"}:
        raise ModelGlueError(f"{where}: malformed header entry")
    tag = entry.get("dtype")
    dtype = DTYPES.get(tag) if isinstance(tag, str) else None  # a list or dict tag is unhashable
    if dtype is None:
        raise ModelGlueError(f"{where}: unsupported dtype {entry.get('dtype')!r}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ModelGlueError(f"{where}: malformed shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise ModelGlueError(f"{where}: data offsets {offsets!r} out of range (data is {data_len} bytes)")
    nbytes = math.prod(shape) * _itemsize(dtype)
    if offsets[1] - offsets[0] != nbytes:
        raise ModelGlueError(
            f"{where}: {offsets[1] - offsets[0]} bytes stored but shape {shape} of {entry['dtype']} needs {nbytes}"
        )
    return TensorInfo(path, data_start + offsets[0], nbytes, dtype, tuple(shape))


def _check_tiling(path: Path, tensors: dict[str, TensorInfo], data_start: int, data_len: int) -> None:
    """Data must be tiled exactly: no overlaps (aliasing tricks) and no holes."""
    end = 0
    for begin, nbytes, name in sorted((info.offset - data_start, info.nbytes, name) for name, info in tensors.items()):
        if begin != end:
            raise ModelGlueError(f"{path}: tensor {name!r} data overlaps or leaves a gap at byte {begin}")
        end = begin + nbytes
    if end != data_len:
        raise ModelGlueError(f"{path}: file is {data_len - end} bytes longer than its tensors (truncated or corrupt)")


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def read_tensor(info: TensorInfo, pin_memory: bool = False, pool: BufferPool | None = None) -> torch.Tensor:
    """Read one tensor into owned, writable memory with a positioned read: fresh, or a
    buffer of `pool` that nothing uses any more. pin_memory reads into page-locked memory
    (torch caches those itself), so a later copy to the GPU is asynchronous."""
    if pool is not None and not pin_memory:
        buf = pool.take(info.nbytes)
    else:
        buf = torch.empty(info.nbytes, dtype=torch.uint8, pin_memory=pin_memory)
    if info.nbytes:
        view = memoryview(buf.numpy()).cast("B")
        try:
            fd = os.open(info.path, os.O_RDONLY)
            try:
                got = 0
                while got < info.nbytes:
                    n = os.preadv(fd, [view[got:]], info.offset + got)
                    if n == 0:
                        raise ModelGlueError(f"{info.path}: truncated while reading (file changed on disk?)")
                    got += n
            finally:
                os.close(fd)
        except OSError as exc:
            raise ModelGlueError(f"{info.path}: read failed ({exc.strerror or exc})") from None
    return buf.view(info.dtype).reshape(info.shape)


def map_tensor(info: TensorInfo) -> torch.Tensor:
    """One tensor mapped from its file instead of copied: a private, copy-on-write
    mapping (a write into the tensor changes neither the file nor anything else), unmapped
    when the tensor and its views are gone. Meant for a tensor used briefly and only read:
    if the file shrank meanwhile the process would get SIGBUS, so its size is checked
    first. Falls back to read_tensor where mapping is not possible."""
    start = info.offset - info.offset % mmap.ALLOCATIONGRANULARITY
    if info.nbytes == 0 or not hasattr(mmap, "MAP_PRIVATE") or info.offset % _itemsize(info.dtype):
        return read_tensor(info)
    try:
        fd = os.open(info.path, os.O_RDONLY)
        try:
            if os.fstat(fd).st_size < info.offset + info.nbytes:
                raise ModelGlueError(f"{info.path}: truncated (file changed on disk?)")
            mapped = mmap.mmap(fd, info.offset + info.nbytes - start, flags=mmap.MAP_PRIVATE,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ModelGlueError(f"{info.path}: read failed ({exc.strerror or exc})") from None
    flat = torch.frombuffer(mapped, dtype=info.dtype, count=info.nbytes // _itemsize(info.dtype),
                            offset=info.offset - start)  # holds the mapping until the tensor is gone
    return flat.reshape(info.shape)


# ----------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class TensorSpec:
    """An output tensor known before it is computed."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)


def plan_shards(specs: list[TensorSpec], shard_size: int | None) -> list[list[TensorSpec]]:
    """Split tensors, in order, into shards of at most shard_size bytes (a tensor larger
    than the limit gets a shard of its own), as transformers' save_pretrained does."""
    shards: list[list[TensorSpec]] = [[]]
    used = 0
    for spec in specs:
        if shard_size and shards[-1] and used + spec.nbytes > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(spec)
        used += spec.nbytes
    return shards


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


class ShardedWriter:
    """Streams tensors into sharded safetensors files whose layout is fixed up front.

    Tensors must be written in the order of `specs`. Each shard's header is written when
    the shard is opened, data is appended at its precomputed offset, and `close()`
    writes model.safetensors.index.json for multi-shard outputs.
    """

    def __init__(self, out_dir: str | Path, specs: list[TensorSpec], shard_size: int | None = None,
                 metadata: dict[str, str] | None = None, fsync: bool = False):
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ModelGlueError(f"output tensor {dup!r} is produced twice (check slices and layer ranges)")
        self.out_dir = Path(out_dir)
        # Process kills are covered by the atomic rename of the output directory; fsync
        # adds power-loss durability at the disk's synced-write speed (opt-in).
        self.fsync = fsync
        self.shards = plan_shards(specs, shard_size)
        self.files = shard_file_names(len(self.shards))
        self.metadata = {"format": "pt", **(metadata or {})}
        self._order = [(i, s) for i, shard in enumerate(self.shards) for s in shard]
        self._next = 0
        self._shard_idx = -1
        self._fh = None
        self.bytes_written = 0
        self._part_bytes = 0  # bytes of the current tensor written so far (chunked tensors)

    def _open_shard(self, idx: int) -> None:
        self._close_shard()
        header: dict = {"__metadata__": self.metadata}
        offset = 0
        for spec in self.shards[idx]:
            header[spec.name] = {
                "dtype": DTYPE_TAGS[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # align data to 8 bytes, like safetensors
        self._fh = open(self.out_dir / self.files[idx], "wb")
        self._fh.write(struct.pack("<Q", len(raw)) + raw)
        self._shard_idx = idx

    def _close_shard(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append `tensor` to the output tensor `name`: the whole tensor in one call, or
        its flattened contents in consecutive parts (for tensors streamed in chunks)."""
        if self._next >= len(self._order):
            raise ModelGlueError(f"unexpected extra output tensor {name!r}")
        shard_idx, spec = self._order[self._next]
        whole = self._part_bytes == 0 and tuple(tensor.shape) == spec.shape
        nbytes = tensor.numel() * tensor.element_size()
        if spec.name != name or tensor.dtype != spec.dtype or not (whole or (tensor.dim() == 1 and self._part_bytes + nbytes <= spec.nbytes)):
            raise ModelGlueError(
                f"output tensor {name!r} {tuple(tensor.shape)} {tensor.dtype} does not match the plan "
                f"({spec.name!r} {spec.shape} {spec.dtype})"
            )
        if shard_idx != self._shard_idx:
            self._open_shard(shard_idx)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        try:
            self._fh.write(memoryview(data))  # type: ignore[union-attr]
        except OSError as exc:
            raise ModelGlueError(f"{self.out_dir}: write failed ({exc.strerror or exc})") from None
        self.bytes_written += nbytes
        self._part_bytes += nbytes
        if self._part_bytes == spec.nbytes:
            self._part_bytes = 0
            self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            missing = self._order[self._next][1].name
            raise ModelGlueError(f"merge ended before output tensor {missing!r} was written")
        try:
            if self._shard_idx == -1 and self.shards == [[]]:
                self._open_shard(0)  # an empty model still gets a valid file
            self._close_shard()
            if len(self.files) > 1:
                weight_map = {s.name: self.files[i] for i, shard in enumerate(self.shards) for s in shard}
                index = {"metadata": {"total_size": sum(s.nbytes for sh in self.shards for s in sh)},
                         "weight_map": weight_map}
                (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        except OSError as exc:
            raise ModelGlueError(f"{self.out_dir}: write failed ({exc.strerror or exc})") from None

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def save_tensors(tensors: dict[str, torch.Tensor], out_dir: str | Path, shard_size: int | None = None) -> list[str]:
    """Write a whole state dict (already in memory) as sharded safetensors; returns file names."""
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    writer = ShardedWriter(out_dir, specs, shard_size)
    for name, t in tensors.items():
        writer.write(name, t)
    writer.close()
    return writer.files

