"""FFN-level mixtures on disk: the MoE architectures plain transformers loads.

A layout says where an output architecture keeps each layer's router, routed experts
and shared expert; `moe_config` builds its config from the base's as mergekit-moe 0.1.5
does (`XConfig(**base.to_dict())` plus the MoE fields); `moe_write_plan` lists every
output tensor with a function that produces it, in the order mergekit-moe draws expert
noise (so a seeded `noise_scale` draws the same numbers).

Experts are stored one tensor per expert (`...experts.<e>.w1.weight` for Mixtral,
`...experts.<e>.gate_proj.weight` otherwise): what transformers' save_pretrained writes,
what transformers 4, vLLM and llama.cpp read, and what transformers 5 fuses into
`experts.gate_up_proj` / `experts.down_proj` on load. (mergekit 0.1.5 writes Mixtral and
Qwen3-MoE experts already fused; the values are the same.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from modelglue.arch import group_by_layer, tensor_role
from modelglue.errors import ModelGlueError

MLP_PARTS = ("gate_proj", "up_proj", "down_proj")
Plan = list[tuple[str, tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]]


@dataclass(frozen=True)
class MoELayout:
    model_type: str
    architecture: str
    block: str  # the per-layer module that holds the router and the experts
    names: tuple[tuple[str, str], ...]  # (MLP part, expert tensor name) in mergekit's noise order
    tensor_major: bool  # True: for each part, every expert (then the shared one); False: expert by expert
    shared: str | None = None  # the shared expert's module under `block`
    shared_gate: str | None = None  # its sigmoid gate (Qwen2-MoE)

    def expert(self, prefix: str, e: int, name: str) -> str:
        return f"{prefix}.{self.block}.experts.{e}.{name}.weight"


MIXTRAL = MoELayout("mixtral", "MixtralForCausalLM", "block_sparse_moe",
                    (("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")), tensor_major=False)
QWEN2_MOE = MoELayout("qwen2_moe", "Qwen2MoeForCausalLM", "mlp",
                      (("down_proj", "down_proj"), ("gate_proj", "gate_proj"), ("up_proj", "up_proj")),
                      tensor_major=True, shared="shared_expert", shared_gate="shared_expert_gate")
QWEN3_MOE = MoELayout("qwen3_moe", "Qwen3MoeForCausalLM", "mlp",
                      (("gate_proj", "gate_proj"), ("up_proj", "up_proj"), ("down_proj", "down_proj")),
                      tensor_major=False)
DEEPSEEK = MoELayout("deepseek", "DeepseekForCausalLM", "mlp",
                     (("up_proj", "up_proj"), ("gate_proj", "gate_proj"), ("down_proj", "down_proj")),
                     tensor_major=True, shared="shared_experts")


@dataclass
class MoEParts:
    """Where every output tensor comes from. `expert_mlp[e](name)` and `shared_mlp(name)`
    read an input MLP tensor (`model.layers.<l>.mlp.gate_proj.weight`, ...)."""

    ref_names: list[str]
    shape: Callable[[str], tuple[int, ...]]
    dtype: Callable[[str], torch.dtype]
    shared_get: Callable[[str], torch.Tensor]  # attention, norms, embeddings, head
    expert_mlp: list[Callable[[str], torch.Tensor]]
    gates: dict[int, torch.Tensor]  # layer -> [E, H]; a layer without one gets zeros
    shared_mlp: Callable[[str], torch.Tensor] | None = None
    shared_width: int | None = None  # the shared expert's intermediate size (default: the experts')
    shared_gates: dict[int, torch.Tensor] | None = None  # layer -> [1, H]
    out_dtype: torch.dtype | None = None  # None: every tensor keeps its input dtype


def _cast(fn: Callable[[], torch.Tensor], dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    return lambda: fn().to(dtype)


def moe_write_plan(layout: MoELayout, parts: MoEParts) -> Plan:
    """Every output tensor: (name, shape, dtype, producer), layers in order."""
    pre, layers, post = group_by_layer(parts.ref_names)
    plan: Plan = []
    first = parts.ref_names[0]
    gate_dtype = parts.out_dtype or (parts.dtype(pre[0]) if pre else parts.dtype(first))

    def add(name: str, shape, src_dtype: torch.dtype, fn: Callable[[], torch.Tensor]) -> None:
        dtype = parts.out_dtype or src_dtype
        plan.append((name, tuple(shape), dtype, _cast(fn, dtype)))

    for n in pre:
        add(n, parts.shape(n), parts.dtype(n), lambda n=n: parts.shared_get(n))
    for l, lnames in layers.items():
        mlp = {tensor_role(n).rest.split(".")[2]: n for n in lnames if tensor_role(n).rest.startswith(".mlp.")}
        if sorted(mlp) != sorted(MLP_PARTS) or len(mlp) != len([n for n in lnames if ".mlp." in n]):
            raise ModelGlueError(f"layer {l}: the MLP is not gate_proj/up_proj/down_proj weights ({sorted(mlp)})")
        prefix = f"{tensor_role(lnames[0]).prefix}{l}"
        for n in lnames:
            if n not in mlp.values():
                add(n, parts.shape(n), parts.dtype(n), lambda n=n: parts.shared_get(n))
        for n, shape in _missing_qkv_biases(layout, prefix, lnames, parts):
            add(n, shape, gate_dtype, lambda shape=shape: torch.zeros(shape))
        hidden = parts.shape(mlp["gate_proj"])[1]
        n_exp = len(parts.expert_mlp)
        add(f"{prefix}.{layout.block}.gate.weight", (n_exp, hidden), gate_dtype,
            lambda l=l: parts.gates.get(l, torch.zeros(n_exp, hidden)))
        _add_experts(layout, parts, prefix, mlp, add)
        if layout.shared_gate:
            add(f"{prefix}.{layout.block}.{layout.shared_gate}.weight", (1, hidden), gate_dtype,
                lambda l=l: (parts.shared_gates or {}).get(l, torch.zeros(1, hidden)))
    for n in post:
        add(n, parts.shape(n), parts.dtype(n), lambda n=n: parts.shared_get(n))
    return plan


def _add_experts(layout: MoELayout, parts: MoEParts, prefix: str, mlp: dict[str, str], add) -> None:
    """Routed experts then the shared one, in mergekit-moe's order (its noise draws follow it)."""
    def routed(e: int, part: str, out: str) -> None:
        n = mlp[part]
        add(layout.expert(prefix, e, out), parts.shape(n), parts.dtype(n), lambda: parts.expert_mlp[e](n))

    def shared(part: str) -> None:
        if layout.shared is None or (parts.shared_mlp is None and parts.shared_width is None):
            return
        n = mlp[part]
        shape = _shared_shape(part, parts.shape(n), parts.shared_width)
        fn = (lambda: parts.shared_mlp(n)) if parts.shared_mlp else (lambda: torch.zeros(shape))
        add(f"{prefix}.{layout.block}.{layout.shared}.{part}.weight", shape, parts.dtype(n), fn)

    if layout.tensor_major:
        for part, out in layout.names:
            for e in range(len(parts.expert_mlp)):
                routed(e, part, out)
            shared(part)
    else:
        for e in range(len(parts.expert_mlp)):
            for part, out in layout.names:
                routed(e, part, out)
        for part, _ in layout.names:
            shared(part)


def _shared_shape(part: str, shape: tuple[int, ...], width: int | None) -> tuple[int, ...]:
    if width is None:
        return tuple(shape)
    return (shape[0], width) if part == "down_proj" else (width, shape[1])


def _missing_qkv_biases(layout: MoELayout, prefix: str, lnames: list[str], parts: MoEParts):
    """Qwen2-MoE always has q/k/v biases: zeros where the input (Llama, Mistral) has none."""
    if layout.model_type != "qwen2_moe":
        return []
    have = set(lnames)
    return [(f"{prefix}.self_attn.{p}.bias", (parts.shape(f"{prefix}.self_attn.{p}.weight")[0],))
            for p in ("q_proj", "k_proj", "v_proj") if f"{prefix}.self_attn.{p}.bias" not in have]


def moe_config(layout: MoELayout, base: dict, num_experts: int, top_k: int, *, out_dtype: str | None = None,
               num_shared: int = 0, shared_width: int | None = None, keep_sliding_window: bool = False):
    """The output's config (a transformers config; a dict for DeepSeek), built from the
    base's config.json as mergekit-moe 0.1.5 builds it."""
    from transformers import AutoConfig

    fields = {k: v for k, v in base.items() if k not in ("model_type", "architectures", "transformers_version")}
    base_cfg = AutoConfig.for_model(base["model_type"], **fields)
    if layout is DEEPSEEK:
        return _deepseek_config(base_cfg.to_dict(), num_experts, top_k, num_shared, out_dtype)
    if layout is MIXTRAL:
        from transformers import MistralConfig, MixtralConfig

        window = base.get("sliding_window") if keep_sliding_window else None
        if not isinstance(base_cfg, MistralConfig):
            base_cfg = MistralConfig(**base_cfg.to_dict())
        cfg = MixtralConfig(**base_cfg.to_dict())
        cfg.num_local_experts = num_experts
        cfg.sliding_window = window
    elif layout is QWEN2_MOE:
        from transformers import Qwen2MoeConfig

        cfg = Qwen2MoeConfig(**base_cfg.to_dict())
        cfg.sliding_window, cfg.use_sliding_window = None, False
        cfg.shared_expert_intermediate_size = shared_width or cfg.intermediate_size
    else:
        from transformers import Qwen3MoeConfig

        cfg = Qwen3MoeConfig(**base_cfg.to_dict())
    if layout is not MIXTRAL:
        cfg.num_experts, cfg.decoder_sparse_step, cfg.norm_topk_prob = num_experts, 1, True
        cfg.moe_intermediate_size = cfg.intermediate_size
    cfg.architectures = [layout.architecture]
    cfg.num_experts_per_tok = top_k
    if out_dtype is not None:
        cfg.dtype = out_dtype
    return cfg


def _deepseek_config(base: dict, num_experts: int, top_k: int, shared: int, out_dtype: str | None) -> dict:
    """DeepSeek-MoE (v1): Llama attention, softmax top-k routing, ungated shared experts.
    Transformers has no class for it: the config points at DeepSeek's own code, as
    mergekit-moe writes it (loads with trust_remote_code, vLLM and llama.cpp)."""
    cfg = dict(base, architectures=[DEEPSEEK.architecture], model_type="deepseek", n_routed_experts=num_experts,
               n_shared_experts=shared or None, num_experts_per_tok=top_k, first_k_dense_replace=0,
               moe_layer_freq=1, scoring_func="softmax", norm_topk_prob=True,
               moe_intermediate_size=base["intermediate_size"])
    repo = "deepseek-ai/deepseek-moe-16b-base--"
    cfg["auto_map"] = {"AutoConfig": f"{repo}configuration_deepseek.DeepseekConfig",
                       "AutoModel": f"{repo}modeling_deepseek.DeepseekModel",
                       "AutoModelForCausalLM": f"{repo}modeling_deepseek.DeepseekForCausalLM"}
    if out_dtype is not None:
        cfg["torch_dtype"] = out_dtype
    return cfg
