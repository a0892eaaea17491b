"""Batched greedy decoding with a KV cache, and log-likelihood scoring of choices.

Works on any Hugging Face causal LM, and on any torch module whose forward takes
`input_ids` and `attention_mask` and returns logits (a tensor or an object with
`.logits`); such modules are decoded without a cache (the whole sequence each step).
"""
from __future__ import annotations

import inspect

import torch

from modelglue.evaluate.loglik import continuation_scores


def _logits(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


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


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, tokenizer, prompts: list[str], max_new_tokens: int,
                    batch_size: int = 256) -> list[str]:
    """Greedy continuations of `prompts`, each cut at its first newline (or EOS)."""
    params = _forward_params(model)
    # transformers 5 names the cache argument `cache`; 4.x (and some custom models) `past_key_values`.
    cache_arg = "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else None
    use_cache = cache_arg is not None
    pass_pos = "position_ids" in params
    stop = torch.tensor(sorted(_stop_ids(tokenizer)))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = encode_batch(tokenizer, prompts[start:start + batch_size], device)
        # Left padding shifts the positions; count them from each row's first real token.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        done = torch.zeros(ids.size(0), dtype=torch.bool, device=device)
        new_tokens: list[torch.Tensor] = []
        past = None
        step_ids, step_pos = full_ids, full_pos = ids, pos
        for _ in range(max_new_tokens):
            kwargs = {"attention_mask": mask}
            if pass_pos:
                kwargs["position_ids"] = step_pos
            if use_cache:
                kwargs.update({cache_arg: past, "use_cache": True})
            out = model(input_ids=step_ids, **kwargs)
            nxt = _logits(out)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            new_tokens.append(nxt)
            done |= torch.isin(nxt, stop.to(device))
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            full_ids = torch.cat([full_ids, nxt[:, None]], dim=1)
            full_pos = torch.cat([full_pos, full_pos[:, -1:] + 1], dim=1)
            if use_cache:
                past = (out.get("cache") if "cache" in out else out.get("past_key_values")) if hasattr(out, "get") else None
                use_cache = past is not None  # a model that returned no cache: feed whole sequences
            if use_cache:
                step_ids, step_pos = nxt[:, None], full_pos[:, -1:]
            else:
                step_ids, step_pos = full_ids, full_pos
        gen = torch.stack(new_tokens, dim=1).tolist() if new_tokens else [[] for _ in range(ids.size(0))]
        for row in gen:
            text = tokenizer.decode(row, skip_special_tokens=True)
            outputs.append(text.split("\n", 1)[0])
    return outputs


def choice_loglikelihoods(model: torch.nn.Module, tokenizer, prompt: str, choices: list[str]) -> list[float]:
    """Sum of log-probabilities of each choice's tokens after `prompt` (as lm-eval
    computes them: encode prompt+choice, the continuation is what follows the prompt's ids)."""
    return [score for score, _ in continuation_scores(model, tokenizer, prompt, choices)]
