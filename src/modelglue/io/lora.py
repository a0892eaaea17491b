"""PEFT LoRA adapters as inputs: a `MODEL+ADAPTER` reference reads as the model with the
adapter merged in, one tensor at a time.

The reference syntax is mergekit's (`ModelReference`: `<model>+<lora>`). mergekit loads
the whole model with transformers, applies the adapter with PEFT's merge_and_unload and
saves a merged copy; we apply the same update to each tensor when it is read:

    W' = W + scale * B @ A        scale = lora_alpha / r  (lora_alpha / sqrt(r) with use_rslora)

with PEFT's per-module `rank_pattern` / `alpha_pattern`, `fan_in_fan_out` (the update
transposed), embedding LoRAs (`lora_embedding_A/B`, the update transposed), `lora_bias`
(b' = b + scale * lora_B.bias, only when the config sets lora_bias, as in PEFT),
`modules_to_save` (the adapter's full tensor replaces
the model's) and saved embedding layers (`<module>.base_layer.weight`, which PEFT writes
when it targets an embedding: it replaces the model's before the update is added). Arithmetic follows PEFT's merge: B @ A in float32 (PEFT upcasts half
adapters on CPU), times the scale, added in place to the weight in its own dtype.

An adapter is opened from its config and safetensors header alone and checked against
the model's tensor names and shapes before any data is read. Adapter kinds whose merge
is not this formula (DoRA, LoHa, LoKr, IA3, trainable tokens, ...) are refused by name.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from modelglue.errors import ModelGlueError, warn
from modelglue.io.paths import path_exists, read_json_object
from modelglue.io.safetensors_io import TensorInfo, read_header, read_tensor

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # how PEFT names the wrapped model's modules in adapter files
# Config keys that change what merging means; each is refused when set, naming it.
UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA adapters (use_dora) are not supported",
    "layer_replication": "adapters with layer_replication are not supported",
    "trainable_token_indices": "adapters with trainable_token_indices are not supported",
    "target_parameters": "LoRA on parameters (target_parameters) is not supported",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not supported",
    "use_qalora": "QALoRA adapters (use_qalora) are not supported",
    "use_bdlora": "block-diagonal LoRA (use_bdlora) is not supported",
    "arrow_config": "Arrow routing adapters (arrow_config) are not supported",
    "monteclora_config": "MonteCLoRA adapters (monteclora_config) are not supported",
    "kasa_config": "KaSA adapters (kasa_config) are not supported",
    "velora_config": "VeLoRA adapters (velora_config) are not supported",
}
LORA_SUFFIXES = {  # adapter tensor suffix -> (role, kind)
    "lora_A.weight": ("A", "linear"), "lora_B.weight": ("B", "linear"), "lora_B.bias": ("bias", "linear"),
    "lora_embedding_A": ("A", "embedding"), "lora_embedding_B": ("B", "embedding"),
}


def split_reference(path: str | Path) -> tuple[Path, Path] | None:
    """(model directory, adapter directory) for a `MODEL+ADAPTER` reference, else None.

    A path that exists is a plain model directory even if its name holds a '+'. Otherwise
    the first '+' whose left side is a directory splits the reference (mergekit splits at
    the only '+'); a reference whose parts do not exist raises a one-line error.
    """
    text = str(path)
    if "+" not in text or path_exists(Path(text)):
        return None
    cuts = [i for i, c in enumerate(text) if c == "+"]
    for i in cuts:
        model, adapter = Path(text[:i]), Path(text[i + 1:])
        if model.is_dir():
            if not adapter.is_dir():
                raise ModelGlueError(f"{text}: LoRA adapter directory {str(adapter)!r} not found")
            return model, adapter
    raise ModelGlueError(f"{text}: model directory {text[:cuts[0]]!r} of the LoRA reference not found")


def model_directory(path: str | Path) -> Path:
    """The directory holding the config and tokenizer a path names: MODEL for a
    `MODEL+ADAPTER` reference, else the path itself."""
    ref = split_reference(path)
    return ref[0] if ref else Path(path)


def pattern_value(patterns: dict, module: str, default: float) -> float:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of
    the module name at a dot boundary (a regex), else the default."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


@dataclass
class LowRankUpdate:
    """The update of one tensor: scale * B @ A (transposed for fan_in_fan_out and embeddings)."""

    a: TensorInfo
    b: TensorInfo
    scale: float
    transpose: bool

    @property
    def shape(self) -> tuple[int, ...]:
        rows, cols = self.b.shape[0], self.a.shape[1]
        return (cols, rows) if self.transpose else (rows, cols)

    def delta(self) -> torch.Tensor:
        work = torch.promote_types(self.a.dtype, torch.float32)
        product = read_tensor(self.b).to(work) @ read_tensor(self.a).to(work)
        return (product.T if self.transpose else product) * self.scale


@dataclass
class BiasUpdate:
    """lora_bias: the bias gains scale * lora_B.bias."""

    bias: TensorInfo
    scale: float

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bias.shape

    def delta(self) -> torch.Tensor:
        return read_tensor(self.bias).to(torch.promote_types(self.bias.dtype, torch.float32)) * self.scale


@dataclass
class Replacement:
    """modules_to_save: the adapter's own copy of the tensor replaces the model's."""

    tensor: TensorInfo

    @property
    def shape(self) -> tuple[int, ...]:
        return self.tensor.shape


Update = LowRankUpdate | BiasUpdate | Replacement


class LoraAdapter:
    """A PEFT LoRA adapter directory opened for reads: config and header only, until
    `apply` reads the few small tensors one model tensor needs."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = _read_adapter_config(self.path)
        weights = self.path / ADAPTER_WEIGHTS
        if not weights.is_file():
            pickled = (self.path / "adapter_model.bin").is_file()
            raise ModelGlueError(f"{self.path}: no {ADAPTER_WEIGHTS}" + (
                " (only adapter_model.bin, a pickle: convert it to safetensors)" if pickled else ""))
        infos, _ = read_header(weights)
        self.updates: dict[str, list[Update]] = _updates(self.path, self.config, infos)

    def __contains__(self, name: str) -> bool:
        return name in self.updates

    def check_model(self, model: str, shape_of: Callable[[str], tuple[int, ...] | None], tied: bool = False) -> None:
        """Every tensor the adapter changes exists in the model with the adapter's shape.

        An lm_head saved for a model that ties it to its embeddings (mergekit-extract-lora
        saves one) is dropped: transformers drops it too when it saves the merged model."""
        for name, updates in list(self.updates.items()):
            have = shape_of(name)
            if have is None and tied and name.rsplit(".", 2)[-2] == "lm_head":
                del self.updates[name]
                warn(f"{self.path}: {name} ignored: model {model} ties it to its input embeddings")
                continue
            if have is None:
                raise ModelGlueError(f"LoRA adapter {self.path} changes tensor {name!r}, which model {model} does not have")
            for update in updates:
                if tuple(have) != tuple(update.shape):
                    self._misfit(model, name, have, update.shape)

    def _misfit(self, model: str, name: str, have: tuple[int, ...], want: tuple[int, ...]) -> None:
        raise ModelGlueError(f"LoRA adapter {self.path} does not fit model {model}: tensor {name!r} is "
                             f"{list(have)} in the model, {list(want)} in the adapter")

    def apply(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The model's tensor with the adapter merged in (in place where the tensor is owned)."""
        for update in self.updates[name]:  # a replacement comes first
            if isinstance(update, Replacement):
                tensor = read_tensor(update.tensor).to(device=tensor.device, dtype=tensor.dtype)
            else:  # in place, like PEFT's `weight.data += delta`: computed in the wider type, rounded once
                tensor = tensor.add_(update.delta().to(tensor.device))
        return tensor


def _read_adapter_config(path: Path) -> dict:
    cfg = path / ADAPTER_CONFIG
    if not cfg.is_file():
        raise ModelGlueError(f"{path}: not a PEFT adapter directory ({ADAPTER_CONFIG} is missing)")
    config = read_json_object(cfg)
    kind = config.get("peft_type", "LORA")
    if kind != "LORA":
        raise ModelGlueError(f"{path}: {kind} adapters are not supported (only LoRA)")
    for key, why in UNSUPPORTED_OPTIONS.items():
        if config.get(key):
            raise ModelGlueError(f"{path}: {why}")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ModelGlueError(f"{cfg}: {key} must be a positive number, got {value!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            raise ModelGlueError(f"{cfg}: {key} must be a mapping")
    return config


def _updates(path: Path, config: dict, infos: dict[str, TensorInfo]) -> dict[str, list[Update]]:
    """Group the adapter's tensors by the model tensor each one changes (replacements first)."""
    parts: dict[tuple[str, str], dict[str, TensorInfo]] = {}
    updates: dict[str, list[Update]] = {}
    for key, info in infos.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if "lora_magnitude_vector" in name:
            raise ModelGlueError(f"{path}: DoRA adapters (lora_magnitude_vector) are not supported")
        suffix = next((s for s in LORA_SUFFIXES if name.endswith("." + s)), None)
        if suffix is not None:
            role, kind = LORA_SUFFIXES[suffix]
            parts.setdefault((name[: -len(suffix) - 1], kind), {})[role] = info
        elif ".base_layer." in name:  # a saved embedding layer: <module>.base_layer.weight
            updates[name.replace(".base_layer.", ".")] = [Replacement(info)]
        elif _saved_module(name, config.get("modules_to_save") or []):
            updates[name] = [Replacement(info)]
        else:
            raise ModelGlueError(f"{path}: adapter tensor {key!r} is neither a LoRA weight nor in modules_to_save")
    for (module, kind), found in parts.items():
        for name, update in _module_updates(path, config, module, kind, found).items():
            updates.setdefault(name, []).append(update)
    unused = sum("bias" in found for found in parts.values()) if not config.get("lora_bias") else 0
    if unused:  # PEFT loads them into nothing (lora_B has no bias), so mergekit's merge lacks them too
        warn(f"{path}: lora_B.bias of {unused} module(s) ignored, as PEFT does: "
             "adapter_config.json does not set lora_bias")
    return updates


def _saved_module(name: str, modules_to_save: list[str]) -> bool:
    module = name.rsplit(".", 1)[0]
    return any(module == m or module.endswith("." + m) for m in modules_to_save)


def _module_updates(path: Path, config: dict, module: str, kind: str,
                    found: dict[str, TensorInfo]) -> dict[str, Update]:
    if "A" not in found or "B" not in found:
        missing = "lora_A" if "A" not in found else "lora_B"
        raise ModelGlueError(f"{path}: module {module!r} has no {missing}{'' if kind == 'linear' else ' (embedding)'}")
    a, b = found["A"], found["B"]
    r = pattern_value(config.get("rank_pattern") or {}, module, config["r"])
    alpha = pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != r or b.shape[1] != r:
        raise ModelGlueError(f"{path}: module {module!r}: lora_A {list(a.shape)} and lora_B {list(b.shape)} "
                             f"are not of rank r={r}")
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    transpose = kind == "embedding" or bool(config.get("fan_in_fan_out"))
    out: dict[str, Update] = {f"{module}.weight": LowRankUpdate(a, b, scale, transpose)}
    if "bias" in found and config.get("lora_bias"):
        out[f"{module}.bias"] = BiasUpdate(found["bias"], scale)
    return out
