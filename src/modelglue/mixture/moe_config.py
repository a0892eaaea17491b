"""mergekit-moe configs, run unchanged: `modelglue mix CONFIG.yml OUT`.

A config names a base model (attention, norms, embeddings, head), routed experts (each
layer's MLP of each `source_model`), optional `shared_experts`, and how the routers are
set (`gate_mode`). We read mergekit-moe 0.1.5's keys with its defaults and checks
(`mergekit/moe/config.py`), pick the output architecture as it does
(`mergekit/scripts/moe.py: select_output_arch`), compute the routers with its maths
(`routers.moe_gate_vectors`) and write the tensors it writes (`moe_export.py`).
Keys mergekit-moe does not know are ignored, as it ignores them, with one warning line
each (and a near match).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from modelglue.errors import ModelGlueError, warn
from modelglue.io import Checkpoint, check_output_dir
from modelglue.mixture.build import MixReport, write_moe
from modelglue.engine.plan import TORCH_DTYPES as DTYPES  # the recipe dtype names
from modelglue.mixture.moe_export import DEEPSEEK, MIXTRAL, QWEN2_MOE, QWEN3_MOE, MoELayout, MoEParts, \
    moe_config, moe_write_plan
from modelglue.mixture.routers import MOE_GATE_MODES, moe_gate_vectors

# mergekit-moe's output architectures, in its order, with the names `architecture:` matches by prefix.
ARCHITECTURES: list[tuple[str, MoELayout]] = [("Mixtral", MIXTRAL), ("DeepSeek MoE", DEEPSEEK),
                                              ("Qwen MoE", QWEN2_MOE), ("Qwen3 MoE", QWEN3_MOE)]


class Expert(BaseModel):
    model_config = ConfigDict(extra="allow")
    source_model: str
    positive_prompts: Optional[list[str]] = None
    negative_prompts: Optional[list[str]] = None
    noise_scale: Optional[float] = None
    residual_scale: Optional[float] = None


class MoEConfig(BaseModel):
    """mergekit-moe 0.1.5's MoEMergeConfig: the same keys, types and defaults."""

    model_config = ConfigDict(extra="allow")
    base_model: str
    experts: list[Expert]
    gate_mode: str = "hidden"
    dtype: Optional[str] = None
    experts_per_token: int = 2
    shared_experts: Optional[list[Expert]] = None
    architecture: Optional[str] = None


def is_moe_config(path: str | Path) -> bool:
    """A YAML file name (what `modelglue mix CONFIG.yml OUT` takes instead of --level)."""
    return Path(path).suffix.lower() in (".yml", ".yaml")


def load_moe_config(path: str | Path, *, strict: bool = False) -> tuple[MoEConfig, dict[str, Path], list[str]]:
    """Parse and validate a config: (config, source string -> local directory, warning lines)."""
    from modelglue.recipe import _Ignored, _model_path, _RecipeLoader

    path = Path(path)
    where = str(path)
    try:
        loader = _RecipeLoader(path.read_text())
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except OSError as exc:
        raise ModelGlueError(f"{where}: cannot read the config ({exc.strerror or exc})") from None
    except Exception as exc:  # a YAML error
        raise ModelGlueError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ModelGlueError(f"{where}: a mergekit-moe config must be a mapping with 'base_model' and 'experts'")
    try:
        cfg = MoEConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        msg = "missing" if err["type"] == "missing" else err["msg"]
        raise ModelGlueError(f"{where}: {loc}: {msg}") from None
    ignored = _Ignored(where, strict)
    _note_unknown_keys(cfg, ignored)
    sources = {cfg.base_model: _model_path(cfg.base_model, "base_model", where, path.parent)}
    for group, experts in (("experts", cfg.experts), ("shared_experts", cfg.shared_experts or [])):
        for i, e in enumerate(experts):
            sources[e.source_model] = _model_path(e.source_model, f"{group}[{i}].source_model", where, path.parent)
    return cfg, sources, ignored.flush()


def _note_unknown_keys(cfg: MoEConfig, ignored) -> None:
    for key in sorted(cfg.model_extra or {}):
        ignored.add(f"unknown key {key!r}", key, MoEConfig.model_fields)
    for group, experts in (("experts", cfg.experts), ("shared_experts", cfg.shared_experts or [])):
        for i, e in enumerate(experts):
            for key in sorted(e.model_extra or {}):
                ignored.add(f"{group}[{i}]: unknown key {key!r}", key, Expert.model_fields)


def check_moe_config(cfg: MoEConfig, where: str, allow_all_same: bool = False) -> None:
    """mergekit-moe's refusals (`is_bad_config`), and gate modes it would crash on."""
    if cfg.gate_mode not in MOE_GATE_MODES:
        raise ModelGlueError(f"{where}: unknown gate_mode {cfg.gate_mode!r} (choose from {', '.join(MOE_GATE_MODES)})")
    if cfg.dtype is not None and cfg.dtype.removeprefix("torch.") not in DTYPES:
        raise ModelGlueError(f"{where}: dtype {cfg.dtype!r} is not one of {', '.join(DTYPES)}")
    if cfg.experts_per_token < 1:
        raise ModelGlueError(f"{where}: experts_per_token must be >= 1")
    if len(cfg.experts) < cfg.experts_per_token:
        raise ModelGlueError(f"{where}: {len(cfg.experts)} experts, fewer than experts_per_token "
                             f"({cfg.experts_per_token})")
    shared = cfg.shared_experts or []
    if len({bool(e.positive_prompts) for e in shared}) > 1:
        raise ModelGlueError(f"{where}: give positive_prompts to every shared expert or to none")
    if cfg.gate_mode == "random":
        return
    for i, e in enumerate(cfg.experts):
        if not e.positive_prompts:
            raise ModelGlueError(f"{where}: experts[{i}] has no positive_prompts (gate_mode {cfg.gate_mode!r} "
                                 f"needs them; only 'random' does not)")
    prompts = {(tuple(e.positive_prompts or []), tuple(e.negative_prompts or [])) for e in cfg.experts}
    if len(cfg.experts) > 1 and len(prompts) == 1:
        raise ModelGlueError(f"{where}: every expert has the same prompts; each expert's positive_prompts must "
                             "show what should be routed to it")
    if len(cfg.experts) > 1 and len({e.source_model for e in cfg.experts}) == 1 and not allow_all_same:
        raise ModelGlueError(f"{where}: every expert is the same model (an MoE that computes that model at more "
                             "cost; pass --i-understand-this-is-not-useful-without-training to build it anyway)")


def _why_not(name: str, cfg: MoEConfig, types: list[str]) -> str | None:
    """Why output architecture `name` cannot hold this config (None: it can), as mergekit-moe decides."""
    shared = cfg.shared_experts or []
    if len(set(types)) != 1 and name != "Qwen3 MoE":
        return "the models are of different architectures"
    if name == "Mixtral":
        return "no shared experts" if shared else None if types[0] in ("llama", "mistral") else "Llama/Mistral only"
    if name == "DeepSeek MoE":
        if len(shared) > 1 or any(e.positive_prompts or e.negative_prompts for e in shared):
            return "at most one shared expert, without prompts"
        return None if types[0] in ("llama", "mistral") else "Llama/Mistral only"
    if name == "Qwen MoE":
        if len(shared) != 1 or (cfg.gate_mode != "random" and not shared[0].positive_prompts):
            return "exactly one shared expert, with prompts"
        return None if types[0] in ("llama", "mistral", "qwen2") else "Qwen2/Llama/Mistral only"
    if shared:
        return "no shared experts"
    return None if set(types) == {"qwen3"} else "Qwen3 only"


def select_architecture(cfg: MoEConfig, types: list[str], where: str) -> MoELayout:
    """Mixtral when it can hold the models (mergekit's default), else the first that can."""
    names = [n for n, _ in ARCHITECTURES if cfg.architecture is None or n.lower().startswith(cfg.architecture.lower())]
    if not names:
        raise ModelGlueError(f"{where}: architecture {cfg.architecture!r} matches none of "
                             f"{', '.join(n for n, _ in ARCHITECTURES)}")
    reasons = {n: _why_not(n, cfg, types) for n in names}
    fits = [n for n in names if reasons[n] is None]
    if not fits:
        why = "; ".join(f"{n}: {r}" for n, r in reasons.items())
        raise ModelGlueError(f"{where}: no output architecture holds these models ({'/'.join(sorted(set(types)))}, "
                             f"{len(cfg.shared_experts or [])} shared experts): {why}")
    name = "Mixtral" if "Mixtral" in fits else fits[0]
    return dict(ARCHITECTURES)[name]


@dataclass
class _Inputs:
    base: Checkpoint
    experts: list[Checkpoint]
    shared: list[Checkpoint]


def _open_inputs(cfg: MoEConfig, sources: dict[str, Path], where: str) -> _Inputs:
    """Open every model; every expert must hold the base's MLP tensors with the base's shapes."""
    opened = {s: Checkpoint(p) for s, p in sources.items()}
    base = opened[cfg.base_model]
    mlp = [n for n in base.names() if ".mlp." in n]
    for group, experts in (("experts", cfg.experts), ("shared_experts", cfg.shared_experts or [])):
        for i, e in enumerate(experts):
            c = opened[e.source_model]
            for n in mlp:
                if n not in c:
                    raise ModelGlueError(f"{where}: {group}[{i}] ({e.source_model}) has no {n}")
                if c.shape(n) != base.shape(n):
                    raise ModelGlueError(f"{where}: {group}[{i}] ({e.source_model}): {n} is {list(c.shape(n))}, "
                                         f"the base's is {list(base.shape(n))}")
    return _Inputs(base, [opened[e.source_model] for e in cfg.experts],
                   [opened[e.source_model] for e in cfg.shared_experts or []])


def _expert_reader(c: Checkpoint, e: Expert) -> Callable[[str], torch.Tensor]:
    """An expert's MLP tensors with its noise_scale (drawn from the global RNG, as mergekit
    draws it) and residual_scale (on down_proj, the expert's write to the residual stream)."""
    def read(name: str) -> torch.Tensor:
        t = c.get(name)
        if e.noise_scale is not None:
            t = t + torch.randn_like(t) * e.noise_scale
        if e.residual_scale is not None and ".down_proj." in name:
            t = t * e.residual_scale
        return t
    return read


def _gates(cfg: MoEConfig, inputs: _Inputs, depth: int, hidden: int) -> tuple[torch.Tensor, int]:
    """[L, E(+S), H] router rows for the routed experts, then the gated shared ones."""
    gated = list(cfg.experts)
    shared = cfg.shared_experts or []
    if any(e.positive_prompts for e in shared) or (shared and cfg.gate_mode in ("random", "uniform_random")):
        gated += shared
    if cfg.gate_mode.startswith("hidden") and inputs.base.adapter is not None:
        raise ModelGlueError(f"base_model {cfg.base_model}: gate_mode {cfg.gate_mode!r} runs the base model, "
                             "which cannot be a model+LoRA reference (merge the adapter first)")
    embed = inputs.base.get("model.embed_tokens.weight") if cfg.gate_mode == "cheap_embed" else None
    prompts = [(e.positive_prompts or [], e.negative_prompts or []) for e in gated]
    return moe_gate_vectors(cfg.gate_mode, str(inputs.base.model_dir), prompts, depth, hidden, embed), len(cfg.experts)


def _warn_degenerate(vecs: torch.Tensor, where: str) -> str | None:
    """mergekit-moe's warning: layers whose router rows are nearly dependent (condition
    number above 5) will leave some experts underused."""
    bad = [l for l in range(vecs.shape[0]) if float(torch.linalg.cond(vecs[l].float())) > 5.0]
    if not bad:
        return None
    which = "every layer" if len(bad) == vecs.shape[0] else f"layer{'s' * (len(bad) > 1)} " + ", ".join(map(str, bad))
    line = (f"{where}: {which}: degenerate routing parameters (router rows nearly dependent; the prompts "
            "may be too similar): some experts will be underused")
    warn(line)
    return line


def _out_dtype(cfg: MoEConfig, base: dict, where: str) -> str | None:
    """config `dtype`, else the base's (mergekit's select_dtype)."""
    name = cfg.dtype or base.get("dtype") or base.get("torch_dtype")
    name = str(name).removeprefix("torch.") if name else None
    if name is not None and name not in DTYPES:  # only the base's can be: the config's is checked on load
        raise ModelGlueError(f"{where}: the base model's dtype {name!r} is not one of {', '.join(DTYPES)}: "
                             "set dtype: in the config")
    return name


def mix_moe_config(config: str | Path, out: str | Path, *, seed: int = 0, overwrite: bool = False,
                   allow_all_same: bool = False, strict: bool = False,
                   shard_size: int | None = 5 * 10**9) -> MixReport:
    """Build the MoE a mergekit-moe config describes into `out` (see docs/mixtures.md)."""
    where = str(config)
    cfg, sources, warnings = load_moe_config(config, strict=strict)
    check_moe_config(cfg, where, allow_all_same)
    out = Path(out)
    check_output_dir(out, list(sources.values()), overwrite)
    inputs = _open_inputs(cfg, sources, where)
    types = [c.config.get("model_type") for c in [inputs.base] + inputs.experts + inputs.shared]
    layout = select_architecture(cfg, types, where)
    base_cfg = inputs.base.config
    depth, hidden = int(base_cfg["num_hidden_layers"]), int(base_cfg["hidden_size"])
    torch.manual_seed(seed)  # what mergekit-moe --random-seed does before drawing gates and noise
    vecs, n_routed = _gates(cfg, inputs, depth, hidden)
    degenerate = _warn_degenerate(vecs, where)
    dtype = _out_dtype(cfg, base_cfg, where)
    parts = MoEParts(ref_names=inputs.base.names(), shape=inputs.base.shape, dtype=inputs.base.dtype,
                     shared_get=inputs.base.get,
                     expert_mlp=[_expert_reader(c, e) for c, e in zip(inputs.experts, cfg.experts)],
                     gates={l: vecs[l, :n_routed] for l in range(depth)},
                     shared_mlp=_expert_reader(inputs.shared[0], cfg.shared_experts[0]) if inputs.shared else None,
                     shared_gates={l: vecs[l, n_routed:] for l in range(depth)} if vecs.shape[1] > n_routed else None,
                     out_dtype=DTYPES[dtype] if dtype else None)
    out_cfg = moe_config(layout, base_cfg, len(cfg.experts), cfg.experts_per_token, out_dtype=dtype,
                         num_shared=len(inputs.shared))
    names = [Path(e.source_model).name for e in cfg.experts]
    report = MixReport(level="ffn", experts=names, router=cfg.gate_mode, out=str(out))
    report.details = {"config": where, "architecture": layout.architecture, "gate_mode": cfg.gate_mode,
                      "base": cfg.base_model, "experts_per_token": cfg.experts_per_token,
                      "shared_experts": [e.source_model for e in cfg.shared_experts or []],
                      "warnings": warnings + ([degenerate] if degenerate else [])}
    write_moe(out, moe_write_plan(layout, parts), out_cfg, "lm_head.weight" in inputs.base, inputs.base.model_dir,
              report, shard_size)
    return report
