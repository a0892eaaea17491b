"""`modelglue extract-lora BASE TUNED OUT --rank R`: a PEFT LoRA adapter that carries
TUNED - BASE, mergekit-extract-lora's job with its options and file layout.

Each linear weight's task vector d = tuned - base is cut to rank r by a truncated SVD,
d ~ U_r S_r V_r^T, written as lora_B = U_r sqrt(S_r), lora_A = sqrt(S_r) V_r^T
(`distribute_scale`, the default; otherwise lora_B = U_r, lora_A = S_r V_r^T) with
lora_alpha = r, so PEFT's scale alpha / r is 1 and base + B @ A is the rank-r
approximation (exact when d has rank <= r). As in mergekit: embeddings and lm_head are
saved at full rank in modules_to_save unless `embed_lora` (then the input embedding
gets lora_embedding_A/B); 1-D weights (norms) are saved at full rank unless
`skip_undecomposable`; `include` / `exclude` regexes (re.search on module names) pick
the decomposed modules; `save_modules` are saved whole; `sv_epsilon` drops singular
values at or below it (per-module ranks go to rank_pattern / alpha_pattern).

One tensor at a time: only the low-rank factors are kept until the adapter is written
(full-rank tensors are read again while writing), into a directory that appears whole
or not at all.
"""
from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modelglue.arch import tensor_role
from modelglue.errors import ModelGlueError, warn
from modelglue.io import Checkpoint, ShardedWriter, TensorSpec, atomic_output_dir, check_output_dir
from modelglue.io.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX


@dataclass
class ExtractOptions:
    rank: int = 128
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    embed_lora: bool = False
    save_modules: tuple[str, ...] = ()
    sv_epsilon: float = 0.0
    distribute_scale: bool = True
    skip_undecomposable: bool = False
    device: str = "cpu"


@dataclass
class ExtractPlan:
    """What happens to each module (module = tensor name without .weight)."""

    lora: list[str] = field(default_factory=list)  # decomposed linear weights
    embeddings: list[str] = field(default_factory=list)  # decomposed input embeddings (transposed)
    saved: list[str] = field(default_factory=list)  # tensor names saved at full rank
    modules_to_save: list[str] = field(default_factory=list)  # the config's names
    warnings: list[str] = field(default_factory=list)


def _matches(patterns: tuple[str, ...], name: str) -> bool:
    return any(re.search(p, name) for p in patterns)


def plan_extraction(base: Checkpoint, tuned: Checkpoint, opts: ExtractOptions) -> ExtractPlan:
    """Decide per module from names and shapes alone, as mergekit-extract-lora decides
    from module types: embeddings / lm_head (outside the decoder blocks, 2-D) are saved
    whole unless embed_lora, other 2-D weights are decomposed, 1-D weights saved whole."""
    plan = ExtractPlan(modules_to_save=list(opts.save_modules))
    embed_lora = opts.embed_lora
    vocab = [ck.config.get("vocab_size") for ck in (base, tuned)]
    if embed_lora and vocab[0] != vocab[1]:
        plan.warnings.append(f"vocabularies differ ({vocab[0]} vs {vocab[1]} tokens): embeddings saved at full rank")
        embed_lora = False
    for name in tuned.names():
        if not name.endswith(".weight") or not tuned.dtype(name).is_floating_point:
            continue
        module = name[: -len(".weight")]
        key = module.rsplit(".", 1)[-1]
        two_d = len(tuned.shape(name)) == 2
        embedding = two_d and tensor_role(name).kind != "layer"
        if embedding and not embed_lora and not _matches(opts.exclude, module) and key not in plan.modules_to_save:
            plan.modules_to_save.append(key)
        if module in plan.modules_to_save or key in plan.modules_to_save:
            plan.saved += [n for n in (name, f"{module}.bias") if n in tuned]
        elif (not opts.include or _matches(opts.include, module)) and not _matches(opts.exclude, module):
            if two_d:
                _check_pair(base, tuned, name)
                is_input_embedding = embedding and tensor_role(name).kind == "pre"
                (plan.embeddings if is_input_embedding else plan.lora).append(module)
            elif not opts.skip_undecomposable:
                if key not in plan.modules_to_save:
                    plan.modules_to_save.append(key)
                plan.saved += [n for n in (name, f"{module}.bias") if n in tuned]
    if not plan.lora and not plan.embeddings:
        raise ModelGlueError("no module to decompose (check --include-regex / --exclude-regex / --save-module)")
    return plan


def _check_pair(base: Checkpoint, tuned: Checkpoint, name: str) -> None:
    if name not in base:
        raise ModelGlueError(f"tensor {name!r} of {tuned.path} is missing from base {base.path}")
    if base.shape(name) != tuned.shape(name):
        raise ModelGlueError(f"tensor {name!r}: base {base.path} has shape {list(base.shape(name))}, "
                             f"tuned {tuned.path} {list(tuned.shape(name))}")


def decompose(delta: torch.Tensor, rank: int, sv_epsilon: float, distribute_scale: bool
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(lora_A, lora_B, relative Frobenius error of B @ A) for one task vector."""
    u, s, vh = torch.linalg.svd(delta.to(torch.float32), full_matrices=False)
    r = min(rank, s.shape[0])
    if sv_epsilon > 0:
        r = max(1, min(int((s > sv_epsilon).sum()), r))  # PEFT needs r >= 1
    total = float(s.double().square().sum())
    error = math.sqrt(float(s[r:].double().square().sum()) / total) if total > 0 else 0.0
    if distribute_scale:
        root = s[:r].sqrt()
        return root[:, None] * vh[:r], u[:, :r] * root[None, :], error
    return s[:r, None] * vh[:r], u[:, :r].clone(), error


def _bias_deltas(base: Checkpoint, tuned: Checkpoint, modules: list[str], plan: ExtractPlan
                 ) -> dict[str, torch.Tensor]:
    """lora_B.bias per decomposed module whose bias changed. PEFT's lora_bias is one
    switch for every target module and its merge fails on a target without a bias, so
    bias changes are kept only when every decomposed module has a bias."""
    with_bias = [m for m in modules if f"{m}.bias" in tuned and f"{m}.bias" in base]
    deltas = {m: tuned.get(f"{m}.bias").float() - base.get(f"{m}.bias").float() for m in with_bias}
    changed = [m for m, d in deltas.items() if bool(d.ne(0).any())]
    if not changed:
        return {}
    if len(with_bias) == len(modules):
        return deltas
    plan.warnings.append(f"bias changes of {len(changed)} module(s) (e.g. {changed[0]}) are not in the adapter: "
                         "PEFT's lora_bias needs a bias in every target module (use --save-module or --include-regex)")
    return {}


def extract_lora(base: str | Path, tuned: str | Path, out_dir: str | Path, opts: ExtractOptions | None = None, *,
                 overwrite: bool = False, progress: bool = False) -> dict:
    """Write a PEFT LoRA adapter for tuned - base to out_dir; returns a summary
    (modules, ranks, reconstruction errors, warnings)."""
    opts = opts or ExtractOptions()
    _check_options(opts)
    base_ck, tuned_ck = Checkpoint(base), Checkpoint(tuned)
    inputs = [p for ck in (base_ck, tuned_ck) for p in (ck.model_dir, ck.adapter.path if ck.adapter else None) if p]
    check_output_dir(Path(out_dir), inputs, overwrite)
    plan = plan_extraction(base_ck, tuned_ck, opts)
    factors: dict[str, torch.Tensor] = {}
    ranks, errors = {}, {}
    modules = plan.lora + plan.embeddings
    for i, module in enumerate(modules):
        name = f"{module}.weight"
        delta = tuned_ck.get(name).to(opts.device, torch.float32) - base_ck.get(name).to(opts.device, torch.float32)
        embedding = module in plan.embeddings
        a, b, errors[module] = decompose(delta.T if embedding else delta, opts.rank, opts.sv_epsilon,
                                         opts.distribute_scale)
        out_dtype = tuned_ck.dtype(name)
        kind, suffix = ("lora_embedding", "") if embedding else ("lora", ".weight")
        # fresh row-major strides: a rank-1 factor cut from SVD's column-major output counts as
        # contiguous with a last stride != 1, which a byte view refuses
        factors[f"{PEFT_PREFIX}{module}.{kind}_A{suffix}"] = a.to("cpu", out_dtype).clone(memory_format=torch.contiguous_format)
        factors[f"{PEFT_PREFIX}{module}.{kind}_B{suffix}"] = b.to("cpu", out_dtype).clone(memory_format=torch.contiguous_format)
        ranks[module] = a.shape[0]
        if progress:
            print(f"[{i + 1}/{len(modules)}] {module}: rank {ranks[module]}, error {errors[module]:.3g}",
                  file=sys.stderr, flush=True)
    biases = _bias_deltas(base_ck, tuned_ck, plan.lora, plan)
    for module, d in biases.items():
        factors[f"{PEFT_PREFIX}{module}.lora_B.bias"] = d.to(tuned_ck.dtype(f"{module}.bias"))
    config = adapter_config(str(base_ck.path), ranks, plan.modules_to_save, lora_bias=bool(biases))
    _write_adapter(Path(out_dir), factors, plan.saved, tuned_ck, config)
    for line in plan.warnings:
        warn(line)
    return {"modules": len(modules), "rank": config["r"], "ranks": ranks, "errors": errors,
            "saved": plan.saved, "warnings": plan.warnings}


def _check_options(opts: ExtractOptions) -> None:
    if isinstance(opts.rank, bool) or not isinstance(opts.rank, int) or opts.rank < 1:
        raise ModelGlueError(f"--rank must be a whole number >= 1, got {opts.rank!r}")
    if not opts.sv_epsilon >= 0:
        raise ModelGlueError(f"--sv-epsilon must be >= 0, got {opts.sv_epsilon!r}")
    for p in opts.include + opts.exclude:
        try:
            re.compile(p)
        except re.error as exc:
            raise ModelGlueError(f"invalid regex {p!r}: {exc}") from None


def adapter_config(base: str, ranks: dict[str, int], modules_to_save: list[str], lora_bias: bool) -> dict:
    """PEFT's adapter_config.json as mergekit-extract-lora writes it: r the largest rank,
    lora_alpha = r, modules of other ranks in rank_pattern / alpha_pattern (scale 1 each)."""
    r = max(ranks.values())
    other = {m: k for m, k in ranks.items() if k != r}
    return {
        "base_model_name_or_path": base, "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "r": r, "lora_alpha": r, "rank_pattern": other, "alpha_pattern": dict(other),
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in ranks}),
        "modules_to_save": modules_to_save or None, "use_rslora": False, "lora_bias": lora_bias,
        "lora_dropout": 0.0, "fan_in_fan_out": False, "bias": "none", "inference_mode": True,
    }


def _write_adapter(out_dir: Path, factors: dict[str, torch.Tensor], saved: list[str], tuned: Checkpoint,
                   config: dict) -> None:
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in factors.items()]
    specs += [TensorSpec(PEFT_PREFIX + n, tuned.shape(n), tuned.dtype(n)) for n in saved]
    with atomic_output_dir(out_dir) as tmp:
        writer = ShardedWriter(tmp, specs, None)
        for name, t in factors.items():
            writer.write(name, t)
        for name in saved:  # full-rank tensors: read again now rather than kept
            writer.write(PEFT_PREFIX + name, tuned.get(name))
        writer.close()
        (tmp / writer.files[0]).rename(tmp / ADAPTER_WEIGHTS)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "README.md").write_text(
            f"---\nlibrary_name: peft\nbase_model: {config['base_model_name_or_path']}\ntags:\n- modelglue\n- lora\n---\n\n"
            f"# LoRA adapter\n\nExtracted with `modelglue extract-lora` (rank {config['r']}): "
            f"{len(config['target_modules'])} module kinds decomposed, "
            f"{len(config['modules_to_save'] or [])} saved at full rank.\n")
