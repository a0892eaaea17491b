"""Log-likelihood of text continuations under a causal LM with its own tokenizer.

A leaf module (torch only), used by `generate.choice_loglikelihoods` and by the
text-level interface (`modelglue.evaluate.textlm`).
"""
from __future__ import annotations

import torch


def logits_of(out) -> torch.Tensor:
    """The logits of a forward pass (a model may return the tensor itself)."""
    return out if isinstance(out, torch.Tensor) else out.logits


def _encode_pair(tokenizer, ctx: list[int], context: str, continuation: str) -> list[int]:
    """context + continuation as ids, as lm-eval encodes them: the whole text, unless the
    tokenizer merges across the boundary; then the two parts apart."""
    whole = tokenizer(context + continuation)["input_ids"]
    if whole[: len(ctx)] != ctx:
        whole = ctx + tokenizer(continuation, add_special_tokens=False)["input_ids"]
    return whole


@torch.no_grad()
def continuation_scores(model: torch.nn.Module, tokenizer, context: str,
                        continuations: list[str]) -> list[tuple[float, bool]]:
    """(sum of log-probabilities, is greedy) of each continuation's tokens after
    `context`, in one right-padded batch. "Is greedy": every continuation token is the
    argmax at its position (lm-eval's second loglikelihood value). An empty context is
    replaced by the BOS (else EOS) token, so the first token has something to follow."""
    device = next(model.parameters()).device
    ctx = tokenizer(context)["input_ids"]
    if not ctx:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ctx = [start if start is not None else 0]
    rows = [_encode_pair(tokenizer, ctx, context, c) for c in continuations]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):  # right padding: positions start at 0 in every row
        ids[i, : len(r)] = torch.tensor(r, device=device)
        mask[i, : len(r)] = 1
    logp = torch.log_softmax(logits_of(model(input_ids=ids, attention_mask=mask)).float(), dim=-1)
    out = []
    for i, r in enumerate(rows):
        n = len(r) - len(ctx)
        target = ids[i, len(r) - n: len(r)]
        step = logp[i, len(r) - n - 1: len(r) - 1]
        out.append((float(step.gather(-1, target[:, None]).sum()), bool((step.argmax(-1) == target).all())))
    return out
