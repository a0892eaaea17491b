"""modelglue: scale language models by aggregating a zoo of checkpoints without training.

The package imports cheaply (no torch): `modelglue --help` answers at once, and the
names below load on first use. Importing it registers the mixture types with
transformers' Auto classes (lazily too), so a saved mixture loads with
`AutoModelForCausalLM.from_pretrained` after `import modelglue`.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

import modelglue.mixture  # noqa: F401  (registers the mixture types; cheap, see mixture/autoregister.py)
from modelglue.errors import ModelGlueError

__version__ = "0.1.0"

_LAZY = {"InMemoryMerger": "modelglue.merge", "merge": "modelglue.merge", "load_recipe": "modelglue.recipe"}

if TYPE_CHECKING:  # pragma: no cover
    from modelglue.merge import InMemoryMerger, merge
    from modelglue.recipe import load_recipe


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'modelglue' has no attribute {name!r}")


class _Package(types.ModuleType):
    """`modelglue.merge` is the merge function, and also the name of a submodule. Loading
    the submodule sets the package attribute to the module; this property keeps the
    function there (as the eager `from modelglue.merge import merge` used to)."""

    @property
    def merge(self) -> Any:
        return importlib.import_module("modelglue.merge").merge

    @merge.setter
    def merge(self, value: Any) -> None:
        pass  # the import system's setattr(package, "merge", submodule)


sys.modules[__name__].__class__ = _Package


__all__ = ["InMemoryMerger", "ModelGlueError", "load_recipe", "merge", "__version__"]
