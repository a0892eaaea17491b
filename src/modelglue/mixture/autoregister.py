"""Register the mixture types with transformers' Auto classes, without importing
transformers when modelglue is imported.

`import modelglue` must stay cheap (the CLI imports it for every command), yet
`AutoModelForCausalLM.from_pretrained(mixture_dir)` must work after it. So: if
transformers' auto modules are already loaded, register now; otherwise a small
import hook registers the configs right after `transformers.models.auto.configuration_auto`
finishes executing and the models right after `...modeling_auto` does.
"""
from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import Callable

CONFIG_MODULE = "transformers.models.auto.configuration_auto"
MODEL_MODULE = "transformers.models.auto.modeling_auto"


def _register(module: str, function: str) -> Callable[[], None]:
    """A callback that calls modelglue's `module.function()` (it registers the mixture types)."""
    def callback() -> None:
        mod = sys.modules.get(module)
        if mod is not None and not hasattr(mod, function):
            return  # half executed (importing it pulled transformers in): it registers itself when done
        getattr(importlib.import_module(module), function)()
    return callback


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback once a given module has finished executing."""

    def __init__(self) -> None:
        self.callbacks: dict[str, Callable[[], None]] = {}

    def find_spec(self, fullname, path, target=None):
        callback = self.callbacks.get(fullname)
        if callback is None:
            return None
        spec = None
        for finder in sys.meta_path:  # ask the finders after us for the real spec
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            if self.callbacks.pop(fullname, None) is not None:
                callback()
            if not self.callbacks and self in sys.meta_path:
                sys.meta_path.remove(self)

        spec.loader.exec_module = exec_module  # this spec's own loader instance
        return spec


_hook = _AfterImport()


def install() -> None:
    """Register now where transformers is loaded, else when it gets loaded (idempotent)."""
    for module, callback in ((CONFIG_MODULE, _register("modelglue.mixture.configuration", "register_configs")),
                             (MODEL_MODULE, _register("modelglue.mixture.modeling", "register_models"))):
        if module in sys.modules:
            callback()
        else:
            _hook.callbacks[module] = callback
    if _hook.callbacks and _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)
