"""Vocabulary alignment: the output tokenizer of `tokenizer_source` / `tokenizer:` and, per
input, the permutation of its embedding and lm_head rows onto it, as mergekit 0.1.5 does
(mergekit/tokenizer/build.py and embed.py).

Planned once (engine/plan.py calls `plan_vocab`: tokenizers and config.json only); each
vocabulary tensor's task then carries `align`, a per-input prepare step the executor runs
on the inputs it has read, before the merge method sees them.

The output vocabulary: `base` is the base model's tokenizer (the first model's when there
is no base) without the tokens at ids past its config's vocab_size; a model path is that
model's tokenizer as it is; `union` is the base's plus every token of the other inputs
(below their vocab_size) it lacks, regular tokens first, then added tokens, each added
with transformers' `add_tokens`. Tokens named under `tokenizer.tokens` are added when new.
Rows are len(vocabulary), rounded up to `pad_to_multiple_of`.

Rows, per input: its own row of each token it has; for a token it lacks (or one forced
under `tokens`) a default row: the configured source if any, else the one model that has
it, else the base's row if the base has it, else the mean over the models that have it,
else zero. Padding rows past the vocabulary are the mean of the input's aligned rows.

Where mergekit's order depends on Python set and Rust hash-map iteration (which model is
"first" without a base, the ids of a union's new tokens), ours is the recipe's order and
each tokenizer's id order, so the same recipe gives the same ids every run; the tokens
and their rows are mergekit's.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from modelglue.arch import config_vocab_size, tensor_role
from modelglue.errors import ModelGlueError, warn
from modelglue.io.checkpoint import load_tokenizer
from modelglue.tokenizer_spec import TokenEntry, TokenizerSpec


def is_vocab_tensor(name: str, shape: tuple[int, ...], config: dict) -> bool:
    """Token-indexed along axis 0: an input / output embedding (or a vocabulary bias)
    outside the blocks, with config's vocab_size rows; position embeddings are not."""
    n = config_vocab_size(config)
    return (n is not None and len(shape) >= 1 and shape[0] == n and tensor_role(name).kind != "layer"
            and "wpe" not in name and "position" not in name)


@dataclass
class VocabPlan:
    tokenizer: Any  # the output tokenizer (transformers), saved with the merged model
    vocab: dict[str, int]  # output token -> id
    rows: int  # output rows: len(vocab) rounded up to pad_to_multiple_of
    perms: dict[int, torch.Tensor]  # model index -> per output id, its own row or -1
    vocabs: dict[int, dict[str, int]]  # model index -> its own token -> id (model_token sources)
    tokens: dict[str, TokenEntry]
    model_index: dict[Path, int]
    _cache: dict[tuple, "_Assignment"] = field(default_factory=dict)

    def aligner(self, models: tuple[int, ...], base: int | None, rows_in: list[int], name: str,
                dtype: torch.dtype | None) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
        """The prepare step of one vocabulary tensor whose inputs come from `models`
        (checked now: every configured source must be one of them and in range)."""
        key = (models, base, tuple(rows_in))
        if key not in self._cache:
            try:
                self._cache[key] = _assign(self, models, base, rows_in)
            except ModelGlueError as exc:
                raise ModelGlueError(f"tensor {name}: {exc}") from None
        return partial(_align, self._cache[key], self.rows, dtype)


@dataclass
class _Assignment:
    own: list[torch.Tensor]  # per input: per output id, its own row, or -1 (takes the default)
    default_ids: torch.Tensor  # output ids with a default row
    parts: list[torch.Tensor]  # per input: per default id, the row it adds to the default, or -1
    count: torch.Tensor  # per default id: how many rows its default averages (1 for copies and zeros)


def plan_vocab(spec: TokenizerSpec, models: list[Path], configs: list[dict], base: int | None) -> VocabPlan:
    """The output tokenizer and every input's row permutation; reads tokenizers only."""
    ref = base if base is not None else 0
    sizes = [config_vocab_size(c) for c in configs]
    base_tok = load_tokenizer(models[ref])
    if base_tok is None:
        raise ModelGlueError(f"{models[ref]}: no tokenizer to build the output vocabulary from "
                             f"(tokenizer_source needs the {'base' if base is not None else 'first'} model's)")
    base_tok = _stripped(base_tok, sizes[ref], models[ref])
    toks = {ref: base_tok}
    for i, m in enumerate(models):
        if i != ref and (tok := load_tokenizer(m)) is not None:
            toks[i] = tok
        elif i != ref:
            warn(f"{m}: no tokenizer; assuming the vocabulary of {models[ref]}")
    own = {i: t.get_vocab() for i, t in toks.items()}  # (get_vocab rebuilds the dict each call: once each)
    vocabs = {i: own.get(i, own[ref]) for i in range(len(models))}
    if isinstance(spec.source, Path):
        out = load_tokenizer(spec.source)
        if out is None:
            raise ModelGlueError(f"tokenizer source {spec.source}: no tokenizer found there")
    elif spec.source == "base":
        out = base_tok
    else:
        out = _union(base_tok, own[ref], [(toks[i], own[i], sizes[i]) for i in sorted(toks, key=lambda i: i != ref)])
    if spec.tokens:
        existing = out.get_vocab()
        out.add_tokens([token for token in spec.tokens if token not in existing])
    vocab = out.get_vocab()
    if vocab and max(vocab.values()) >= len(vocab):
        raise ModelGlueError("the output tokenizer's ids are not contiguous (its ids run past its size)")
    rows = len(vocab)
    if spec.pad_to_multiple_of and rows % spec.pad_to_multiple_of:
        rows += spec.pad_to_multiple_of - rows % spec.pad_to_multiple_of
    perms = {i: _permutation(vocab, vocabs[i], sizes[i]) for i in range(len(models))}
    return VocabPlan(out, vocab, rows, perms, vocabs, dict(spec.tokens), {m.resolve(): i for i, m in enumerate(models)})


def _stripped(tok: Any, size: int | None, path: Path) -> Any:
    """The tokenizer without the tokens at ids >= the model's vocab_size (rows it lacks)."""
    vocab = tok.get_vocab()
    size = size or len(vocab)
    unused = {t for t, i in vocab.items() if i >= size}
    if not unused:
        return tok
    if not tok.is_fast:
        raise ModelGlueError(f"{path}: its tokenizer has tokens past vocab_size {size} and no fast version to remove them from")
    from tokenizers import Tokenizer

    data = json.loads(tok.backend_tokenizer.to_str())
    if data["model"]["type"] != "BPE":
        raise ModelGlueError(f"{path}: its tokenizer has tokens past vocab_size {size}; only a BPE one can drop them "
                             f"(this one is {data['model']['type']})")
    data["added_tokens"] = [e for e in data["added_tokens"] if e["id"] < size]
    for t in unused:
        data["model"]["vocab"].pop(t, None)
    data["model"]["merges"] = [m for m in data["model"]["merges"]
                               if not unused & set(m.split(" ") if isinstance(m, str) else m)]
    tok._tokenizer = Tokenizer.from_str(json.dumps(data))  # the Rust tokenizer transformers wraps
    return tok


def _union(base_tok: Any, base_vocab: dict[str, int], toks: list[tuple[Any, dict[str, int], int | None]]) -> Any:
    """The base tokenizer (a copy) plus every other token below its model's vocab_size."""
    from transformers import AutoTokenizer

    regular: dict[str, None] = {}
    added: dict[str, Any] = {}
    for tok, vocab, size in toks:
        size = size or tok.vocab_size
        special = tok.added_tokens_decoder
        for token, i in sorted(vocab.items(), key=lambda kv: kv[1]):
            if i < size and i not in special:
                regular.setdefault(token)
        for i, info in sorted(special.items()):
            if i < size:
                added.setdefault(info.content, info)
    with tempfile.TemporaryDirectory() as tmp:  # a copy: the base's tokenizer stays as it is
        base_tok.save_pretrained(tmp)
        out = AutoTokenizer.from_pretrained(tmp, use_fast=True, local_files_only=True)
    # one call each: transformers hands the list to the Rust tokenizer, which adds in order
    out.add_tokens([token for token in regular if token not in added and token not in base_vocab])
    out.add_tokens(list(added.values()))
    return out


def _permutation(vocab: dict[str, int], own: dict[str, int], size: int | None) -> torch.Tensor:
    size = size or len(own)
    perm = [-1] * len(vocab)
    for token, new in vocab.items():
        old = own.get(token, -1)
        if old < size:
            perm[new] = old
    return torch.tensor(perm, dtype=torch.long)


def _assign(vp: VocabPlan, models: tuple[int, ...], base: int | None, rows_in: list[int]) -> _Assignment:
    """Which row each input takes for each output token (mergekit's embed.py rules),
    vectorised over the vocabulary; the few tokens under `tokens:` one by one."""
    perm = torch.stack([vp.perms[m] for m in models])
    present = perm >= 0
    configured = torch.zeros(len(vp.vocab), dtype=torch.bool)
    forced = torch.zeros(len(vp.vocab), dtype=torch.bool)
    for token, entry in vp.tokens.items():
        configured[vp.vocab[token]], forced[vp.vocab[token]] = True, entry.force
    default_ids = torch.nonzero(forced | ~present.all(0)).flatten()
    have = present[:, default_ids]
    count = have.sum(0)
    base_pos = models.index(base) if base in models else None
    # one model has it: that one; else the base if it has it; else all that have it (averaged)
    takes = have & (count == 1)
    if base_pos is not None:
        from_base = (count > 1) & have[base_pos]
        takes[:, from_base] = False
        takes[base_pos, from_base] = True
    takes |= have & ~takes.any(0)
    parts = torch.where(takes, perm[:, default_ids], -1)
    id_to_token = {i: t for t, i in vp.vocab.items()}
    for d in torch.nonzero(configured[default_ids]).flatten().tolist():
        tid = int(default_ids[d])
        parts[:, d] = -1
        pos_row = _configured_row(vp, vp.tokens[id_to_token[tid]], id_to_token[tid], tid, models, perm, rows_in)
        if pos_row is not None:
            parts[pos_row[0], d] = pos_row[1]
    missing = torch.nonzero((count == 0) & ~configured[default_ids]).flatten().tolist()
    if missing:
        names = ", ".join(repr(id_to_token[int(default_ids[d])]) for d in missing[:5])
        warn(f"{len(missing)} token(s) in no input model ({names}...): their rows are zero")
    own = [torch.where(forced, -1, perm[p]) for p in range(len(models))]
    return _Assignment(own, default_ids, list(parts), (parts >= 0).sum(0).clamp(min=1))


def _configured_row(vp: VocabPlan, entry: TokenEntry, token: str, tid: int, models: tuple[int, ...],
                    perm: torch.Tensor, rows_in: list[int]) -> tuple[int, int] | None:
    """(input position, row) of a token's configured source; None for a zero row."""
    src = entry.source
    where = f"tokenizer.tokens[{token!r}]"
    if src is None:
        raise ModelGlueError(f"{where}: not every model has this token, so it needs a 'source'")
    if src.kind == "zero":
        return None
    m = vp.model_index[src.model.resolve()]
    if m not in models:
        raise ModelGlueError(f"{where}: source model {src.model} is not an input of this tensor")
    pos = models.index(m)
    if src.kind == "model":
        if int(perm[pos, tid]) < 0:
            raise ModelGlueError(f"{where}: source model {src.model} does not have this token")
        return pos, int(perm[pos, tid])
    row = src.token_id
    if row is None:
        if src.token not in vp.vocabs[m]:
            raise ModelGlueError(f"{where}: token {src.token!r} is not in {src.model}'s vocabulary")
        row = vp.vocabs[m][src.token]
    if row >= rows_in[pos]:
        raise ModelGlueError(f"{where}: token id {row} is out of range for {src.model} ({rows_in[pos]} rows)")
    return pos, row


def _align(a: _Assignment, rows: int, dtype: torch.dtype | None, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each input's rows permuted onto the output vocabulary (the prepare step)."""
    work = dtype
    if work is None:
        work = tensors[0].dtype
        for t in tensors[1:]:
            work = torch.promote_types(work, t.dtype)
    tensors = [t.to(work) for t in tensors]
    dev = tensors[0].device
    a = _Assignment([o.to(dev) for o in a.own], a.default_ids.to(dev), [p.to(dev) for p in a.parts], a.count.to(dev))
    n, tail = len(a.own[0]), tensors[0].shape[1:]
    defaults = tensors[0].new_zeros((len(a.default_ids), *tail))
    for x, part in zip(tensors, a.parts):  # summed in input order, then averaged, as mergekit
        sel = part >= 0
        defaults[sel] = defaults[sel] + x[part[sel]]
    defaults /= a.count.to(work).view(-1, *([1] * len(tail)))
    out = []
    for x, own in zip(tensors, a.own):
        takes = own[a.default_ids] < 0
        if rows == n and not bool(takes.any()) and bool((own == torch.arange(n, device=dev)).all()):
            out.append(x[:n])  # already in the output's order (same vocabulary): no copy
            continue
        new = torch.empty((rows, *tail), dtype=work, device=dev)
        torch.index_select(x, 0, own.clamp(min=0), out=new[:n])  # rows at -1 are all defaults, set next
        new[a.default_ids[takes]] = defaults[takes]
        if rows > n:  # padding rows: the mean embedding (mergekit, after Hewitt's vocabulary expansion note)
            new[n:] = torch.mean(new[:n], dim=0)
        out.append(new)
    return out
