"""Block- and model-level mixtures as ordinary transformers models.

Both are PreTrainedModel subclasses with their own config type, registered with
AutoConfig / AutoModelForCausalLM when `modelglue` is imported, so that

    import modelglue
    model = AutoModelForCausalLM.from_pretrained("out/mixture")

works without remote code or pickle: a mixture directory is config.json (holding each
expert's config), safetensors with prefixed tensor names (`experts.0.model...`,
`router.weight`), the tokenizer, and for experts that do not share one, each expert's
tokenizer under tokenizers/<i>/ (such a mixture is driven through text: `text_lm()`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, DynamicCache, GenerationMixin, PretrainedConfig,
                          PreTrainedModel)
from transformers.modeling_outputs import CausalLMOutputWithPast

from modelglue.errors import ModelGlueError
from modelglue.mixture.configuration import BlockMixtureConfig, ModelMixtureConfig
from modelglue.mixture.routers import POOLINGS, RouterHead, encode, pool, positions, prompt_features


def _sub_config(d: dict) -> PretrainedConfig:
    d = dict(d)
    model_type = d.pop("model_type", None)
    if not model_type:
        raise ModelGlueError("an expert config has no model_type")
    return AutoConfig.for_model(model_type, **d)


def _lm_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    if labels is None:
        return None
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device),
                                       ignore_index=-100)


# ============================================================================ model level


class MixtureCache:
    """What a model-level forward hands back as its cache: the fixed routing of each row
    and each expert's own KV cache for its rows. Pass it back unchanged on the next step."""

    def __init__(self, route: torch.Tensor, num_experts: int):
        self.route = route
        self.caches: list = [None] * num_experts

    def get_seq_length(self, layer_idx: int = 0) -> int:
        for c in self.caches:
            if c is not None and hasattr(c, "get_seq_length"):
                return c.get_seq_length()
        return 0


class ModelMixtureForCausalLM(PreTrainedModel, GenerationMixin):
    """Routes each sequence to one expert; only that expert runs.

    forward: routes each row by its tokens (or `expert_ids`), runs every expert on its
    rows, returns logits over the widest vocabulary (narrower experts' missing logits
    are the dtype's minimum). With a cache, the routing of the first call is kept.
    generate: routes each prompt once and calls the chosen expert's own generate on
    its rows, so decoding costs one expert plus one routing pass.
    text_lm(): the text-level view the evaluator uses (MixtureTextLM); the only way in
    when the experts read different tokenizers (forward and generate then refuse).
    """

    config_class = ModelMixtureConfig
    base_model_prefix = "mixture"
    _supports_sdpa = True
    _no_split_modules: list[str] = []

    def __init__(self, config: ModelMixtureConfig, experts: list[PreTrainedModel] | None = None):
        super().__init__(config)
        if not config.experts:
            raise ModelGlueError("a model mixture needs at least one expert config")
        if experts is None:
            experts = [AutoModelForCausalLM.from_config(_sub_config(c)) for c in config.experts]
        self.experts = nn.ModuleList(experts)
        r = config.router
        self.router = RouterHead(len(experts), int(r.get("dim", 1)), bool(r.get("normalize", True)))
        self.post_init()

    def post_init(self) -> None:
        super().post_init()
        # transformers gathers tied weights (and no-split modules) from direct children
        # only; the experts sit inside a ModuleList, so lift theirs up, or an expert with
        # tied embeddings would load with a missing, randomly initialised lm_head.
        for i, expert in enumerate(self.experts):
            for k, v in (getattr(expert, "all_tied_weights_keys", None) or {}).items():
                self.all_tied_weights_keys[f"experts.{i}.{k}"] = f"experts.{i}.{v}"
            self._no_split_modules.update(getattr(expert, "_no_split_modules", None) or [])

    # HF initialises weights a checkpoint lacks; everything here comes from the checkpoint
    # or from the experts already built, so there is nothing to initialise.
    def _init_weights(self, module: nn.Module) -> None:
        pass

    def get_input_embeddings(self) -> nn.Module:
        return self.experts[self.config.router.get("encoder", 0)].get_input_embeddings()

    @property
    def output_vocab(self) -> int:
        return max(int(e.config.get_text_config().vocab_size) for e in self.experts)

    @torch.no_grad()
    def route(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The chosen expert of each row: [B] long."""
        r = self.config.router
        if len(self.experts) == 1:
            return torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        encoder = self.experts[int(r.get("encoder", 0))]
        feats = prompt_features(encoder, input_ids, attention_mask, r.get("features", "hidden"),
                                int(r.get("layer", -1)), r.get("pooling", "mean"))
        self.router.normalize = bool(r.get("normalize", True))
        return self.router(feats.to(self.router.weight.device)).argmax(-1).to(input_ids.device)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: MixtureCache | None = None,
                cache: MixtureCache | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, expert_ids: torch.LongTensor | None = None,
                **kwargs) -> CausalLMOutputWithPast:
        if input_ids is None:
            raise ModelGlueError("a model mixture needs input_ids (experts may not share embeddings)")
        self._check_shared_tokenizer()
        state = cache if cache is not None else past_key_values
        if not isinstance(state, MixtureCache):
            route = expert_ids if expert_ids is not None else self.route(input_ids, attention_mask)
            state = MixtureCache(route.to(input_ids.device), len(self.experts))
        bsz, seq = input_ids.shape
        logits = None
        for e in state.route.unique().tolist():
            rows = (state.route == e).nonzero().squeeze(-1)
            expert = self.experts[e]
            sub = {"input_ids": input_ids[rows]}
            if attention_mask is not None:
                sub["attention_mask"] = attention_mask[rows]
            if position_ids is not None:
                sub["position_ids"] = position_ids[rows] if position_ids.shape[0] == bsz else position_ids
            out = expert(**sub, cache=state.caches[e], use_cache=bool(use_cache))
            if logits is None:
                logits = torch.full((bsz, seq, self.output_vocab), torch.finfo(out.logits.dtype).min,
                                    dtype=out.logits.dtype, device=out.logits.device)
            logits[rows, :, : out.logits.shape[-1]] = out.logits
            state.caches[e] = out.cache if use_cache else None
        return CausalLMOutputWithPast(loss=_lm_loss(logits, labels), logits=logits,
                                      cache=state if use_cache else None)

    def _check_shared_tokenizer(self) -> None:
        if not getattr(self.config, "shared_tokenizer", True):
            raise ModelGlueError("these experts each read their own tokenizer, so token ids cannot be shared: "
                                 "drive the mixture through text (model.text_lm(): greedy, loglikelihoods; "
                                 "or generate_text(prompts))")

    def load_tokenizers(self, path: str | None = None) -> list:
        """Each expert's tokenizer, from the mixture directory (`path`, default the one
        this model was loaded from)."""
        from transformers import AutoTokenizer

        root = Path(path or self.config._name_or_path or ".")
        try:
            if getattr(self.config, "shared_tokenizer", True):
                return [AutoTokenizer.from_pretrained(root)] * len(self.experts)
            return [AutoTokenizer.from_pretrained(root / "tokenizers" / str(i)) for i in range(len(self.experts))]
        except (OSError, ValueError) as exc:
            raise ModelGlueError(f"{root}: cannot load the mixture's tokenizers ({str(exc).splitlines()[0][:120]})") from None

    def text_lm(self, tokenizer=None, tokenizers: list | None = None) -> "MixtureTextLM":
        """The mixture as a text-level model (modelglue.evaluate.TextLM): the router reads
        each prompt with its encoder's tokenizer, the chosen expert continues or scores it
        with its own. `tokenizers`: one per expert (default: the mixture directory's);
        `tokenizer` alone serves every expert when they share one."""
        if tokenizers is None:
            shared = getattr(self.config, "shared_tokenizer", True)
            tokenizers = [tokenizer] * len(self.experts) if shared and tokenizer is not None else self.load_tokenizers()
        if len(tokenizers) != len(self.experts):
            raise ModelGlueError(f"{len(tokenizers)} tokenizers for {len(self.experts)} experts")
        return MixtureTextLM(self, tokenizers)

    @torch.no_grad()
    def generate_text(self, prompts: list[str], tokenizers: list | None = None, **kwargs) -> list[str]:
        """Route each prompt and let the chosen expert continue it with its own tokenizer;
        returns the new text of each prompt. Works whether or not the experts share a
        tokenizer. kwargs go to each expert's generate (e.g. max_new_tokens)."""
        toks = tokenizers or self.load_tokenizers()
        encoder = int(self.config.router.get("encoder", 0))
        device = next(self.parameters()).device
        enc = toks[encoder](list(prompts), padding=True, return_tensors="pt", padding_side="left")
        route = self.route(enc["input_ids"].to(device), enc["attention_mask"].to(device))
        texts: list[str] = [""] * len(prompts)
        for e in route.unique().tolist():
            rows = (route == e).nonzero().flatten().tolist()
            tok = toks[e]
            sub = tok([prompts[r] for r in rows], padding=True, return_tensors="pt", padding_side="left").to(device)
            kw = {"pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id, **kwargs}
            out = self.experts[e].generate(**sub, **kw)
            for r, row in zip(rows, out[:, sub["input_ids"].shape[1]:]):
                texts[r] = tok.decode(row, skip_special_tokens=True)
        return texts

    @torch.no_grad()
    def generate(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                 expert_ids: torch.LongTensor | None = None, **kwargs) -> torch.LongTensor:
        """Route every prompt, then let each chosen expert generate for its rows (its own
        generate, with its own generation config unless overridden by kwargs). Rows that
        finish early are right-padded with the pad token. Returns token ids only."""
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        if input_ids is None:
            raise ModelGlueError("generate needs input_ids")
        self._check_shared_tokenizer()
        if kwargs.get("return_dict_in_generate"):
            raise ModelGlueError("a model mixture's generate returns token ids only (no return_dict_in_generate)")
        route = expert_ids if expert_ids is not None else self.route(input_ids, attention_mask)
        n = int(kwargs.get("num_return_sequences", 1) or 1)
        pad = kwargs.get("pad_token_id", self.generation_config.pad_token_id)
        if pad is None:
            eos = self.generation_config.eos_token_id
            pad = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
        pieces: list[tuple[torch.Tensor, torch.Tensor]] = []
        for e in route.unique().tolist():
            rows = (route == e).nonzero().squeeze(-1)
            sub_mask = attention_mask[rows] if attention_mask is not None else None
            out = self.experts[e].generate(input_ids=input_ids[rows], attention_mask=sub_mask, **kwargs)
            # Output row j*n + k belongs to input row rows[j].
            out_rows = (rows[:, None] * n + torch.arange(n, device=rows.device)[None, :]).flatten()
            pieces.append((out_rows, out))
        width = max(p[1].shape[1] for p in pieces)
        result = torch.full((input_ids.shape[0] * n, width), int(pad), dtype=input_ids.dtype, device=input_ids.device)
        for out_rows, out in pieces:
            result[out_rows.to(result.device), : out.shape[1]] = out.to(result.device)
        return result


class MixtureTextLM:
    """A model-level mixture driven through text (see modelglue.evaluate.textlm).

    Each prompt (each context, for log-likelihoods) is routed once, on its text alone,
    with the encoder's tokenizer, right-padded as when the router was fitted; then each
    expert generates or scores its rows with its own tokenizer, exactly as it would alone."""

    def __init__(self, mixture: ModelMixtureForCausalLM, tokenizers: list):
        from modelglue.evaluate.textlm import HFTextLM

        self.mixture, self.tokenizers = mixture, list(tokenizers)
        self.experts = [HFTextLM(e, t) for e, t in zip(mixture.experts, self.tokenizers)]

    @torch.no_grad()
    def route(self, prompts: list[str], batch_size: int = 64) -> list[int]:
        """The expert chosen for each prompt."""
        tok = self.tokenizers[int(self.mixture.config.router.get("encoder", 0))]
        device = next(self.mixture.parameters()).device
        chosen: list[int] = []
        for s in range(0, len(prompts), batch_size):
            ids, mask = encode(tok, list(prompts[s:s + batch_size]), device)
            chosen += self.mixture.route(ids, mask).tolist()
        return chosen

    def _by_expert(self, keys: list[str]) -> dict[int, list[int]]:
        """Row indices per chosen expert; equal keys are routed once."""
        unique = list(dict.fromkeys(keys))
        expert_of = dict(zip(unique, self.route(unique))) if unique else {}
        rows: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            rows.setdefault(expert_of[k], []).append(i)
        return rows

    def greedy(self, prompts: list[str], max_new_tokens: int, batch_size: int = 256) -> list[str]:
        out = [""] * len(prompts)
        for e, rows in self._by_expert(list(prompts)).items():
            for r, text in zip(rows, self.experts[e].greedy([prompts[r] for r in rows], max_new_tokens, batch_size)):
                out[r] = text
        return out

    def loglikelihoods(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for e, rows in self._by_expert([c for c, _ in requests]).items():
            for r, score in zip(rows, self.experts[e].loglikelihoods([requests[r] for r in rows])):
                out[r] = score
        return out


# ============================================================================ block level


class RoutedBlock(nn.Module):
    """One mixed layer: `num_experts` decoder blocks and a gate.

    Routing is per sequence: the gate reads the block's input pooled over each row's
    real tokens on the first call (the prompt) and the choice is kept for the rest of
    the generation (stored on the cache object). Expert 0 keeps its KV in the model's
    cache; experts >= 1 in side caches hung on that cache, since every expert block has
    the same layer index.
    """

    def __init__(self, layer_idx: int, experts: list[nn.Module], hidden: int, top_k: int, pooling: str,
                 context: dict):
        super().__init__()
        self.layer_idx = layer_idx
        self.experts = nn.ModuleList(experts)
        self.gate = nn.Linear(hidden, len(experts), bias=False)
        self.top_k = top_k
        self.pooling = pooling
        self._context = context  # {"mask": 2-D attention mask of the current call}, set by the model

    def routing(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        """[B, E] mixing weights (top-k of a softmax, renormalised)."""
        store = getattr(cache, "_modelglue_routes", None) if cache is not None else None
        if store is not None and self.layer_idx in store:
            return store[self.layer_idx]
        pooled = pool(hidden_states.float(), self._context.get("mask"), self.pooling)
        probs = torch.softmax(pooled @ self.gate.weight.float().T, dim=-1)
        top, idx = probs.topk(min(self.top_k, probs.shape[-1]), dim=-1)
        weights = torch.zeros_like(probs).scatter(-1, idx, top / top.sum(-1, keepdim=True))
        if cache is not None:
            if store is None:
                store = cache._modelglue_routes = {}
            store[self.layer_idx] = weights
        return weights

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        weights = self.routing(hidden_states, cache)
        side = None  # expert e > 0's KV cache, hung on the model's cache
        if cache is not None and (side := getattr(cache, "_modelglue_side", None)) is None:
            side = cache._modelglue_side = {}
        out = torch.zeros_like(hidden_states)
        for e in (weights > 0).any(0).nonzero().flatten().tolist():
            kw = dict(kwargs)
            if cache is not None and e > 0:
                if e not in side:
                    side[e] = DynamicCache()
                kw.pop("past_key_values", None)
                kw["cache"] = side[e]
            h = self.experts[e](hidden_states, *args, **kw)
            h = h[0] if isinstance(h, tuple) else h
            out = out + weights[:, e, None, None].to(h.dtype) * h
        return out


class BlockMixtureForCausalLM(PreTrainedModel, GenerationMixin):
    """A Llama-family model whose blocks after `num_dense_layers` are routed mixtures of
    the experts' blocks. Tensor names: `lm.<the base model's names>`, with mixed blocks
    at `lm.model.layers.L.experts.E.*` and their gates at `lm.model.layers.L.gate.weight`."""

    config_class = BlockMixtureConfig
    base_model_prefix = "mixture"
    _supports_sdpa = True

    def __init__(self, config: BlockMixtureConfig):
        super().__init__(config)
        if not config.base:
            raise ModelGlueError("a block mixture needs its base config")
        if config.pooling not in POOLINGS:
            raise ModelGlueError(f"unknown pooling {config.pooling!r} (choose from {', '.join(POOLINGS)})")
        base_cfg = _sub_config(config.base)
        self.lm = AutoModelForCausalLM.from_config(base_cfg)
        self._route_context: dict = {}
        layers = self.lm.model.layers
        layer_cls = type(layers[0])
        for idx in range(config.num_dense_layers, len(layers)):
            experts = [layers[idx]] + [layer_cls(base_cfg, idx) for _ in range(config.num_experts - 1)]
            layers[idx] = RoutedBlock(idx, experts, base_cfg.hidden_size, config.num_experts_per_tok, config.pooling,
                                      self._route_context)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass  # every tensor comes from the checkpoint

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values=None, cache=None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, **kwargs) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values
        ref = input_ids if input_ids is not None else inputs_embeds
        mask = attention_mask if attention_mask is not None else torch.ones(ref.shape[:2], dtype=torch.long,
                                                                             device=ref.device)
        if position_ids is None and (cache is None or cache.get_seq_length() == 0):
            # Left-padded prompts: count positions from each row's first real token, as the
            # experts saw them when the gates were fitted.
            position_ids = positions(mask)[:, -ref.shape[1]:]
        self._route_context["mask"] = mask[:, -ref.shape[1]:]
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                       inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache, **kwargs)


def register_models() -> None:
    """Map the mixture configs to their model classes in AutoModelForCausalLM (idempotent)."""
    for cfg_cls, model_cls in ((ModelMixtureConfig, ModelMixtureForCausalLM),
                               (BlockMixtureConfig, BlockMixtureForCausalLM)):
        AutoModelForCausalLM.register(cfg_cls, model_cls, exist_ok=True)


register_models()  # idempotent; covers importing this module before the Auto classes
