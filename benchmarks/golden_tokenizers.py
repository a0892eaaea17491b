"""Tiny models whose vocabularies differ, and the tokenizer recipes run on them, for the
mergekit golden references (make_golden.py imports this; tests/data/mergekit_golden/README.md).

Each model is a 2-layer Llama (or Qwen2, tied embeddings) with hidden size 16 and a
byte-level BPE tokenizer built with `tokenizers` (tokenizer.json + tokenizer_config.json):

- tok_base:   19 tokens (`<s>`, `</s>`, a..j, Ġ, and 6 merges), vocab_size 19;
- tok_add:    tok_base's tokenizer plus added `<|im_start|>`, `<|im_end|>` (special) and
              `<tool>` (CodeLlama's 32,016 vs Llama-2's 32,000 in miniature), vocab_size 22;
- tok_add2:   another fine-tune with tok_add's tokenizer (tokens two models add are averaged);
- tok_perm:   the same strings under shuffled ids plus two more merges (`gh`, `ij`), vocab_size 21;
- tok_pad:    tok_base's tokenizer over 25 embedding rows (Qwen2.5's 151,665 tokens in
              152,064 rows in miniature);
- tok_trunc:  tok_base's tokenizer plus two added tokens at ids 19, 20 past its 19 rows
              (removed from the tokenizer when it is the base, as mergekit does);
- qtok_base, qtok_add: Qwen2 (tied) with tok_base's / tok_add's tokenizer, 24 rows each.

Rows of tokens a fine-tune shares with tok_base are tok_base's rows plus noise, so that
aligned merges are meaningful; rows of new tokens and padding rows are seeded noise.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SMALL = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=16, intermediate_size=32,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=19,
    max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False,
    bos_token_id=0, eos_token_id=1,
)
SMALL_QWEN2 = {**SMALL, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "tie_word_embeddings": True,
               "vocab_size": 24}
BASE_TOKENS = ["<s>", "</s>", *"abcdefghij", "Ġ"]
BASE_MERGES = [("a", "b"), ("c", "d"), ("e", "f"), ("Ġ", "a"), ("Ġ", "b"), ("ab", "cd")]
EXTRA_MERGES = [("g", "h"), ("i", "j")]
ADDED = [("<|im_start|>", True), ("<|im_end|>", True), ("<tool>", False)]
VOCAB_KEYS = ("model.embed_tokens.weight", "lm_head.weight")

TB, TA, TA2, TP, TPAD, TT = ("models/tok_base", "models/tok_add", "models/tok_add2", "models/tok_perm",
                             "models/tok_pad", "models/tok_trunc")
QTB, QTA = "models/qtok_base", "models/qtok_add"


def save_tokenizer(out: Path, merges: list[tuple[str, str]], added: list[tuple[str, bool]],
                   order_seed: int | None = None) -> None:
    """A byte-level BPE tokenizer over BASE_TOKENS + the merges' results; with order_seed
    the ids of all but `<s>` and `</s>` are shuffled."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AddedToken, PreTrainedTokenizerFast

    tokens = BASE_TOKENS + ["".join(m) for m in merges]
    if order_seed is not None:
        rest = tokens[2:]
        order = torch.randperm(len(rest), generator=torch.Generator().manual_seed(order_seed)).tolist()
        tokens = tokens[:2] + [rest[i] for i in order]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    for content, special in added:
        fast.add_tokens([AddedToken(content, special=special, normalized=not special)], special_tokens=special)
    fast.save_pretrained(str(out))


def _vocab(model_dir: Path) -> dict[str, int]:
    data = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = dict(data["model"]["vocab"])
    vocab.update({e["content"]: e["id"] for e in data["added_tokens"]})
    return vocab


def derive(base_dir: Path, out: Path, seed: int, rows: int) -> None:
    """A fine-tune of base_dir over `rows` vocabulary rows (its tokenizer already in out):
    each token it shares with the base keeps the base's row (moved to its own id) plus
    noise; other rows are noise."""
    base = load_file(base_dir / "model.safetensors")
    base_vocab, own_vocab = _vocab(base_dir), _vocab(out)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name in sorted(base):
        t = base[name]
        scale = max(t.std().item() if t.numel() > 1 else 0.02, 0.02)
        if name in VOCAB_KEYS:
            new = scale * torch.randn((rows, t.shape[1]), generator=g)
            for token, i in own_vocab.items():
                if i < rows and token in base_vocab and base_vocab[token] < t.shape[0]:
                    new[i] = t[base_vocab[token]] + 0.2 * scale * torch.randn(t.shape[1], generator=g)
            sd[name] = new.contiguous()
        else:
            sd[name] = (t + 0.2 * scale * torch.randn(t.shape, generator=g)).contiguous()
    save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((base_dir / "config.json").read_text())
    cfg["vocab_size"] = rows
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def build_tokenizer_models(root: Path, build_base) -> None:
    """The models above under root/models (skipped when all are there already)."""
    m = root / "models"
    names = ["tok_base", "tok_add", "tok_add2", "tok_perm", "tok_pad", "tok_trunc", "qtok_base", "qtok_add"]
    if all((m / n / "tokenizer.json").is_file() for n in names):
        return
    n_base = len(BASE_TOKENS) + len(BASE_MERGES)
    build_base(SMALL, m / "tok_base", seed=3000)
    save_tokenizer(m / "tok_base", BASE_MERGES, [])
    for name, merges, added, order, rows, seed in [
        ("tok_add", BASE_MERGES, ADDED, None, n_base + 3, 3001),
        ("tok_add2", BASE_MERGES, ADDED, None, n_base + 3, 3002),
        ("tok_perm", BASE_MERGES + EXTRA_MERGES, [], 7, n_base + 2, 3003),
        ("tok_pad", BASE_MERGES, [], None, n_base + 6, 3004),
        ("tok_trunc", BASE_MERGES, [("<j1>", True), ("<j2>", False)], None, n_base, 3005),
    ]:
        (m / name).mkdir(parents=True, exist_ok=True)
        save_tokenizer(m / name, merges, added, order)
        derive(m / "tok_base", m / name, seed, rows)
    build_base(SMALL_QWEN2, m / "qtok_base", seed=3100)
    save_tokenizer(m / "qtok_base", BASE_MERGES, [])
    (m / "qtok_add").mkdir(parents=True, exist_ok=True)
    save_tokenizer(m / "qtok_add", BASE_MERGES, ADDED)
    derive(m / "qtok_base", m / "qtok_add", 3101, SMALL_QWEN2["vocab_size"])


def tokenizer_recipes() -> dict[str, dict]:
    """name -> mergekit recipe over the models above (each names a base_model: without
    one, mergekit's choice of the vocabulary's base follows Python's set order)."""
    f32 = {"dtype": "float32"}
    r: dict[str, dict] = {}
    r["tok_union_linear"] = {"merge_method": "linear", "base_model": TB, "models": [
        {"model": TB, "parameters": {"weight": 1.0}}, {"model": TA, "parameters": {"weight": 0.5}},
        {"model": TA2, "parameters": {"weight": 0.3}}, {"model": TP, "parameters": {"weight": 0.7}}],
        "tokenizer_source": "union", **f32}
    r["tok_union_ties"] = {"merge_method": "ties", "base_model": TB, "models": [
        {"model": TA, "parameters": {"weight": 0.6, "density": 0.5}},
        {"model": TP, "parameters": {"weight": 0.4, "density": 0.5}}], "tokenizer_source": "union", **f32}
    r["tok_union_slerp"] = {"merge_method": "slerp", "base_model": TB, "models": [{"model": TB}, {"model": TP}],
                            "parameters": {"t": 0.4}, "tokenizer_source": "union", **f32}
    r["tok_source_model"] = {"merge_method": "linear", "base_model": TB, "models": [
        {"model": TB, "parameters": {"weight": 0.5}}, {"model": TA, "parameters": {"weight": 0.5}}],
        "tokenizer_source": TA, **f32}
    r["tok_source_base"] = {"merge_method": "linear", "base_model": TPAD, "models": [
        {"model": TPAD, "parameters": {"weight": 0.4}}, {"model": TP, "parameters": {"weight": 0.3}},
        {"model": TB, "parameters": {"weight": 0.3}}], "tokenizer_source": "base", **f32}
    r["tok_source_base_stripped"] = {"merge_method": "linear", "base_model": TT, "models": [
        {"model": TT, "parameters": {"weight": 0.5}}, {"model": TA, "parameters": {"weight": 0.5}}],
        "tokenizer_source": "base", **f32}
    r["tok_block"] = {"merge_method": "task_arithmetic", "base_model": TB, "models": [
        {"model": TA, "parameters": {"weight": 0.5}}, {"model": TP, "parameters": {"weight": 0.5}}],
        "tokenizer": {"source": "union", "pad_to_multiple_of": 8, "tokens": {
            "<|im_end|>": {"source": {"kind": "zero"}},
            "<tool>": {"source": {"kind": "model_token", "model": TP, "token": "gh"}},
            "<new>": {"source": {"kind": "model_token", "model": TB, "token_id": 3}},
            "ab": {"source": TP, "force": True},
        }}, **f32}
    r["qtok_union_pad"] = {"merge_method": "linear", "base_model": QTB, "models": [
        {"model": QTB, "parameters": {"weight": 0.5}}, {"model": QTA, "parameters": {"weight": 0.5}}],
        "tokenizer": {"source": "union", "pad_to_multiple_of": 16}, **f32}
    r["qtok_union"] = {"merge_method": "linear", "base_model": QTB, "models": [
        {"model": QTB, "parameters": {"weight": 0.4}}, {"model": QTA, "parameters": {"weight": 0.6}}],
        "tokenizer_source": "union", **f32}
    r["tok_union_passthrough"] = {"merge_method": "passthrough", "slices": [  # the embeddings from tok_base alone,
        {"sources": [{"model": TB, "layer_range": [0, 2]}]},                    # lm_head from tok_perm alone: rows
        {"sources": [{"model": TP, "layer_range": [1, 2]}]}],                   # neither has are zero
        "tokenizer_source": "union", **f32}
    return r
