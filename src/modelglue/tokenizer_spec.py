"""The tokenizer keys of a recipe, as mergekit 0.1.5 reads them, parsed and checked up front.

`tokenizer_source: base | union | <model>` or a `tokenizer:` block (`source`, default
`union`; `tokens`: per-token embedding sources; `pad_to_multiple_of`), never both. A
token's source is a model of the recipe (the token's own row there), `{kind: zero}`, or
`{kind: model_token, model: M, token: T | token_id: N}` (the row of another token); with
`force: true` every input takes that row even where it has the token itself.
Nothing here reads a model: engine/vocab.py builds the vocabulary from this.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from modelglue.errors import ModelGlueError


@dataclass(frozen=True)
class TokenSource:
    """Where a token's embedding row comes from: kind 'model' (the token's own row in
    `model`), 'zero', or 'model_token' (row `token_id`, or token `token`'s row, of `model`)."""

    kind: str
    model: Path | None = None
    token: str | None = None
    token_id: int | None = None


@dataclass(frozen=True)
class TokenEntry:
    source: TokenSource | None = None
    force: bool = False


@dataclass
class TokenizerSpec:
    source: str | Path  # 'base', 'union' or a model directory
    tokens: dict[str, TokenEntry] = field(default_factory=dict)
    pad_to_multiple_of: int | None = None


def parse_tokenizer(raw: dict, where: str, path: Callable[[Any, str], Path],
                    models: list[Path]) -> TokenizerSpec | None:
    """The recipe's tokenizer_source or tokenizer block (None: the inputs keep their rows
    and must share a vocabulary); `path` resolves a model reference, `models` are the
    recipe's inputs (token sources must be among them)."""
    src, block = raw.get("tokenizer_source"), raw.get("tokenizer")
    if src is not None and block is not None:
        raise ModelGlueError(f"{where}: give either 'tokenizer_source' or a 'tokenizer' block, not both")
    if src is not None:
        return TokenizerSpec(_source(src, "tokenizer_source", path))
    if block is None:
        return None
    if not isinstance(block, dict):
        raise ModelGlueError(f"{where}: 'tokenizer' must be a mapping with source, tokens, pad_to_multiple_of")
    extra = sorted(set(map(str, block)) - {"source", "tokens", "pad_to_multiple_of"})
    if extra:
        raise ModelGlueError(f"{where}: tokenizer: unknown key {extra[0]!r} (known: pad_to_multiple_of, source, tokens)")
    pad = block.get("pad_to_multiple_of")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 1):
        raise ModelGlueError(f"{where}: tokenizer.pad_to_multiple_of must be a positive integer, got {pad!r}")
    tokens = block.get("tokens") or {}
    if not isinstance(tokens, dict):
        raise ModelGlueError(f"{where}: tokenizer.tokens must be a mapping of token -> {{source, force}}")
    known = {m.resolve() for m in models}
    entries = {str(tok): _entry(entry, f"{where}: tokenizer.tokens[{str(tok)!r}]", path, known)
               for tok, entry in tokens.items()}
    return TokenizerSpec(_source(block.get("source", "union"), "tokenizer.source", path), entries, pad)


def _source(value: Any, key: str, path: Callable[[Any, str], Path]) -> str | Path:
    if value in ("base", "union"):
        return value
    return path(value, key)


def _entry(entry: Any, where: str, path: Callable[[Any, str], Path], known: set[Path]) -> TokenEntry:
    if entry is None:
        return TokenEntry()
    if not isinstance(entry, dict) or set(map(str, entry)) - {"source", "force"}:
        raise ModelGlueError(f"{where}: must be a mapping with 'source' and optional 'force'")
    force = entry.get("force", False)
    if not isinstance(force, bool):
        raise ModelGlueError(f"{where}.force must be true or false, got {force!r}")
    src = entry.get("source")
    if src is None:
        return TokenEntry(None, force)
    if isinstance(src, dict) and "kind" in src:
        return TokenEntry(_kind_source(src, where, path, known), force)
    return TokenEntry(TokenSource("model", _member(src, f"{where}.source", path, known)), force)


def _kind_source(src: dict, where: str, path: Callable[[Any, str], Path], known: set[Path]) -> TokenSource:
    kind = src["kind"]
    if kind == "zero":
        if set(src) != {"kind"}:
            raise ModelGlueError(f"{where}.source: kind 'zero' takes no other keys")
        return TokenSource("zero")
    if kind != "model_token":
        raise ModelGlueError(f"{where}.source.kind must be 'zero' or 'model_token', got {kind!r}")
    extra = sorted(set(map(str, src)) - {"kind", "model", "token", "token_id"})
    if extra:
        raise ModelGlueError(f"{where}.source: unknown key {extra[0]!r}")
    if "model" not in src:
        raise ModelGlueError(f"{where}.source: kind 'model_token' needs a 'model'")
    token, token_id = src.get("token"), src.get("token_id")
    if (token is None) == (token_id is None):
        raise ModelGlueError(f"{where}.source: give exactly one of 'token' or 'token_id'")
    if token_id is not None and (not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0):
        raise ModelGlueError(f"{where}.source.token_id must be a non-negative integer, got {token_id!r}")
    model = _member(src["model"], f"{where}.source.model", path, known)
    return TokenSource("model_token", model, None if token is None else str(token), token_id)


def _member(value: Any, where: str, path: Callable[[Any, str], Path], known: set[Path]) -> Path:
    """A model reference that must be one of the recipe's inputs (its rows are what the
    merge reads: mergekit fails mid-merge otherwise)."""
    p = path(value, where.split(": ", 1)[-1])
    if p.resolve() not in known:
        raise ModelGlueError(f"{where}: model {value!r} is not one of the recipe's models")
    return p
