"""Batched greedy decoding with a KV cache, and log-likelihood scoring of choices.

Works on any Hugging Face causal LM, and on any torch module whose forward takes
`input_ids` and `attention_mask` and returns logits (a tensor or an object with
`.logits`); such modules are decoded without a cache (the whole sequence each step).
"""
from __future__ import annotations

import inspect

import torch

from modelglue.evaluate.loglik import continuation_scores, logits_of


def _forward_params(model: torch.nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _stop_ids(tokenizer) -> set[int]:
    """Token ids that end an answer: EOS, and every token whose text holds a newline."""
    cached = getattr(tokenizer, "_modelglue_stop_ids", None)
    if cached is None:
        cached = {i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])}
        if tokenizer.eos_token_id is not None:
            cached.add(tokenizer.eos_token_id)
        try:
            tokenizer._modelglue_stop_ids = cached
        except AttributeError:  # a tokenizer that refuses new attributes: recompute next time
            pass
    return cached


def encode_batch(tokenizer, prompts: list[str], device="cpu", side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ids and attention mask; left padding for generation, right for pooling."""
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # e.g. GPT-2: pads are masked out anyway
    old = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        enc = tokenizer(prompts, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = old
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


class _Forward:
    """How to call a model for one decoding step: which of the cache, position and
    logits_to_keep arguments its forward takes (looked up once per generate call)."""

    def __init__(self, model: torch.nn.Module):
        params = _forward_params(model)
        # transformers 5 names the cache argument `cache`; 4.x (and some custom models) `past_key_values`.
        self.cache_arg = "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else None
        self.pass_pos = "position_ids" in params
        # Only the last position's logits are used: the prompt's other positions need no
        # projection onto the vocabulary (transformers' generate skips it the same way).
        self.keep_last = "logits_to_keep" in params
        self.model = model

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, past, use_cache: bool):
        kwargs = {"attention_mask": mask}
        if self.pass_pos:
            kwargs["position_ids"] = pos
        if use_cache:
            kwargs.update({self.cache_arg: past, "use_cache": True})
        if self.keep_last:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=ids, **kwargs)
        cache = None
        if use_cache and hasattr(out, "get"):
            cache = out.get("cache") if "cache" in out else out.get("past_key_values")
        return logits_of(out)[:, -1], cache


def _greedy_batch(forward: _Forward, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
                  stop: torch.Tensor) -> list[list[int]]:
    """New token ids of each row of one left-padded batch, up to and including its stop
    token. A finished row leaves the batch (and the KV cache): later steps run only
    the rows still generating."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding shifts positions: count from each row's first token
    sink = ids.size(0)  # rows[sink] collects what finished rows produce when they cannot leave
    rows: list[list[int]] = [[] for _ in range(sink + 1)]
    alive = list(range(sink))  # batch row -> prompt index
    use_cache = forward.cache_arg is not None
    past = None
    step_ids, step_pos, full_ids = ids, pos, ids
    for step in range(max_new_tokens):
        logits, cache = forward(step_ids, mask, step_pos, past, use_cache)
        nxt = logits.argmax(-1)
        for r, t in zip(alive, nxt.tolist()):
            rows[r].append(t)
        finished = torch.isin(nxt, stop)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        use_cache = use_cache and cache is not None  # a model that returned no cache: feed whole sequences
        past = cache
        if bool(finished.any()) and (not use_cache or hasattr(past, "batch_select_indices")):
            keep = (~finished).nonzero().squeeze(1)
            alive = [alive[i] for i in keep.tolist()]
            nxt, mask, pos, full_ids = nxt[keep], mask[keep], pos[keep], full_ids[keep]
            if use_cache:
                past.batch_select_indices(keep)
        elif bool(finished.any()):  # a cache that cannot drop rows: stop recording finished ones
            alive = [sink if f else r for r, f in zip(alive, finished.tolist())]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
        full_ids = torch.cat([full_ids, nxt[:, None]], dim=1)
        step_ids, step_pos = (nxt[:, None], pos[:, -1:]) if use_cache else (full_ids, pos)
    return rows[:sink]


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, tokenizer, prompts: list[str], max_new_tokens: int,
                    batch_size: int = 256) -> list[str]:
    """Greedy continuations of `prompts`, each cut at its first newline (or EOS)."""
    forward = _Forward(model)
    device = next(model.parameters()).device
    stop = torch.tensor(sorted(_stop_ids(tokenizer)), device=device)
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = encode_batch(tokenizer, prompts[start:start + batch_size], device)
        rows = _greedy_batch(forward, ids, mask, max_new_tokens, stop) if max_new_tokens > 0 else [[] for _ in ids]
        outputs += [tokenizer.decode(row, skip_special_tokens=True).split("\n", 1)[0] for row in rows]
    return outputs


def choice_loglikelihoods(model: torch.nn.Module, tokenizer, prompt: str, choices: list[str]) -> list[float]:
    """Sum of log-probabilities of each choice's tokens after `prompt` (as lm-eval
    computes them: encode prompt+choice, the continuation is what follows the prompt's ids)."""
    return [score for score, _ in continuation_scores(model, tokenizer, prompt, choices)]
