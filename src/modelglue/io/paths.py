"""Small file-system rules used everywhere: write a file atomically, read a JSON object
with a one-line error, and never put an output inside (or around) an input model."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

from modelglue.errors import ModelGlueError


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one,
    never half of it: a temporary file in the same directory, then os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def path_exists(path: Path) -> bool:
    """Path.exists that says False (instead of raising) for names too long or with NUL bytes."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object (config.json, adapter_config.json): one-line errors."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelGlueError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelGlueError(f"{path}: expected a JSON object")
    return value


def check_outside_inputs(out_dir: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output directory that is an input model, lies inside one, or holds one."""
    out = Path(out_dir).resolve()
    for p in inputs:
        src = Path(p).resolve()
        if out == src:
            raise ModelGlueError(f"output directory {out_dir} is input model {p}: choose another output directory")
        if out.is_relative_to(src):
            raise ModelGlueError(f"output directory {out_dir} lies inside input model {p}")
        if src.is_relative_to(out):
            raise ModelGlueError(f"output directory {out_dir} holds input model {p}")
