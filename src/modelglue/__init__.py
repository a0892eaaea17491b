"""modelglue: scale language models by aggregating a zoo of checkpoints without training."""
from __future__ import annotations

from modelglue.errors import ModelGlueError
from modelglue.merge import InMemoryMerger, merge
from modelglue.recipe import load_recipe
import modelglue.mixture  # registers the mixture types with transformers' Auto classes (lazily)

__version__ = "0.1.0"
__all__ = ["InMemoryMerger", "ModelGlueError", "load_recipe", "merge", "__version__"]
