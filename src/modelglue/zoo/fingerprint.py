"""Model fingerprints and compatibility groups, from headers and small files only.

A fingerprint is everything that decides whether two checkpoints can be weight-merged
at all: the architecture, the exact tensor names and shapes, and the tokenizer (the
same embedding row must mean the same token). Models whose fingerprints differ in any
of these fall into different compatibility groups.

Between groups there is a middle case that real zoos are full of: the same architecture
and tensors, and the same vocabulary up to added tokens or padding rows of the
embedding (CodeLlama's 32,016 tokens vs Llama-2's 32,000; Qwen2.5's 151,665 tokens in
152,064 rows). Such models merge after their vocabularies are aligned (a union
tokenizer, mergekit's `tokenizer_source: union`); anything else can only be mixed.
`merge_relation` tells the three apart. No tensor data is read here.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from operator import itemgetter
from pathlib import Path

from modelglue.arch import config_vocab_size, num_layers, tensor_role
from modelglue.errors import ModelGlueError
from modelglue.io import Checkpoint

# Files that identify a tokenizer when tokenizer.json is absent (slow tokenizers).
_TOKENIZER_FALLBACK_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt")


@dataclass(frozen=True)
class ModelFingerprint:
    """What one model is, as far as merging is concerned."""

    path: str  # the directory as given
    name: str  # short display name (directory name, made unique)
    architecture: str  # config `architectures` joined with '+', or model_type
    model_type: str
    signature: str  # hash of the sorted (tensor name, shape) list; dtype deliberately excluded
    tokenizer: str | None  # hash of the vocabulary (token -> id, added tokens); None if unknown
    vocab_size: int | None
    num_params: int
    dtype: str  # dtype holding most parameters, e.g. "float32"; "mixed" details in dtypes
    dtypes: dict[str, int]  # dtype -> parameter count
    num_layers: int
    hidden_size: int | None
    num_tensors: int
    # the tensor signature with the vocabulary dimension (embedding / lm_head rows) left
    # out: equal layouts merge once the vocabularies are aligned
    layout: str = ""
    tokenizer_size: int | None = None  # tokens in the tokenizer, added tokens included

    @property
    def compat_key(self) -> tuple:
        """Models with equal keys can be weight-merged tensor by tensor.

        An unknown tokenizer matches only another unknown one with the same vocab size:
        we cannot prove it differs, and the shapes already agree."""
        return (self.architecture, self.signature, self.tokenizer or f"unknown/{self.vocab_size}")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TokenizerFiles:
    """What zoo analysis needs of a model's tokenizer, from one parse of tokenizer.json
    (7-11 MB in Qwen's and Llama-3's zoos: reading and hashing it is most of a fingerprint's time)."""

    identity: str | None  # a short hash of the vocabulary; None when there is no tokenizer at all
    vocab: dict[str, int] | None  # token -> id (model vocabulary and added tokens); None without tokenizer.json


def read_tokenizer(model_dir: Path) -> TokenizerFiles:
    """The tokenizer in `model_dir`. The identity hashes tokenizer.json's `model.vocab`
    (+ merges, which change how text splits) and its added tokens, canonicalised; without
    tokenizer.json, the raw slow-tokenizer files (whose vocabulary is not read: vocab None).

    Normalisers, templates and special-token roles are left out on purpose: they do not
    change which embedding row a token id selects, which is what merging needs."""
    tj = Path(model_dir) / "tokenizer.json"
    h = hashlib.sha256()
    if not tj.is_file():
        found = [name for name in _TOKENIZER_FALLBACK_FILES if (Path(model_dir) / name).is_file()]
        for name in found:
            h.update(name.encode())
            h.update((Path(model_dir) / name).read_bytes())
        return TokenizerFiles(h.hexdigest()[:16] if found else None, None)
    try:
        data = json.loads(tj.read_text(encoding="utf-8"))
        model = data.get("model") or {}
        vocab, added = model.get("vocab") or {}, data.get("added_tokens") or []
        # the vocabulary in id order (Unigram's list already is): sorting 150k tokens by
        # id is 5x faster than by text, and any key order of the file hashes the same
        in_order = sorted(vocab.items(), key=itemgetter(1, 0)) if isinstance(vocab, dict) else vocab
        canon = [model.get("type"), in_order, model.get("merges"), sorted((t.get("id"), t.get("content")) for t in added)]
        if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            out = {str(v[0]): i for i, v in enumerate(vocab)}
        else:
            out = {str(k): int(v) for k, v in vocab.items()}
        out.update((str(t["content"]), int(t["id"])) for t in added)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, KeyError, ValueError) as exc:
        raise ModelGlueError(f"{tj}: unreadable tokenizer.json ({exc})") from None
    h.update(json.dumps(canon, ensure_ascii=False).encode())
    return TokenizerFiles(h.hexdigest()[:16], out)


def tokenizer_identity(model_dir: Path) -> str | None:
    """A short hash of the vocabulary (see `read_tokenizer`); None without a tokenizer."""
    return read_tokenizer(model_dir).identity


def vocabulary(model_dir: Path) -> dict[str, int] | None:
    """token -> id of the tokenizer in `model_dir` (see `read_tokenizer`); None when there
    is no tokenizer.json (slow tokenizers are only hashed)."""
    return read_tokenizer(model_dir).vocab


def _architecture(config: dict) -> tuple[str, str]:
    model_type = str(config.get("model_type") or "unknown")
    archs = config.get("architectures")
    if isinstance(archs, list) and archs:
        return "+".join(map(str, archs)), model_type
    return model_type, model_type


def fingerprint(ckpt: Checkpoint, name: str | None = None, path: str | None = None,
                tokenizer: TokenizerFiles | None = None) -> ModelFingerprint:
    """Fingerprint an opened checkpoint (headers, config and tokenizer only); `tokenizer`:
    its `read_tokenizer`, when the caller has it already."""
    names = ckpt.names()
    sig = hashlib.sha256()
    for n in sorted(names):
        sig.update(f"{n}:{list(ckpt.shape(n))}\n".encode())
    dtypes: Counter[str] = Counter()
    for n in names:
        dtypes[str(ckpt.dtype(n)).removeprefix("torch.")] += math.prod(ckpt.shape(n))
    arch, model_type = _architecture(ckpt.config)
    hidden = ckpt.config.get("hidden_size") or ckpt.config.get("n_embd") or ckpt.config.get("d_model")
    vocab_size = config_vocab_size(ckpt.config)
    tok = tokenizer if tokenizer is not None else read_tokenizer(ckpt.path)
    return ModelFingerprint(
        path=path if path is not None else str(ckpt.path),
        name=name or ckpt.path.name,
        architecture=arch,
        model_type=model_type,
        signature=sig.hexdigest()[:16],
        tokenizer=tok.identity,
        vocab_size=vocab_size,
        num_params=sum(dtypes.values()),
        dtype=dtypes.most_common(1)[0][0] if dtypes else "none",
        dtypes=dict(dtypes),
        num_layers=num_layers(ckpt.config, names),
        hidden_size=hidden if isinstance(hidden, int) else None,
        num_tensors=len(names),
        layout=_layout(ckpt, names, vocab_size),
        tokenizer_size=len(tok.vocab) if tok.vocab is not None else None,
    )


def _layout(ckpt: Checkpoint, names: list[str], vocab_size: int | None) -> str:
    """The signature with the rows of vocabulary-sized tensors outside the blocks
    (embeddings, lm_head) written as V: what stays equal when only the vocabulary grows."""
    h = hashlib.sha256()
    for n in sorted(names):
        shape: list = list(ckpt.shape(n))
        if shape and vocab_size and shape[0] == vocab_size and tensor_role(n).kind != "layer":
            shape[0] = "V"
        h.update(f"{n}:{shape}\n".encode())
    return h.hexdigest()[:16]


def compatibility_groups(fps: list[ModelFingerprint]) -> list[list[int]]:
    """Indices of mutually weight-mergeable models, groups in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, fp in enumerate(fps):
        groups.setdefault(fp.compat_key, []).append(i)
    return list(groups.values())


def incompatibility_reason(a: ModelFingerprint, b: ModelFingerprint) -> str | None:
    """Why two models cannot be weight-merged (None when they can), for the report."""
    if a.architecture != b.architecture:
        return f"architecture {a.architecture} vs {b.architecture}"
    if a.signature != b.signature:
        return "tensor names or shapes differ"
    if a.compat_key[2] != b.compat_key[2]:
        return "tokenizers differ"
    return None


# The three ways two models relate (see the module docstring).
DIRECT, ALIGN, MIX = "merge", "merge after alignment", "mix only"


def vocabulary_relation(a: dict[str, int], b: dict[str, int]) -> str | None:
    """How two vocabularies (token -> id) differ when one extends the other: every token
    of the smaller has the same id in the larger. None when neither extends the other."""
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    if any(large.get(t) != i for t, i in small.items()):
        return None
    extra = len(large) - len(small)
    return "the same vocabulary" if extra == 0 else \
        f"the same vocabulary up to {extra} added token{'s' * (extra != 1)} ({len(small):,} vs {len(large):,})"


def merge_relation(a: ModelFingerprint, b: ModelFingerprint, vocab_a: dict[str, int] | None,
                   vocab_b: dict[str, int] | None) -> tuple[str, str]:
    """(DIRECT | ALIGN | MIX, why) for two models; `vocab_*` from `vocabulary()`."""
    if a.compat_key == b.compat_key:
        return DIRECT, "same architecture, tensors and tokenizer"
    if a.architecture != b.architecture:
        return MIX, f"architecture {a.architecture} vs {b.architecture}"
    if not a.layout or a.layout != b.layout:
        return MIX, "tensor names or shapes differ (beyond the vocabulary rows)"
    if vocab_a is None or vocab_b is None:
        return MIX, "tokenizers differ (no tokenizer.json to compare their vocabularies)"
    related = vocabulary_relation(vocab_a, vocab_b)
    if related is None:
        return MIX, "vocabularies differ (the same token has another id)"
    if a.vocab_size != b.vocab_size and a.vocab_size and b.vocab_size:
        related += f", {a.vocab_size:,} vs {b.vocab_size:,} embedding rows"
    return ALIGN, related
