"""Batched greedy decoding: finished rows leave the batch, the answers stay generate's."""
from __future__ import annotations

import torch
import transformers

from modelglue.demo.train import build_tokenizer
from modelglue.evaluate import greedy_generate


def newline_prone_model(tok) -> torch.nn.Module:
    """A random tiny Llama whose newline logit often wins: rows stop at different steps."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    nl = tok.convert_tokens_to_ids("\n")
    with torch.no_grad():
        model.lm_head.weight[nl] = model.lm_head.weight[nl] * 0 + torch.randn(32) * 0.2
    return model


def test_finished_rows_leave_the_batch_and_answers_match_generate():
    tok = build_tokenizer()
    model = newline_prone_model(tok)
    prompts = ["add 12+7=", "rev abcde=", "up xy=", "sort dcba=", "cnt a:abca=", "copy hello=", "ab", "q"] * 2
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: sizes.append(kwargs["input_ids"].size(0)),
                                           with_kwargs=True)
    ours = greedy_generate(model, tok, prompts, max_new_tokens=12, batch_size=16)
    hook.remove()
    assert sizes[0] == 16 and len(set(sizes)) > 2  # the batch shrank more than once
    lengths = []
    for p, o in zip(prompts, ours):
        enc = tok(p, return_tensors="pt")
        ref = model.generate(**enc, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        text = tok.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        lengths.append(len(text.split("\n")[0]))
        assert o == text.split("\n")[0], p
    assert min(lengths) <= 2 and max(lengths) >= 8  # some stopped at once, some ran long


def test_only_the_last_positions_logits_are_computed():
    tok = build_tokenizer()
    model = newline_prone_model(tok)
    seen: list[tuple] = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    greedy_generate(model, tok, ["add 12+7=", "rev abcde="], max_new_tokens=3)
    hook.remove()
    assert all(shape[1] == 1 for shape in seen)  # prompt positions are never projected onto the vocabulary
