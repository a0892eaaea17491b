"""Evaluation throughput: our batched greedy evaluator vs transformers' `generate` vs
lm-evaluation-harness's HF backend, on the same model, prompts, batch size and number
of new tokens, alternating in one process (the machine's load hits all three alike).

The model is Qwen2-0.5B-shaped (24 layers, hidden 896, MLP 4864, 14 heads / 2 KV heads,
vocabulary 151,936, tied embeddings: 494M parameters) with random weights, float32,
built from its config (no network). The tokenizer is the demo's character tokenizer
with the vocabulary filled up to 151,936 tokens by "<fN>" tokens, so the built-in
tasks' prompts encode as in the demo and every id the model emits decodes.

The prompts are the first --per-task validation prompts of each built-in generation
task (the requests `modelglue eval --export-lm-eval` writes: prompt, stop at a newline).
Random weights never emit a newline or EOS in practice, so every row runs to
--new-tokens: all three do the same work, and tokens are counted as generated
(prompts x new tokens; our evaluator's count stops at a row's newline, if one came).

  ours      modelglue.evaluate.greedy_generate (what `evaluate` and the search run)
  generate  model.generate(do_sample=False, max_new_tokens=N), left-padded batches,
            then cut at the first newline as we do
  lm-eval   lm_eval.models.huggingface.HFLM(pretrained=model).generate_until on the
            same requests (until newline, max_gen_toks N), what `lm_eval --model hf`
            runs on the exported tasks

Greedy outputs are checked identical across the three. Usage:

    python benchmarks/eval_bench.py                       # 0.5B, 32 prompts, 16 new tokens
    python benchmarks/eval_bench.py --size tiny           # seconds
    python benchmarks/eval_bench.py --profile             # where our evaluator's time goes
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

SIZES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True),
}


def bench_tokenizer(vocab_size: int):
    """The demo's character tokenizer, its vocabulary filled up to the model's."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from modelglue.demo.train import BOS, token_ids

    vocab = token_ids()
    vocab.update({f"<f{i}>": i for i in range(len(vocab), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(""), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", BOS)])
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left", model_max_length=4096)


def build_model(size: str):
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    cfg = Qwen2Config(max_position_embeddings=4096, **SIZES[size])
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def prompts_of_tasks(per_task: int) -> list[str]:
    from modelglue.evaluate import BUILTIN_TASKS, load_tasks

    return [e["prompt"] for t in load_tasks(list(BUILTIN_TASKS), "validation") if t.kind != "choice"
            for e in t.examples[:per_task]]


def run_ours(model, tok, prompts, n, batch):
    from modelglue.evaluate.generate import greedy_generate

    return greedy_generate(model, tok, prompts, n, batch_size=batch)


STOPPED: list[int] = []  # rows of the last generate run that emitted a newline or EOS


def run_generate(model, tok, prompts, n, batch):
    from modelglue.evaluate.generate import encode_batch

    out = []
    STOPPED.clear()
    for s in range(0, len(prompts), batch):
        ids, mask = encode_batch(tok, prompts[s:s + batch])
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                                 min_new_tokens=n, pad_token_id=tok.pad_token_id, eos_token_id=None)
        texts = tok.batch_decode(gen[:, ids.size(1):])
        STOPPED.extend(i for i, t in enumerate(texts, start=s) if "\n" in t or tok.eos_token in t)
        out += [t.split("\n", 1)[0] for t in tok.batch_decode(gen[:, ids.size(1):], skip_special_tokens=True)]
    return out


def run_lm_eval(model, tok, prompts, n, batch):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch, device="cpu", max_length=4096)
    reqs = [Instance("generate_until", {}, (p, {"until": ["\n"], "do_sample": False, "max_gen_toks": n}), i)
            for i, p in enumerate(prompts)]
    return [t.split("\n", 1)[0] for t in lm.generate_until(reqs, disable_tqdm=True)]


RUNNERS = {"ours": run_ours, "generate": run_generate, "lm-eval": run_lm_eval}


def profile_ours(model, tok, prompts, n, batch) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_ours(model, tok, prompts, n, batch)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="0.5b", choices=list(SIZES))
    ap.add_argument("--per-task", type=int, default=6, help="validation prompts per built-in generation task")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the search's scorer uses 1)")
    ap.add_argument("--only", default="ours,generate,lm-eval")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model, tok = build_model(args.size), bench_tokenizer(SIZES[args.size]["vocab_size"])
    prompts = prompts_of_tasks(args.per_task)
    names = args.only.split(",")
    warm = prompts[:2]
    for name in names:  # warm-up: first-call costs (imports, lm-eval's set-up) are not throughput
        RUNNERS[name](model, tok, warm, 2, args.batch)
    if args.profile:
        profile_ours(model, tok, prompts, args.new_tokens, args.batch)
    seconds: dict[str, list[float]] = {k: [] for k in names}
    outputs: dict[str, list[str]] = {}
    for r in range(args.repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            outputs[name] = RUNNERS[name](model, tok, prompts, args.new_tokens, args.batch)
            seconds[name].append(time.perf_counter() - t)
            print(f"{name}: {seconds[name][-1]:.2f} s", flush=True)
    ref = outputs[names[0]]
    tokens = len(prompts) * args.new_tokens
    newline_rows = len(STOPPED) if "generate" in names else "?"
    print(f"\n{args.size}: {len(prompts)} prompts (batch {args.batch}), {args.new_tokens} new tokens each, "
          f"{torch.get_num_threads()} torch thread(s); rows that stopped early: {newline_rows}")
    print("| evaluator | wall s | generated tokens/s | vs generate | greedy outputs identical to ours |")
    print("|---|---|---|---|---|")
    base = statistics.median(seconds["generate"]) if "generate" in seconds else None
    for name in names:
        s = statistics.median(seconds[name])
        ratio = f"{base / s:.2f}x" if base else "-"
        print(f"| {name} | {s:.2f} | {tokens / s:.1f} | {ratio} | {outputs[name] == ref} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
