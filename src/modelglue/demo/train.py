"""Tiny causal LMs for the demo zoo: a shared char tokenizer, model configs, one
training loop. Read top to bottom: tokenizer, models, batches, train, save."""
from __future__ import annotations

import json
import math
import random
import string
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modelglue.evaluate.tasks import sample_train

# ----------------------------------------------------------------------------------
# Tokenizer: one token per character. Families A, B and C share it; family D reads the
# same characters under other ids (`vocab_seed`): it can be mixed with them, never merged.

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list(string.printable[:95]) + ["\n"]  # printable ASCII incl. space, then newline
PAD, BOS, EOS, UNK = range(4)


def token_ids(vocab_seed: int | None = None) -> dict[str, int]:
    """Token string -> id: the specials first, then the characters, shuffled by `vocab_seed`."""
    chars = list(CHARS)
    if vocab_seed is not None:
        random.Random(vocab_seed).shuffle(chars)
    return {t: i for i, t in enumerate(SPECIALS + chars)}


def build_tokenizer(vocab_seed: int | None = None):
    """A fast char-level tokenizer that prepends BOS (so lm-eval and our eval encode
    prompts identically with the tokenizer's defaults)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=token_ids(vocab_seed), unk_token="<unk>"))
    # Split on the empty pattern, keeping each character as its own piece.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(""), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS)])
    tok.decoder = decoders.Fuse()  # join characters back without spaces between them
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", padding_side="left", model_max_length=64)


def save_tokenizer(tokenizer, out: Path) -> None:
    tokenizer.save_pretrained(out)
    # Name the class explicitly: transformers would otherwise rebuild a tokenizer
    # from the model type (e.g. a byte-level one for Qwen2) and lose plain spaces.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2))


# ----------------------------------------------------------------------------------
# Models. "llama" is families A and B; "qwen3" (another architecture, another width)
# is family C, which cannot be weight-merged with them.

def make_model(arch: str, size: dict, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(vocab_size=len(SPECIALS) + len(CHARS), max_position_embeddings=64,
                  bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                  tie_word_embeddings=False, rms_norm_eps=1e-5, **size)
    torch.manual_seed(seed)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    if arch == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(**common))
    raise ValueError(f"unknown demo architecture {arch!r}")


# ----------------------------------------------------------------------------------
# Batches: the token ids of "<s>prompt" + "answer\n</s>", right-padded; the loss is
# on the answer only (the prompt is given at test time, never generated).

def make_batch(mix: list[tuple[str, bool, float]], rng: random.Random, batch_size: int,
               vocab_seed: int | None = None):
    """`mix` lists (task, hard, weight). Returns input_ids, labels (-100 where no loss)."""
    ids_of = token_ids(vocab_seed)
    tasks, weights = [m[:2] for m in mix], [m[2] for m in mix]
    rows, labels = [], []
    for task, hard in rng.choices(tasks, weights, k=batch_size):
        prompt, answer = sample_train(task, rng, hard)
        p = [BOS] + [ids_of[c] for c in prompt]
        a = [ids_of[c] for c in answer + "\n"] + [EOS]
        rows.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, rows))
    ids = torch.full((batch_size, width), PAD)
    lab = torch.full((batch_size, width), -100)
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(l)] = torch.tensor(l)
    return ids, lab


def train(model: torch.nn.Module, mix: list[tuple[str, bool, float]], steps: int, lr: float,
          seed: int, batch_size: int = 64, warmup: int = 50, desc: str = "train",
          teacher: torch.nn.Module | None = None,
          keep: list[tuple[str, bool, float]] | None = None, keep_share: float = 0.3,
          keep_hidden: float = 0.0, log_every: float = 0.0, vocab_seed: int | None = None) -> float:
    """AdamW with linear warmup and cosine decay.

    With a `teacher` (the parent), `keep_share` of every batch is drawn from the `keep`
    mix and scored by the KL divergence to the teacher's next-token distribution on the
    answer positions (the rest by cross-entropy on `mix`): the run learns its tasks while
    keeping the parent's behaviour, wrong answers included, on everything else, so its
    task vector does little outside its tasks and adds to others'.

    `keep_hidden` > 0 also keeps the parent's hidden states on those keep examples, at every
    layer and every (prompt or answer) position: the relative squared error, summed over
    layers, weighted by `keep_hidden`. Keeping the outputs alone lets a fine-tune rewire
    the inside and compensate downstream; another task vector added to it then meets
    hidden states it was not trained for. A task vector that leaves the other tasks'
    activations in place acts only where its task is, so task vectors add (measured in
    docs/demo_and_eval.md).

    Where no step bar is drawn (stderr not a terminal, or bars disabled), `log_every` > 0
    writes a line to stderr every that many seconds instead. `vocab_seed` names the model's
    tokenizer (see token_ids). Returns the mean loss of the last 50 steps."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    model.train()
    losses: list[float] = []
    # disable=None: no bar where stderr is not a terminal (a log gets the per-model lines)
    bar = tqdm(range(steps), desc=desc, leave=False, mininterval=1.0, disable=None)
    t0 = last_log = time.time()
    for step in bar:
        if log_every and step and bar.disable and time.time() - last_log >= log_every:
            last_log = time.time()
            eta = (last_log - t0) / step * (steps - step)
            print(f"{desc}: step {step}/{steps}, loss {losses[-1]:.3f} ({last_log - t0:.0f} s, ETA {eta:.0f} s)",
                  file=sys.stderr, flush=True)
        warm = min(1.0, (step + 1) / max(1, warmup))
        cos = 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr * warm * (0.1 + 0.9 * cos)
        n_keep = round(batch_size * keep_share) if teacher is not None else 0
        ids, lab = make_batch(mix, rng, batch_size - n_keep, vocab_seed)
        logits = model(input_ids=ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), lab[:, 1:].reshape(-1))
        if n_keep:
            kept = _keep_loss(model, teacher, *make_batch(keep, rng, n_keep, vocab_seed), keep_hidden)
            loss = loss * (1 - n_keep / batch_size) + kept * (n_keep / batch_size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    tail = losses[-50:]
    return sum(tail) / max(1, len(tail))


def _keep_loss(model: torch.nn.Module, teacher: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor,
               keep_hidden: float) -> torch.Tensor:
    """How far `model` strays from `teacher` on keep examples: KL of the next-token
    distributions on the answer positions, plus `keep_hidden` x the relative squared
    change of every layer's hidden states at every non-pad position."""
    hidden = keep_hidden > 0
    with torch.no_grad():
        target = teacher(input_ids=ids, output_hidden_states=hidden)
    out = model(input_ids=ids, output_hidden_states=hidden)
    at = labels[:, 1:] != -100
    loss = torch.nn.functional.kl_div(out.logits[:, :-1][at].log_softmax(-1), target.logits[:, :-1][at].log_softmax(-1),
                                      log_target=True, reduction="batchmean")
    if hidden:
        real = (ids != PAD).unsqueeze(-1)
        for h, t in zip(out.hidden_states[1:], target.hidden_states[1:]):
            loss = loss + keep_hidden * ((h - t).square() * real).sum() / (t.square() * real).sum()
    return loss


def save_model(model, tokenizer, out: Path) -> None:
    """An ordinary Hugging Face directory: config, safetensors, tokenizer, generation config."""
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    # No max_new_tokens here: it would override the max_length that lm-eval passes.
    GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, do_sample=False).save_pretrained(out)
