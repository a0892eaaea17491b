"""Where evaluation caches live (scores, exported lm-eval tasks): a leaf module, so that
core.py and lmeval.py both use it without importing each other."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user cache root: $XDG_CACHE_HOME/modelglue (default ~/.cache/modelglue)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "modelglue"
