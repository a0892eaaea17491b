"""Routers: features of a prompt -> a score per expert.

Two places need a router:

* prompt routers (model-level mixtures) score a whole prompt from pooled features of
  one encoder model (its hidden states at one layer, or its mean token embedding);
* gates (FFN- and block-level mixtures) are one linear map per mixed layer, applied to
  that layer's input (per token for FFN, pooled per sequence for blocks).

Both are fitted the same ways, training-free or trained:

    hidden   centroid of each expert's positive prompts (minus its negatives, or minus the
             mean of all prompts), compared by cosine: the Model-GLUE / mergekit-moe "hidden"
             gate.
    embed    the same on mean token embeddings (no forward pass, cheapest).
    random   random directions (a baseline).
    uniform  all zeros (gates only): every expert equally, top-k by index.
    trained  multinomial logistic regression on the pooled features, from labelled
             prompts (or prompts labelled by which expert scored best).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modelglue.errors import ModelGlueError
from modelglue.evaluate.generate import encode_batch

ROUTER_KINDS = ("hidden", "embed", "random", "trained", "uniform")
POOLINGS = ("mean", "last", "first")


def check_router_kind(kind: str, level: str) -> None:
    if kind not in ROUTER_KINDS:
        raise ModelGlueError(f"unknown router {kind!r} (choose from {', '.join(ROUTER_KINDS)})")
    if kind == "uniform" and level == "model":
        raise ModelGlueError("router 'uniform' has no meaning for a model-level mixture (it would always pick expert 0)")


# ----------------------------------------------------------------------------- features


def encode(tokenizer, prompts: list[str], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask (positions then start at 0 in every row)."""
    return encode_batch(tokenizer, prompts, device, side="right")


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count from each row's first real token (left padding safe)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def pool(h: torch.Tensor, mask: torch.Tensor | None, pooling: str = "mean") -> torch.Tensor:
    """[B, T, D] -> [B, D] over the real (mask == 1) tokens of each row."""
    if mask is None:
        mask = torch.ones(h.shape[:2], dtype=torch.long, device=h.device)
    mask = mask[:, -h.shape[1]:].to(h.device)
    if pooling == "mean":
        m = mask.to(h.dtype)[..., None]
        return (h * m).sum(1) / m.sum(1).clamp(min=1)
    ar = torch.arange(mask.shape[1], device=h.device)
    if pooling == "first":
        idx = torch.where(mask.bool(), ar, mask.shape[1]).min(1).values.clamp(max=mask.shape[1] - 1)
    elif pooling == "last":
        idx = torch.where(mask.bool(), ar, -1).max(1).values.clamp(min=0)
    else:
        raise ModelGlueError(f"unknown pooling {pooling!r} (choose from {', '.join(POOLINGS)})")
    return h[torch.arange(h.shape[0], device=h.device), idx]


@torch.no_grad()
def prompt_features(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    source: str = "hidden", layer: int = -1, pooling: str = "mean") -> torch.Tensor:
    """Pooled features of each row: hidden states after `layer` (an index into the
    model's hidden_states tuple, 0 = embeddings) or the input token embeddings."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if source == "embed":
        h = model.get_input_embeddings()(input_ids)
    elif source == "hidden":
        h = _hidden_at(model, input_ids, attention_mask, layer)
    else:
        raise ModelGlueError(f"unknown router features {source!r} (hidden or embed)")
    return pool(h.float(), attention_mask, pooling)


class _StopForward(Exception):
    """Raised by a hook once the wanted layer has run: the rest of the model is skipped."""


def _hidden_at(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
    """hidden_states[layer] of the model, running only the blocks it needs.

    The router runs before the chosen expert, so its cost is pure overhead: for a middle
    layer, stop the forward right after that block instead of running the whole model.
    (hidden_states[i] is block i-1's output, except the last entry, which transformers
    passes through the final norm: that one takes the full forward.)
    """
    kw = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
              use_cache=False)
    blocks = getattr(getattr(model, "model", None), "layers", None)
    n = len(blocks) if isinstance(blocks, nn.ModuleList) else 0
    idx = layer if layer >= 0 else n + 1 + layer
    if 0 < idx < n:
        captured: list[torch.Tensor] = []

        def hook(module, args, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        handle = blocks[idx - 1].register_forward_hook(hook)
        try:
            model(**kw)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if captured:
            return captured[0]
    return model(**kw, output_hidden_states=True).hidden_states[layer]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a Llama-family causal LM (model.model.layers)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelGlueError(f"{type(model).__name__}: expected decoder blocks at model.layers (a Llama-family model)")
    return layers


@torch.no_grad()
def layer_input_features(model: nn.Module, tokenizer, prompts: list[str], where: str = "mlp",
                         pooling: str = "mean", batch_size: int = 64) -> torch.Tensor:
    """[L, N, H]: for each decoder layer, each prompt's pooled input to that layer's MLP
    (`where="mlp"`: what an FFN gate sees, i.e. after post_attention_layernorm) or to the
    whole block (`where="block"`: the residual stream a block-level gate sees)."""
    layers = decoder_layers(model)
    captured: list[list[torch.Tensor]] = [[] for _ in layers]
    current_mask: list[torch.Tensor] = []

    def hook_for(i: int):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            captured[i].append(pool(h.float(), current_mask[0], pooling))
        return hook

    handles = [(layer.mlp if where == "mlp" else layer).register_forward_pre_hook(hook_for(i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    try:
        device = next(model.parameters()).device
        for start in range(0, len(prompts), batch_size):
            ids, mask = encode(tokenizer, prompts[start:start + batch_size], device)
            current_mask[:] = [mask]
            model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([torch.cat(c) for c in captured])


@torch.no_grad()
def completion_logprob(model: nn.Module, tokenizer, prompt: str, completion: str) -> float:
    """Sum of log-probabilities of `completion` after `prompt` (for labelling router
    data by the expert that scores best)."""
    device = next(model.parameters()).device
    ctx = tokenizer(prompt)["input_ids"]
    whole = tokenizer(prompt + completion)["input_ids"]
    if whole[: len(ctx)] != ctx:
        whole = ctx + tokenizer(completion, add_special_tokens=False)["input_ids"]
    n = len(whole) - len(ctx)
    if n <= 0:
        return 0.0
    ids = torch.tensor([whole], device=device)
    logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
    target = ids[0, len(ctx):]
    return float(logp[len(ctx) - 1: len(whole) - 1].gather(-1, target[:, None]).sum())


# ----------------------------------------------------------------------------- fitting


@dataclass
class LinearRouter:
    """scores = normalize?((f - center) / scale) @ weight.T + bias; argmax is the route."""

    weight: torch.Tensor  # [E, D]
    bias: torch.Tensor  # [E]
    center: torch.Tensor  # [D]
    scale: torch.Tensor  # [D]
    normalize: bool

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        x = (feats.float() - self.center) / self.scale
        if self.normalize:
            x = F.normalize(x, dim=-1)
        return x @ self.weight.T + self.bias


def _labels(labels: list[int] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(labels, dtype=torch.long)


def centroid_directions(feats: torch.Tensor, labels: torch.Tensor, num_experts: int,
                        neg_feats: torch.Tensor | None = None, neg_labels: torch.Tensor | None = None,
                        center: torch.Tensor | None = None) -> torch.Tensor:
    """[E, D] unit vectors: mean of each expert's positives minus the mean of its
    negatives (or minus `center`, the mean of all prompts, when it has none)."""
    center = feats.mean(0) if center is None else center
    rows = []
    for e in range(num_experts):
        pos = feats[labels == e]
        if len(pos) == 0:
            raise ModelGlueError(f"router data has no prompt for expert {e}: every expert needs at least one")
        ref = center
        if neg_feats is not None and neg_labels is not None and bool((neg_labels == e).any()):
            ref = neg_feats[neg_labels == e].mean(0)
        rows.append(F.normalize(pos.mean(0) - ref, dim=0))
    return torch.stack(rows)


def fit_centroid(feats: torch.Tensor, labels, num_experts: int, neg_feats: torch.Tensor | None = None,
                 neg_labels=None) -> LinearRouter:
    """Nearest centroid by cosine, after centring on the mean prompt (raw hidden states
    share one large common direction that would make every cosine close to 1)."""
    labels = _labels(labels)
    center = feats.mean(0)
    dirs = centroid_directions(feats, labels, num_experts, neg_feats,
                               None if neg_labels is None else _labels(neg_labels), center)
    return LinearRouter(dirs, torch.zeros(num_experts), center, torch.ones(feats.shape[1]), normalize=True)


def fit_random(dim: int, num_experts: int, seed: int = 0, center: torch.Tensor | None = None) -> LinearRouter:
    g = torch.Generator().manual_seed(seed)
    w = F.normalize(torch.randn(num_experts, dim, generator=g), dim=-1)
    return LinearRouter(w, torch.zeros(num_experts), torch.zeros(dim) if center is None else center,
                        torch.ones(dim), normalize=True)


def fit_logistic(feats: torch.Tensor, labels, num_experts: int, *, bias: bool = True, standardize: bool = True,
                 weight_decay: float = 1e-3, steps: int = 200, seed: int = 0) -> LinearRouter:
    """Multinomial logistic regression (full-batch L-BFGS: tiny, deterministic, seconds)."""
    labels = _labels(labels)
    feats = feats.float()
    d = feats.shape[1]
    if standardize:
        center, scale = feats.mean(0), feats.std(0, unbiased=False).clamp(min=1e-6)
    else:
        center, scale = torch.zeros(d), feats.norm(dim=-1).mean().clamp(min=1e-6).expand(d).clone()
    x = (feats - center) / scale
    torch.manual_seed(seed)
    w = torch.zeros(num_experts, d, requires_grad=True)
    b = torch.zeros(num_experts, requires_grad=bias)
    opt = torch.optim.LBFGS([w, b] if bias else [w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, labels) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearRouter(w.detach(), b.detach(), center, scale, normalize=False)


def _hit_rate(scores: torch.Tensor, labels) -> float | None:
    """Share of rows whose best-scoring expert is their label (None without rows)."""
    labels = _labels(labels)
    return float((scores.argmax(-1) == labels).float().mean()) if len(labels) else None


def accuracy(router: LinearRouter, feats: torch.Tensor, labels) -> float | None:
    return _hit_rate(router.scores(feats), labels)


# ----------------------------------------------------------------------------- gates


def gate_from_router(router: LinearRouter, feats: torch.Tensor, gate_scale: float) -> torch.Tensor:
    """Fold a LinearRouter into a bias-free linear gate [E, H] (what Mixtral and the
    block mixture apply to the raw layer input).

    A gate has no centring, scale or normalisation, so: the centre is dropped after
    projecting it out of every row (the shared component of all hidden states would
    otherwise add a per-expert constant), and rows are scaled so that a typical input
    gives logits of about `gate_scale` times the cosine (sharp enough for top-k to
    follow the centroids, soft enough to mix).
    """
    w = router.weight / router.scale  # undo per-feature standardisation
    typical = feats.float().norm(dim=-1).mean().clamp(min=1e-6)
    if router.normalize:
        c = F.normalize(router.center, dim=0) if float(router.center.norm()) > 0 else None
        if c is not None:
            w = w - (w @ c)[:, None] * c[None, :]
        w = F.normalize(w, dim=-1) * (gate_scale / typical)
    return w


def fit_gate(kind: str, feats: torch.Tensor | None, labels, num_experts: int, hidden: int, *,
             neg_feats: torch.Tensor | None = None, neg_labels=None, gate_scale: float = 8.0,
             seed: int = 0) -> torch.Tensor:
    """One layer's gate [E, H] from that layer's pooled input features."""
    if kind == "uniform":
        return torch.zeros(num_experts, hidden)
    if kind == "random":
        g = torch.Generator().manual_seed(seed)
        w = F.normalize(torch.randn(num_experts, hidden, generator=g), dim=-1)
        typical = feats.norm(dim=-1).mean() if feats is not None else math.sqrt(hidden)
        return w * (gate_scale / typical)
    assert feats is not None
    if kind in ("hidden", "embed"):
        return gate_from_router(fit_centroid(feats, labels, num_experts, neg_feats, neg_labels), feats, gate_scale)
    if kind == "trained":
        r = fit_logistic(feats, labels, num_experts, bias=False, standardize=False)
        return r.weight / r.scale
    raise ModelGlueError(f"unknown router {kind!r}")


def gate_accuracy(gate: torch.Tensor, feats: torch.Tensor, labels) -> float | None:
    return _hit_rate(feats.float() @ gate.T, labels)


class RouterHead(nn.Module):
    """A LinearRouter as buffers, so it saves and loads with the mixture's weights."""

    def __init__(self, num_experts: int, dim: int, normalize: bool = True):
        super().__init__()
        self.normalize = normalize
        self.register_buffer("weight", torch.zeros(num_experts, dim))
        self.register_buffer("bias", torch.zeros(num_experts))
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def load(self, router: LinearRouter) -> None:
        with torch.no_grad():
            for name in ("weight", "bias", "center", "scale"):
                getattr(self, name).copy_(getattr(router, name))
        self.normalize = router.normalize

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return LinearRouter.scores(self, feats)  # type: ignore[arg-type]  # the same fields, as buffers


# ----------------------------------------------------------------------------- mergekit-moe gates

MOE_GATE_MODES = ("hidden", "hidden_last", "hidden_avg", "cheap_embed", "random", "uniform_random")


def moe_gate_vectors(mode: str, base: str, prompts: list[tuple[list[str], list[str]]], num_layers: int,
                     hidden: int, embed: torch.Tensor | None = None) -> torch.Tensor:
    """[L, E, H] router rows as mergekit-moe 0.1.5 computes them (`mergekit/moe/router.py`),
    one (positive, negative) prompt list per gated expert.

    random: N(0, 1) from the global RNG (seed it first); uniform_random: U(-1/sqrt(H),
    1/sqrt(H)), nn.Linear's init. Otherwise each expert's row is the unit direction of
    f(positives) - f(negatives): f is, per layer, the bfloat16 base model's hidden state
    entering that layer, at the last token (hidden, hidden_last) or averaged over the
    padded width (hidden_avg), then averaged over prompts; for cheap_embed, the summed
    token embeddings of all prompts, normalised, the same for every layer. Prompts are
    BOS-prefixed and left-padded with BOS, as mergekit does.
    """
    n = len(prompts)
    if mode == "random":
        return torch.randn((num_layers, n, hidden))
    if mode == "uniform_random":
        bound = math.sqrt(1.0 / hidden)
        return torch.rand((num_layers, n, hidden)) * 2 * bound - bound
    from modelglue.io.checkpoint import load_tokenizer

    tokenizer = load_tokenizer(base)  # the gates read the prompts with it
    if tokenizer is None:
        raise ModelGlueError(f"{base}: the base model has no tokenizer files (the gates read the prompts with it)")
    tokenizer.padding_side = "left"
    tokenizer.pad_token_id = tokenizer.bos_token_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if mode == "cheap_embed":
        assert embed is not None
        feats = lambda batch: _summed_embedding(embed, batch, num_layers)  # noqa: E731
    else:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelGlueError(f"{base}: cannot load the base model for hidden-state gates "
                                 f"({str(exc).splitlines()[0][:160]})") from None
        feats = lambda batch: _mean_layer_inputs(model, batch, mode == "hidden_avg")  # noqa: E731
    rows = []
    for pos, neg in prompts:
        v = feats(_bos_batch(tokenizer, pos))
        if neg:
            v -= feats(_bos_batch(tokenizer, neg))
        v /= v.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)
        rows.append(v)
    return torch.stack(rows, dim=0).permute(1, 0, 2)


def _bos_batch(tokenizer, prompts: list[str]) -> dict:
    return tokenizer([(tokenizer.bos_token or "") + p for p in prompts], return_tensors="pt", padding=True,
                     add_special_tokens=False)


def _summed_embedding(embed: torch.Tensor, batch: dict, num_layers: int) -> torch.Tensor:
    """[L, H]: the unit direction of all real tokens' embeddings summed (float32)."""
    h = F.embedding(batch["input_ids"], embed.float())  # [B, T, H]; a one-hot matmul gives the same rows
    summed = (h * batch["attention_mask"].unsqueeze(-1)).sum(dim=1).sum(dim=0, keepdim=True)
    return (summed / summed.norm(dim=-1, keepdim=True).clamp(min=1e-8)).repeat(num_layers, 1)


@torch.no_grad()
def _mean_layer_inputs(model: nn.Module, batch: dict, average_tokens: bool) -> torch.Tensor:
    """[L, H]: each layer's input hidden state (hidden_states[l]; default positions, as
    mergekit passes no position ids), at the last token or averaged over the padded width,
    then averaged over the prompts."""
    out = model(**batch, output_hidden_states=True, return_dict=True)
    h = torch.stack(out.hidden_states[:-1])  # [L, B, T, H]
    h = h.sum(dim=2) / h.shape[2] if average_tokens else h[:, :, -1, :]
    return h.sum(dim=1) / h.shape[1]
