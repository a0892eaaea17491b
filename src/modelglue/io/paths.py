"""Two small file-system rules used everywhere: write a file atomically, and never put
an output inside (or around) an input model."""
from __future__ import annotations

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
