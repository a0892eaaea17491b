"""Build mixtures from expert directories: `mix(level, experts, out, ...)`.

level "ffn"   -> a Mixtral directory (plain transformers loads it, no custom code)
level "block" -> a modelglue_block_mixture directory (AutoModelForCausalLM after `import modelglue`)
level "model" -> a modelglue_model_mixture directory (likewise)

Each output directory also holds mixture_report.json: the router, its held-out routing
accuracy, and where every part came from.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from modelglue.arch import num_layers, tensor_role
from modelglue.errors import ModelGlueError
from modelglue.io import Checkpoint, atomic_output_dir, check_output_dir, copy_tokenizer_files
from modelglue.io.checkpoint import load_tokenizer
from modelglue.io.safetensors_io import ShardedWriter, TensorSpec
from modelglue.mixture.data import RouterExample, load_router_data, parse_router_examples
from modelglue.mixture.moe_export import MIXTRAL, QWEN2_MOE, QWEN3_MOE, MoEParts, Plan, moe_config, moe_write_plan
from modelglue.mixture.routers import (LinearRouter, accuracy, check_router_kind, completion_logprob, encode,
                                       fit_centroid, fit_gate, fit_logistic, fit_random, gate_accuracy,
                                       layer_input_features, prompt_features)

LEVELS = ("model", "block", "ffn")
BLOCK_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # decoder blocks at model.layers, built as cls(config, idx)
REPORT = "mixture_report.json"

RouterData = str | Path | Sequence[dict] | Sequence[RouterExample] | None


@dataclass
class MixReport:
    level: str
    experts: list[str]
    router: str
    out: str
    routing_accuracy: float | None = None  # held-out; for gates, mean over mixed layers
    routing_accuracy_train: float | None = None
    per_layer_accuracy: list[float | None] = field(default_factory=list)
    n_train: int = 0
    n_test: int = 0
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def mix(level: str, experts: Sequence[str | Path], out: str | Path, *, router: str = "hidden",
        router_data: RouterData = None, top_k: int = 2, base: str | Path | None = None,
        num_dense_layers: int = 0, pooling: str = "mean", router_layer: int | None = None,
        router_encoder: int | None = None, gate_scale: float = 8.0, seed: int = 0,
        shard_size: int | None = 5 * 10**9, overwrite: bool = False, progress: bool = False) -> MixReport:
    """Build a mixture of `experts` at `level` into `out`; returns the report (also
    written to out/mixture_report.json). See docs/mixtures.md."""
    if level not in LEVELS:
        raise ModelGlueError(f"unknown mixture level {level!r} (choose from {', '.join(LEVELS)})")
    check_router_kind(router, level)
    paths = [Path(p) for p in experts]
    if not paths:
        raise ModelGlueError("give at least one expert")
    if level != "model" and len(paths) < 2:
        raise ModelGlueError(f"a {level}-level mixture needs at least two experts")
    for p in paths:
        if not (p / "config.json").is_file():
            raise ModelGlueError(f"{p}: not a model directory (no config.json)")
    base_path = Path(base) if base is not None else None
    out = Path(out)
    check_output_dir(out, paths + ([base_path] if base_path else []), overwrite)
    if top_k < 1:
        raise ModelGlueError("--top-k must be at least 1")
    if num_dense_layers < 0:
        raise ModelGlueError("--num-dense-layers must be >= 0")
    names = _expert_names(paths)
    examples = _load_examples(router_data, names)
    if router in ("hidden", "embed", "trained") and not examples:
        raise ModelGlueError(f"router {router!r} needs router data (--router-data FILE.jsonl)")
    torch.manual_seed(seed)
    if level == "model":
        return _build_model_level(paths, names, out, router, examples, router_layer, router_encoder, pooling, seed)
    if level == "block":
        return _build_block_level(paths, names, out, router, examples, base_path, top_k, num_dense_layers,
                                  pooling, gate_scale, seed)
    return _build_ffn_level(paths, names, out, router, examples, base_path, top_k, num_dense_layers,
                            gate_scale, seed, shard_size)


# ----------------------------------------------------------------------------- shared helpers


def _expert_names(paths: list[Path]) -> list[str]:
    names = [p.resolve().name for p in paths]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def _load_examples(data: RouterData, names: list[str]) -> list[RouterExample]:
    if data is None:
        return []
    if isinstance(data, (str, Path)):
        return load_router_data(data, names)
    rows = list(data)
    if rows and all(isinstance(r, RouterExample) for r in rows):
        return rows  # type: ignore[return-value]
    return parse_router_examples(rows, names)  # type: ignore[arg-type]


def _label_unlabelled(examples: list[RouterExample], score_fns: list[Callable[[str, str], float]]) -> dict:
    """Give prompts that came with a completion to the expert that scores it best."""
    counts = [0] * len(score_fns)
    for ex in examples:
        if ex.expert is None:
            scores = [fn(ex.prompt, ex.completion or "") for fn in score_fns]
            ex.expert = max(range(len(scores)), key=scores.__getitem__)
            counts[ex.expert] += 1
    return {"labelled_by_best_score": counts} if any(counts) else {}


def _split(examples: list[RouterExample]) -> tuple[list[RouterExample], list[RouterExample]]:
    """(examples for an expert, negative examples)."""
    return [e for e in examples if not e.negative], [e for e in examples if e.negative]


def _load_tokenizer(path: Path):
    tokenizer = load_tokenizer(path)
    if tokenizer is None:
        raise ModelGlueError(f"{path}: cannot load a tokenizer (the directory has no tokenizer files)")
    return tokenizer


def _load_lm(path: Path):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path).eval()
    except ModelGlueError:
        raise
    except Exception as exc:
        raise ModelGlueError(f"{path}: cannot load the model ({str(exc).splitlines()[0][:160]})") from None


def _tokenizer_identity(path: Path) -> str | None:
    """A digest of the tokenizer's vocabulary file (experts must share one)."""
    import hashlib

    for name in ("tokenizer.json", "tokenizer.model", "vocab.json"):
        if (path / name).is_file():
            return hashlib.sha256((path / name).read_bytes()).hexdigest()
    return None


def _write_report(dir_: Path, report: MixReport) -> None:
    (dir_ / REPORT).write_text(json.dumps(report.to_dict(), indent=2) + "\n")


# ----------------------------------------------------------------------------- model level


def _fit_prompt_router(kind: str, feats_of: Callable[[list[str]], torch.Tensor], examples: list[RouterExample],
                       num_experts: int, seed: int, dim: int) -> tuple[LinearRouter, MixReport]:
    """Fit on the train split (for the held-out accuracy), then refit on every prompt."""
    report = MixReport(level="model", experts=[], router=kind, out="")
    if kind == "random" and not examples:
        return fit_random(dim, num_experts, seed), report
    pos, neg = _split(examples)
    all_feats = feats_of([e.prompt for e in pos])
    neg_feats = feats_of([e.prompt for e in neg]) if neg else None
    neg_labels = [e.expert for e in neg]
    labels = [e.expert for e in pos]
    idx_train = [i for i, e in enumerate(pos) if e.split == "train"]
    idx_test = [i for i, e in enumerate(pos) if e.split == "test"]

    def fit(idx: list[int]) -> LinearRouter:
        f = all_feats[idx]
        lab = [labels[i] for i in idx]
        if kind in ("hidden", "embed"):
            return fit_centroid(f, lab, num_experts, neg_feats, neg_labels if neg else None)
        if kind == "trained":
            return fit_logistic(f, lab, num_experts)
        return fit_random(dim, num_experts, seed, center=f.mean(0))

    if idx_test:
        r = fit(idx_train)
        report.routing_accuracy = accuracy(r, all_feats[idx_test], [labels[i] for i in idx_test])
        report.routing_accuracy_train = accuracy(r, all_feats[idx_train], [labels[i] for i in idx_train])
    report.n_train, report.n_test = len(idx_train), len(idx_test)
    final = fit(list(range(len(pos))))
    if not idx_test:
        report.routing_accuracy_train = accuracy(final, all_feats, labels)
    return final, report


def _build_model_level(paths: list[Path], names: list[str], out: Path, kind: str, examples: list[RouterExample],
                       router_layer: int | None, router_encoder: int | None, pooling: str, seed: int) -> MixReport:
    from modelglue.mixture.modeling import ModelMixtureConfig, ModelMixtureForCausalLM

    models, tokenizers, shared = _open_model_experts(paths)
    sizes = [sum(p.numel() for p in m.parameters()) for m in models]
    enc = min(range(len(models)), key=sizes.__getitem__) if router_encoder is None else router_encoder
    if not 0 <= enc < len(models):
        raise ModelGlueError(f"--router-encoder {enc} out of range (there are {len(models)} experts)")
    tokenizer = tokenizers[enc]
    features = "embed" if kind == "embed" else "hidden"
    feats_of, layer, dim = _router_features(models[enc], tokenizer, features, router_layer, pooling)
    labelled = _label_unlabelled(examples, [lambda p, c, m=m, t=t: completion_logprob(m, t, p, c)
                                            for m, t in zip(models, tokenizers)])
    fitted, report = _fit_prompt_router(kind, feats_of, examples, len(models), seed, dim)
    router_cfg = {"kind": kind, "features": features, "encoder": enc, "layer": layer, "pooling": pooling,
                  "normalize": fitted.normalize, "dim": dim}
    vocab = max(int(m.config.get_text_config().vocab_size) for m in models)
    config = ModelMixtureConfig(experts=[m.config.to_dict() for m in models], expert_names=names,
                                router=router_cfg, vocab_size=vocab, shared_tokenizer=shared,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id)
    mixture = ModelMixtureForCausalLM(config, experts=models)
    mixture.router.load(fitted)
    mixture.generation_config = models[enc].generation_config
    report.level, report.experts, report.out = "model", names, str(out)
    report.details = {"router": router_cfg, **labelled, "expert_params": sizes, "shared_tokenizer": shared}
    _save_model_mixture(out, mixture, paths, enc, shared, report)
    return report


def _open_model_experts(paths: list[Path]) -> tuple[list, list, bool]:
    """The experts as live models, their tokenizers, and whether they share one tokenizer.
    Experts that share a tokenizer make a token-level model (forward, generate on ids);
    experts with their own tokenizers still mix, through the text API (generate_text)."""
    idents = [_tokenizer_identity(p) for p in paths]
    if None in idents:
        raise ModelGlueError(f"{paths[idents.index(None)]}: no tokenizer files (tokenizer.json); "
                             "a model-level mixture routes text, so every expert needs one")
    shared = len(set(idents)) == 1
    tokenizers = [_load_tokenizer(p) for p in paths] if not shared else [_load_tokenizer(paths[0])] * len(paths)
    return [_load_lm(p) for p in paths], tokenizers, shared


def _router_features(encoder, tokenizer, features: str, router_layer: int | None,
                     pooling: str) -> tuple[Callable[[list[str]], torch.Tensor], int, int]:
    """The router's feature function (prompts -> [N, dim]), the hidden-state layer it reads, and dim."""
    depth = num_layers(encoder.config.to_dict())
    # Middle layers separate tasks better than the last one, which is already shaped
    # towards next-token prediction (and is what the final norm feeds the head).
    layer = (depth + 1) // 2 if router_layer is None else router_layer
    if features == "hidden" and not -depth - 1 <= layer <= depth:
        raise ModelGlueError(f"--router-layer {layer} out of range for a {depth}-layer encoder")
    dim = encoder.get_input_embeddings().weight.shape[1]
    if features == "hidden":
        dim = encoder.config.get_text_config().hidden_size

    def feats_of(prompts: list[str]) -> torch.Tensor:
        chunks = [prompt_features(encoder, *encode(tokenizer, prompts[s:s + 64]), features, layer, pooling)
                  for s in range(0, len(prompts), 64)]
        return torch.cat(chunks) if chunks else torch.zeros(0, dim)

    return feats_of, layer, dim


def _save_model_mixture(out: Path, mixture, paths: list[Path], enc: int, shared: bool, report: MixReport) -> None:
    with atomic_output_dir(out) as tmp:
        mixture.save_pretrained(tmp)
        copy_tokenizer_files(paths[enc], tmp)  # the router's tokenizer (the only one when shared)
        if not shared:
            for i, p in enumerate(paths):
                (tmp / "tokenizers" / str(i)).mkdir(parents=True)
                copy_tokenizer_files(p, tmp / "tokenizers" / str(i))
        _write_report(tmp, report)


# ----------------------------------------------------------------------------- ffn & block


def _open_same_shape(paths: list[Path], allowed: tuple[str, ...], level: str) -> list[Checkpoint]:
    ckpts = [Checkpoint(p) for p in paths]
    ref = ckpts[0]
    mt = ref.config.get("model_type")
    if mt not in allowed:
        raise ModelGlueError(f"{paths[0]}: model_type {mt!r} cannot be mixed at {level} level "
                             f"(supported: {', '.join(allowed)}; use --level model)")
    if level == "ffn" and (ref.config.get("mlp_bias") or ref.config.get("attention_bias")):
        raise ModelGlueError(f"{paths[0]}: MLP/attention biases cannot be stored in an MoE of these architectures")
    for p, c in zip(paths[1:], ckpts[1:]):
        if c.config.get("model_type") != mt:
            raise ModelGlueError(f"{p}: model_type {c.config.get('model_type')!r} differs from {mt!r}; "
                                 f"{level}-level experts must share one architecture (use --level model)")
        if sorted(c.names()) != sorted(ref.names()):
            raise ModelGlueError(f"{p}: tensor names differ from {paths[0]}")
        for n in ref.names():
            if c.shape(n) != ref.shape(n):
                raise ModelGlueError(f"{p}: tensor {n} is {list(c.shape(n))}, {paths[0]} has {list(ref.shape(n))}")
    return ckpts


def _shared_source(ckpts: list[Checkpoint], base: Path | None) -> tuple[Callable[[str], torch.Tensor], dict, Path]:
    """Where attention, embeddings and norms come from: the base, or the experts' mean."""
    if base is not None:
        b = Checkpoint(base)
        ref = ckpts[0]
        for n in ref.names():
            if n not in b or b.shape(n) != ref.shape(n):
                raise ModelGlueError(f"{base}: base lacks {n} with shape {list(ref.shape(n))} (must match the experts)")
        return b.get, b.config, base

    def mean(name: str) -> torch.Tensor:
        acc = ckpts[0].get(name).float()
        for c in ckpts[1:]:
            acc += c.get(name).float()
        return (acc / len(ckpts)).to(ckpts[0].dtype(name))

    return mean, ckpts[0].config, ckpts[0].path


def _feature_model(ckpts: list[Checkpoint], get: Callable[[str], torch.Tensor], config: dict):
    """A live model with the shared weights (the base, or every tensor averaged), whose
    layer inputs stand in for the mixture's when fitting gates (as mergekit-moe does)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    cfg_obj = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    model = AutoModelForCausalLM.from_config(cfg_obj).eval()
    sd = {n: get(n) for n in ckpts[0].names()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise ModelGlueError(f"cannot rebuild the base model ({(unexpected or missing)[0]} mismatched)")
    if "lm_head.weight" in missing:
        model.tie_weights()
    return model


def _fit_gates(kind: str, level: str, ckpts: list[Checkpoint], get, config: dict, tok_dir: Path,
               examples: list[RouterExample], mixed: list[int], hidden: int, gate_scale: float, seed: int,
               pooling: str, report: MixReport) -> dict[int, torch.Tensor]:
    n_exp = len(ckpts)
    if kind in ("uniform", "random") and not examples:
        return {l: fit_gate(kind, None, [], n_exp, hidden, gate_scale=gate_scale, seed=seed + l) for l in mixed}
    tokenizer = _load_tokenizer(tok_dir)
    if any(e.expert is None for e in examples):
        scorers = [lambda p, comp, m=_load_lm(c.path): completion_logprob(m, tokenizer, p, comp) for c in ckpts]
        report.details.update(_label_unlabelled(examples, scorers))
    pos, neg = _split(examples)
    model = _feature_model(ckpts, get, config)
    where = "mlp" if level == "ffn" else "block"
    if kind == "embed":  # the same mean token embedding stands for every layer's input
        def feats_of(prompts: list[str]) -> torch.Tensor:
            ids, mask = encode(tokenizer, prompts)
            f = prompt_features(model, ids, mask, "embed", pooling=pooling)
            return f[None].expand(len(model.model.layers), -1, -1)
    else:
        def feats_of(prompts: list[str]) -> torch.Tensor:
            return layer_input_features(model, tokenizer, prompts, where=where, pooling=pooling)

    all_f = feats_of([e.prompt for e in pos])
    neg_f = feats_of([e.prompt for e in neg]) if neg else None
    labels = torch.tensor([e.expert for e in pos])
    neg_labels = [e.expert for e in neg] if neg else None
    tr = torch.tensor([e.split == "train" for e in pos])
    gates, accs, accs_train = {}, [], []
    for l in mixed:
        nf = neg_f[l] if neg_f is not None else None
        if bool((~tr).any()):
            g = fit_gate(kind, all_f[l][tr], labels[tr], n_exp, hidden, neg_feats=nf, neg_labels=neg_labels,
                         gate_scale=gate_scale, seed=seed + l)
            accs.append(gate_accuracy(g, all_f[l][~tr], labels[~tr]))
            accs_train.append(gate_accuracy(g, all_f[l][tr], labels[tr]))
        gates[l] = fit_gate(kind, all_f[l], labels, n_exp, hidden, neg_feats=nf, neg_labels=neg_labels,
                            gate_scale=gate_scale, seed=seed + l)
    report.per_layer_accuracy = accs
    report.routing_accuracy = sum(accs) / len(accs) if accs else None
    report.routing_accuracy_train = sum(accs_train) / len(accs_train) if accs_train else None
    report.n_train, report.n_test = int(tr.sum()), int((~tr).sum())
    return gates


# the experts an FFN-level MoE takes, and the architecture it writes for them (moe_export.py)
FFN_LAYOUTS = {"llama": MIXTRAL, "mistral": MIXTRAL, "qwen2": QWEN2_MOE, "qwen3": QWEN3_MOE}


def _build_ffn_level(paths: list[Path], names: list[str], out: Path, kind: str, examples: list[RouterExample],
                     base: Path | None, top_k: int, num_dense: int, gate_scale: float, seed: int,
                     shard_size: int | None) -> MixReport:
    ckpts = _open_same_shape(paths, tuple(FFN_LAYOUTS), "ffn")
    get, cfg, tok_dir = _shared_source(ckpts, base)
    depth = num_layers(cfg, ckpts[0].names())
    if num_dense > depth:
        raise ModelGlueError(f"--num-dense-layers {num_dense} exceeds the {depth} layers")
    if top_k > len(ckpts):
        raise ModelGlueError(f"--top-k {top_k} exceeds the {len(ckpts)} experts")
    report = MixReport(level="ffn", experts=names, router=kind, out=str(out))
    gates = _fit_gates(kind, "ffn", ckpts, get, cfg, tok_dir, examples, list(range(num_dense, depth)),
                       int(cfg["hidden_size"]), gate_scale, seed, "mean", report)
    layout = FFN_LAYOUTS[cfg["model_type"]]
    # Qwen2-MoE always adds a shared expert: here a zero one of width 1, so the layer is the mixture alone.
    ref = ckpts[0]
    parts = MoEParts(ref_names=ref.names(), shape=ref.shape, dtype=ref.dtype, shared_get=get,
                     expert_mlp=[_dense_below(num_dense, get, c.get) for c in ckpts], gates=gates,
                     shared_width=1 if layout.shared else None)
    config = moe_config(layout, cfg, len(ckpts), top_k, shared_width=parts.shared_width, keep_sliding_window=True)
    report.details = {"base": str(base) if base else "mean of the experts", "num_dense_layers": num_dense,
                      "top_k": top_k, "num_local_experts": len(ckpts), "architecture": layout.architecture,
                      **report.details}
    write_moe(out, moe_write_plan(layout, parts), config, "lm_head.weight" in ref, tok_dir, report, shard_size)
    return report


def _dense_below(num_dense: int, dense: Callable[[str], torch.Tensor],
                 expert: Callable[[str], torch.Tensor]) -> Callable[[str], torch.Tensor]:
    """An expert's MLP reader. Dense layers: every expert is the shared MLP and the gate
    is zero, so the layer computes exactly that MLP (top-k weights sum to one)."""
    return lambda name: dense(name) if tensor_role(name).layer < num_dense else expert(name)


def write_moe(out: Path, plan: Plan, config, has_lm_head: bool, tok_dir: Path, report: MixReport,
              shard_size: int | None) -> None:
    """Write an FFN-level mixture atomically: tensors, config.json, tokenizer, report.
    `config` is a transformers config, or a dict for types transformers lacks (DeepSeek)."""
    if not has_lm_head:  # a head tied to the embeddings in the input stays tied
        if isinstance(config, dict):
            config["tie_word_embeddings"] = True
        else:
            config.tie_word_embeddings = True
    with atomic_output_dir(out) as tmp:
        writer = ShardedWriter(tmp, [TensorSpec(n, tuple(s), d) for n, s, d, _ in plan], shard_size)
        try:
            for n, _, _, fn in plan:
                writer.write(n, fn())
            writer.close()
        except BaseException:
            writer.abort()
            raise
        if isinstance(config, dict):
            (tmp / "config.json").write_text(json.dumps(config, indent=4) + "\n")
        else:
            config.save_pretrained(tmp)
        copy_tokenizer_files(tok_dir, tmp)
        _write_report(tmp, report)


def _build_block_level(paths: list[Path], names: list[str], out: Path, kind: str, examples: list[RouterExample],
                       base: Path | None, top_k: int, num_dense: int, pooling: str, gate_scale: float,
                       seed: int) -> MixReport:
    from modelglue.mixture.modeling import BlockMixtureConfig, BlockMixtureForCausalLM

    ckpts = _open_same_shape(paths, BLOCK_TYPES, "block")
    get, cfg, tok_dir = _shared_source(ckpts, base)
    depth = num_layers(cfg, ckpts[0].names())
    if num_dense >= depth:
        raise ModelGlueError(f"--num-dense-layers {num_dense} leaves no layer to mix (the model has {depth})")
    n_exp = len(ckpts)
    top_k = min(top_k, n_exp)
    hidden = int(cfg["hidden_size"])
    report = MixReport(level="block", experts=names, router=kind, out=str(out))
    mixed = list(range(num_dense, depth))
    gates = _fit_gates(kind, "block", ckpts, get, cfg, tok_dir, examples, mixed, hidden, gate_scale, seed,
                       pooling, report)
    config = BlockMixtureConfig(base=cfg, num_experts=n_exp, num_dense_layers=num_dense, num_experts_per_tok=top_k,
                                pooling=pooling, expert_names=names, bos_token_id=cfg.get("bos_token_id"),
                                eos_token_id=cfg.get("eos_token_id"), pad_token_id=cfg.get("pad_token_id"))
    model = BlockMixtureForCausalLM(config)
    sd = {}
    for n in ckpts[0].names():
        role = tensor_role(n)
        if role.kind == "layer" and role.layer >= num_dense:
            for e, c in enumerate(ckpts):
                sd[f"lm.{role.prefix}{role.layer}.experts.{e}{role.rest}"] = c.get(n)
        else:
            sd[f"lm.{n}"] = get(n)
    for l, g in gates.items():
        sd[f"lm.model.layers.{l}.gate.weight"] = g.to(next(iter(sd.values())).dtype)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ModelGlueError(f"block mixture: tensors do not fit ({(missing or unexpected)[0]})")
    if "lm.lm_head.weight" not in sd:
        model.lm.tie_weights()
    report.details = {"base": str(base) if base else "mean of the experts", "num_dense_layers": num_dense,
                      "top_k": top_k, "pooling": pooling, **report.details}
    with atomic_output_dir(out) as tmp:
        model.save_pretrained(tmp)
        copy_tokenizer_files(tok_dir, tmp)
        _write_report(tmp, report)
    return report
