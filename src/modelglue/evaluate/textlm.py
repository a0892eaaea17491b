"""The text-level interface the evaluator drives: text in, text or log-likelihoods out.

    lm = text_lm(model, tokenizer)      # any HF causal LM, or a model-level mixture
    lm.greedy(["add 1+2="], max_new_tokens=4)        -> ["3"]
    lm.loglikelihoods([("add 1+2=", "3"), ("add 1+2=", "4")]) -> [(-0.1, True), (-5.2, False)]

A model that tokenizes by itself (a model-level mixture whose experts each read their
own tokenizer) provides `text_lm(tokenizer)` and returns its own implementation;
every other model gets `HFTextLM`, which tokenizes with the given tokenizer. The
evaluator, the lm-eval adapter, the search scorers and glue all go through here, so
none of them needs to know which kind of model it scores.
"""
from __future__ import annotations

from itertools import groupby
from typing import Protocol, runtime_checkable

import torch

from modelglue.errors import ModelGlueError
from modelglue.evaluate.generate import greedy_generate
from modelglue.evaluate.loglik import continuation_scores


@runtime_checkable
class TextLM(Protocol):
    """What the evaluator needs of a model."""

    def greedy(self, prompts: list[str], max_new_tokens: int, batch_size: int = 256) -> list[str]:
        """Greedy continuation of each prompt, cut at its first newline (or EOS)."""
        ...

    def loglikelihoods(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(log-likelihood, is greedy) of each continuation after its context."""
        ...


class HFTextLM:
    """A Hugging Face causal LM read through its tokenizer."""

    def __init__(self, model: torch.nn.Module, tokenizer):
        if tokenizer is None:
            raise ModelGlueError(f"{type(model).__name__}: a tokenizer is needed to score it on text")
        self.model, self.tokenizer = model, tokenizer

    def greedy(self, prompts: list[str], max_new_tokens: int, batch_size: int = 256) -> list[str]:
        return greedy_generate(self.model, self.tokenizer, list(prompts), max_new_tokens, batch_size=batch_size)

    def loglikelihoods(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        # One batch per run of requests sharing a context (a multiple-choice question):
        # a row's numbers then never depend on which other questions are scored with it.
        out: list[tuple[float, bool]] = []
        for context, run in groupby(requests, key=lambda r: r[0]):
            out += continuation_scores(self.model, self.tokenizer, context, [c for _, c in run])
        return out


def text_lm(model, tokenizer=None) -> TextLM:
    """The text-level view of `model`: itself if it already is one, the model's own
    (`model.text_lm(tokenizer)`, e.g. a model-level mixture), else `HFTextLM`."""
    if isinstance(model, TextLM):
        return model
    own = getattr(model, "text_lm", None)
    if callable(own):
        return own(tokenizer)
    return HFTextLM(model, tokenizer)

