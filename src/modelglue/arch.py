"""What a tensor name means, for any Hugging Face decoder, from names and config.json alone.

Decoder checkpoints name their blocks `<prefix>.<layers|h|blocks>.<index>.<rest>`
(Llama, Mistral, Qwen2: model.layers.N; GPT-2: transformer.h.N; GPT-NeoX:
gpt_neox.layers.N). Everything outside the blocks is either before them (embeddings)
or after them (final norm, lm_head), which matters for merge gradients and slicing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|blocks|layer|block)\.)(?P<index>\d+)(?P<rest>\..+)$")
_EMBED_HINTS = ("embed", "wte", "wpe", "word_embeddings", "embeddings.")
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


@dataclass(frozen=True)
class TensorRole:
    """Where a tensor sits: 'pre' (before the blocks), 'layer' (inside block `layer`), or 'post'."""

    kind: str
    layer: int | None = None
    prefix: str = ""
    rest: str = ""


def tensor_role(name: str) -> TensorRole:
    m = _LAYER.match(name)
    if m:
        return TensorRole("layer", int(m["index"]), m["prefix"], m["rest"])
    if any(h in name for h in _EMBED_HINTS):
        return TensorRole("pre")
    return TensorRole("post")


def layer_name(role: TensorRole, index: int) -> str:
    """The name of the same tensor in block `index`."""
    assert role.kind == "layer"
    return f"{role.prefix}{index}{role.rest}"


def num_layers(config: dict, names: list[str] | None = None) -> int:
    """Decoder depth from config.json (or, failing that, from the tensor names)."""
    for key in _LAYER_COUNT_KEYS:
        if isinstance(config.get(key), int):
            return config[key]
    text_cfg = config.get("text_config")
    if isinstance(text_cfg, dict):
        return num_layers(text_cfg, names)
    if names:
        layers = {r.layer for r in map(tensor_role, names) if r.kind == "layer"}
        return max(layers) + 1 if layers else 0
    return 0


def layer_count_key(config: dict) -> str:
    for key in _LAYER_COUNT_KEYS:
        if key in config:
            return key
    return "num_hidden_layers"


def per_layer_config_keys(config: dict) -> list[str]:
    """Config entries that hold one value per layer (e.g. Qwen2's layer_types); slicing
    must remap them together with the layers or the config stops validating."""
    n = num_layers(config)
    return [k for k, v in config.items() if isinstance(v, list) and n > 0 and len(v) == n and k.startswith("layer")]


def group_by_layer(names: list[str]) -> tuple[list[str], dict[int, list[str]], list[str]]:
    """Split tensor names into (pre, {layer: names}, post), each in the given order."""
    pre, post, layers = [], [], {}
    for n in names:
        r = tensor_role(n)
        if r.kind == "layer":
            layers.setdefault(r.layer, []).append(n)
        elif r.kind == "pre":
            pre.append(n)
        else:
            post.append(n)
    return pre, dict(sorted(layers.items())), post


def config_vocab_size(config: dict) -> int | None:
    """vocab_size from config.json (or its text_config)."""
    for cfg in (config, config.get("text_config")):
        if isinstance(cfg, dict) and isinstance(cfg.get("vocab_size"), int):
            return cfg["vocab_size"]
    return None
