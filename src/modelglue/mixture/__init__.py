"""Mixtures of experts built from whole models, without training.

    from modelglue.mixture import mix
    mix("ffn", ["zoo/a_add", "zoo/a_rev"], "out/moe", router="hidden", router_data="route.jsonl")
    mix("model", ["zoo/a_base", "zoo/c_base"], "out/mm", router="trained", router_data="route.jsonl")
    mix_moe_config("moe.yml", "out/moe")          # a mergekit-moe config, unchanged

Importing this package (as `import modelglue` does) registers the block- and model-level
mixture types with transformers' Auto classes, lazily: see autoregister.py. FFN-level
mixtures are plain Mixtral and need nothing. The names below load on first use so
that the import itself stays cheap.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from modelglue.mixture.autoregister import install as _install

_install()

_LAZY = {
    "LEVELS": "build", "MixReport": "build", "mix": "build", "mix_moe_config": "moe_config",
    "RouterExample": "data", "load_router_data": "data", "parse_router_examples": "data",
    "BlockMixtureConfig": "configuration", "ModelMixtureConfig": "configuration",
    "BlockMixtureForCausalLM": "modeling", "ModelMixtureForCausalLM": "modeling",
    "ROUTER_KINDS": "routers", "LinearRouter": "routers",
}

if TYPE_CHECKING:  # pragma: no cover
    from modelglue.mixture.build import LEVELS, MixReport, mix
    from modelglue.mixture.configuration import BlockMixtureConfig, ModelMixtureConfig
    from modelglue.mixture.data import RouterExample, load_router_data, parse_router_examples
    from modelglue.mixture.modeling import BlockMixtureForCausalLM, ModelMixtureForCausalLM
    from modelglue.mixture.moe_config import mix_moe_config
    from modelglue.mixture.routers import ROUTER_KINDS, LinearRouter


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"modelglue.mixture.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'modelglue.mixture' has no attribute {name!r}")


__all__ = sorted(_LAZY)
