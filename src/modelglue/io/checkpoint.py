"""Hugging Face model directories: open one for streaming reads, write one atomically."""
from __future__ import annotations

import json
import math
import os
import shutil
import threading
import uuid
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import torch

from modelglue.errors import ModelGlueError
from modelglue.io.buffers import BufferPool
from modelglue.io.lora import LoraAdapter, model_directory, split_reference
from modelglue.io.paths import check_outside_inputs, read_json_object
from modelglue.io.safetensors_io import TensorInfo, map_tensor, read_header, read_tensor

PICKLE_FILES = ("pytorch_model.bin", "model.pt", "model.bin")
# Files that travel with the weights into a merged or mixed model.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
)


class Checkpoint:
    """A Hugging Face model directory opened for one-tensor-at-a-time reads.

    Only headers are read on open (and validated); tensor data is read on demand by
    `get`. Pickle checkpoints are refused unless allow_pickle, and then loaded with
    torch.load(weights_only=True), which cannot execute code.

    A `MODEL+ADAPTER` path (mergekit's LoRA reference) reads as MODEL with the PEFT LoRA
    adapter merged into each tensor as it is read (see io/lora.py); `path` stays the
    reference, `model_dir` is MODEL.
    """

    adapter: LoraAdapter | None = None  # the LoRA of a MODEL+ADAPTER reference

    def __init__(self, path: str | Path, *, allow_pickle: bool = False):
        self.path = Path(path)
        ref = split_reference(self.path)
        self.model_dir = ref[0] if ref else self.path
        if not self.model_dir.exists():
            raise ModelGlueError(f"{self.path}: model directory not found")
        if not self.model_dir.is_dir():
            raise ModelGlueError(f"{self.path}: not a directory (expected a Hugging Face model directory)")
        self.config = read_config(self.model_dir)
        self._infos: dict[str, TensorInfo] = {}
        self._pickled: dict[str, torch.Tensor] | None = None
        self.files = self._find_weight_files(allow_pickle)
        self.adapter = LoraAdapter(ref[1]) if ref else None
        if self.adapter is not None:
            self.adapter.check_model(str(self.model_dir), lambda n: self.shape(n) if n in self else None,
                                     tied=bool(self.config.get("tie_word_embeddings")))
            self._merged = _RecentTensors()

    def _find_weight_files(self, allow_pickle: bool) -> list[Path]:
        index = self.model_dir / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                names = set(weight_map.values())
                if not all(isinstance(n, str) for n in names):
                    raise TypeError
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
                raise ModelGlueError(f"{index}: corrupt index (expected a JSON object with a weight_map)") from None
            except OSError as exc:
                raise ModelGlueError(f"{index}: cannot read ({exc.strerror or exc})") from None
            for name in sorted(names):
                # Police the names, not where they resolve: the Hugging Face cache keeps shards
                # as symlinks into ../../blobs, and those are the user's own files.
                parts = PurePosixPath(name).parts if "\\" not in name else None
                if not parts or parts[0] == "/" or ".." in parts or "\x00" in name:
                    raise ModelGlueError(f"{index}: shard {name!r} lies outside the model directory")
            files = sorted(self.model_dir / n for n in names)
            for f in files:
                if not f.is_file():
                    raise ModelGlueError(f"{index}: shard {f.name} is missing")
        else:
            files = sorted(self.model_dir.glob("*.safetensors"))
        if files:
            for f in files:
                infos, _ = read_header(f)
                for name, info in infos.items():
                    if name in self._infos:
                        raise ModelGlueError(f"{self.path}: tensor {name!r} appears in two shards")
                    self._infos[name] = info
            return files
        pickles = [self.model_dir / n for n in PICKLE_FILES if (self.model_dir / n).exists()]
        pickles += sorted(self.model_dir.glob("pytorch_model-*.bin"))
        if pickles:
            if not allow_pickle:
                raise ModelGlueError(
                    f"{self.path}: only pickle weights ({pickles[0].name}); pickles can run code, "
                    "so they are refused unless --allow-pickle (then loaded with weights_only=True)"
                )
            self._pickled = {}
            for f in pickles:
                try:
                    # mmap needs the zip format; legacy (pre-1.6) pickles are read whole, still weights_only
                    with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says enough
                        warnings.simplefilter("ignore")
                        state = torch.load(f, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(f))
                except Exception as exc:  # torch raises UnpicklingError and others
                    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
                    # torch's first line suggests weights_only=False; the useful one names the global or opcode
                    why = next((ln for key in ("GLOBAL", "Unsupported") for ln in lines if key in ln), lines[0])
                    raise ModelGlueError(f"{f}: refused or unreadable pickle ({why})") from None
                if not isinstance(state, dict):
                    raise ModelGlueError(f"{f}: expected a state dict")
                self._pickled.update(state)
            return pickles
        raise ModelGlueError(f"{self.path}: no weights found (model.safetensors or a sharded index)")

    # --- the tensor interface used by the merge executor and the analysis

    def names(self) -> list[str]:
        return list(self._pickled) if self._pickled is not None else list(self._infos)

    def __contains__(self, name: str) -> bool:
        return name in (self._pickled if self._pickled is not None else self._infos)

    def shape(self, name: str) -> tuple[int, ...]:
        if self._pickled is not None:
            return tuple(self._pickled[self._check(name)].shape)
        return self._infos[self._check(name)].shape

    def dtype(self, name: str) -> torch.dtype:
        if self._pickled is not None:
            return self._pickled[self._check(name)].dtype
        return self._infos[self._check(name)].dtype

    def nbytes(self, name: str) -> int:
        if self._pickled is not None:
            t = self._pickled[self._check(name)]
            return t.numel() * t.element_size()
        return self._infos[self._check(name)].nbytes

    def get(self, name: str, pin_memory: bool = False, pool: BufferPool | None = None) -> torch.Tensor:
        """Read one tensor into owned memory (page-locked if pin_memory, for GPU copies;
        from `pool` if given)."""
        if self.adapter is not None and name in self.adapter:
            return self.adapter.apply(name, self._read(name, pin_memory, pool))
        return self._read(name, pin_memory, pool)

    def _read(self, name: str, pin_memory: bool = False, pool: BufferPool | None = None) -> torch.Tensor:
        if self._pickled is not None:
            t = self._pickled[self._check(name)]
            return t.pin_memory() if pin_memory else t.clone()
        return read_tensor(self._infos[self._check(name)], pin_memory, pool)

    def info(self, name: str) -> TensorInfo | None:
        """Where the tensor lies on disk (file, offset, size); None for pickle checkpoints
        and for tensors a LoRA adapter changes."""
        return None if self._pickled is not None or self._patched(name) else self._infos[self._check(name)]

    def get_flat(self, name: str, start: int, stop: int, pin_memory: bool = False,
                 pool: BufferPool | None = None) -> torch.Tensor:
        """Elements [start, stop) of the flattened tensor, reading only those bytes
        (so a tensor can be streamed in blocks of rows)."""
        if self._patched(name):
            return self._merged_flat(name)[start:stop].clone()
        if self._pickled is not None:
            return self._pickled[self._check(name)].reshape(-1)[start:stop].clone()
        return read_tensor(self._part(name, start, stop), pin_memory, pool)

    def map_flat(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of the flattened tensor, mapped from the file rather
        than copied (see map_tensor: for brief, read-only uses)."""
        if self._patched(name):
            return self._merged_flat(name)[start:stop]
        if self._pickled is not None:
            return self.get_flat(name, start, stop)
        return map_tensor(self._part(name, start, stop))

    def _patched(self, name: str) -> bool:
        return self.adapter is not None and name in self.adapter

    def _merged_flat(self, name: str) -> torch.Tensor:
        """A changed tensor read in parts is merged whole once and kept while its parts
        are read: B @ A of a few rows is not bit-identical to those rows of B @ A."""
        return self._merged.get(name, lambda: self.get(name).reshape(-1))

    def _part(self, name: str, start: int, stop: int) -> TensorInfo:
        info = self._infos[self._check(name)]
        item = info.nbytes // max(1, math.prod(info.shape))
        return TensorInfo(info.path, info.offset + start * item, (stop - start) * item, info.dtype, (stop - start,))

    def _check(self, name: str) -> str:
        if name not in self:
            raise ModelGlueError(f"{self.path}: tensor {name!r} not found")
        return name

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r})"


class _RecentTensors:
    """The last few tensors computed, by name (thread-safe; the executor reads ahead)."""

    KEEP = 3  # the tensor being merged and the two its prepare step may read ahead

    def __init__(self) -> None:
        self._items: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def get(self, name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        with self._lock:
            if name not in self._items:
                self._items[name] = compute()
                while len(self._items) > self.KEEP:
                    del self._items[next(iter(self._items))]
            return self._items[name]


def read_config(path: Path) -> dict:
    cfg = path / "config.json"
    if not cfg.exists():
        raise ModelGlueError(f"{path}: config.json is missing (expected a Hugging Face model directory)")
    return read_json_object(cfg)


def load_tokenizer(path: str | Path):
    """The tokenizer of a model directory (MODEL's for a MODEL+ADAPTER reference: an adapter
    changes no vocabulary), from local files only; None when it has no tokenizer files."""
    from transformers import AutoTokenizer

    path = model_directory(path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds; the user needs one line
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise ModelGlueError(f"{path}: cannot load its tokenizer ({type(exc).__name__}: {first})") from None


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer and generation-config files from a model directory."""
    copied = []
    src = model_directory(src)  # a LoRA reference: the model's tokenizer, as mergekit
    for name in TOKENIZER_FILES + ("generation_config.json",):
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def check_output_dir(out_dir: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuse outputs that would clobber an input or an unrelated existing directory."""
    check_outside_inputs(out_dir, inputs)
    if out_dir.exists() and not overwrite:
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise ModelGlueError(f"output directory {out_dir} already exists and is not empty (pass --overwrite)")


@contextmanager
def atomic_output_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces out_dir in one rename.

    An interrupted or failed write leaves at most a hidden `.NAME.tmp-PID-*` sibling, never
    a directory at out_dir that looks complete. Siblings left by a process that no longer
    runs (a SIGKILL, a power cut) are removed by the next write to the same out_dir. An
    OSError while writing (disk full, read-only filesystem) becomes a one-line
    ModelGlueError naming the file, after the temporary directory is removed.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_siblings(out_dir)
        tmp.mkdir()
    except OSError as exc:
        raise ModelGlueError(f"{out_dir}: cannot create the output directory ({exc.strerror or exc})") from None
    try:
        yield tmp
        _fsync_dir(tmp)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
        _fsync_dir(out_dir.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        names = [str(f) for f in (exc.filename2, exc.filename) if f]  # copyfile: filename2 is the target
        ours = [n for n in names if n.startswith(str(tmp))]
        if ours or not names:  # name the file as the user will know it, not the deleted temp dir
            name = str(out_dir) + (ours[0][len(str(tmp)):] if ours else "")
            raise ModelGlueError(f"{name}: cannot write ({exc.strerror or exc})") from None
        raise ModelGlueError(f"{names[-1]}: {exc.strerror or exc}") from None
    except ModelGlueError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if str(tmp) in str(exc):  # name the output as the user knows it, not the deleted temp dir
            raise type(exc)(str(exc).replace(str(tmp), str(out_dir))) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_siblings(out_dir: Path) -> None:
    """Delete `.NAME.tmp-PID-*` / `.NAME.old-PID-*` siblings whose process is gone."""
    prefix = f".{out_dir.name}."
    for p in out_dir.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        kind, _, rest = p.name[len(prefix):].partition("-")
        pid = rest.split("-", 1)[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or not p.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running (another merge into the same place): leave it alone
        except ProcessLookupError:
            pass
        except OSError:  # exists but not ours (EPERM): alive
            continue
        shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
