"""One helper the golden-fixture scripts share: run a mergekit command offline into
`mergekit_out/NAME`, keep only the files a golden test compares, report how it went."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable


def run_tool(cmd: list[str], root: Path, out: Path, keep: Callable[[Path], bool]) -> tuple[bool, str, float]:
    """Run `cmd` in `root` with the hub offline. On success, delete what `keep` rejects in `out`
    and return (True, '', seconds); on failure, remove `out` and return (False, the last lines
    of the tool's output, seconds)."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        lines = [ln for ln in (p.stderr + p.stdout).strip().splitlines() if ln.strip()]
        return False, " | ".join(lines[-3:])[-600:] or f"exit {p.returncode}", seconds
    for f in out.iterdir():
        if not keep(f):
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    return True, "", seconds
