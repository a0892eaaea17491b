#!/usr/bin/env python3
"""mergekit 0.1.5's outputs for `chat_template` recipes and for recipes full of keys
mergekit ignores, under tests/data/mergekit_golden/chat_templates/ (checked by
tests/test_recipe_chat_template.py and tests/test_recipe_ignored_keys.py).

    .venv/bin/python benchmarks/golden_chat_templates.py      # about 1 minute on 2 cores
    (make_golden.py runs it too)

Models (models/, float32, a 1-layer Llama of hidden size 8 over a 16-token word-level
tokenizer): ct_base (no chat template), ct_a (a ChatML-like template inline in
tokenizer_config.json), ct_a2 (the same template plus trailing whitespace, in
chat_template.jinja: `auto` compares stripped templates), ct_b (another template, in
chat_template.jinja). mergekit runs with its tokenizer copy on (a chat template is
written only then), cwd = this directory; each output keeps its weights, config.json,
tokenizer.json, tokenizer_config.json and chat_template.jinja.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
import yaml
from golden_tools import run_tool

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "data" / "mergekit_golden" / "chat_templates"
MERGEKIT_VENV = ROOT / ".venv-mergekit"
KEEP = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

TEMPLATE_A = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
TEMPLATE_B = ("{{ bos_token }}{% for m in messages %}{{ m['role'] | upper + ': ' + m['content'] + '\\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ 'ASSISTANT: ' }}{% endif %}")
INLINE = ("{% for message in messages %}{{ '### ' + message['role'] + '\\n' + message['content'] + '\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '### assistant\\n' }}{% endif %}")
MODELS = {"ct_base": None, "ct_a": ("config", TEMPLATE_A), "ct_a2": ("file", TEMPLATE_A + "\n\n"),
          "ct_b": ("file", TEMPLATE_B), "ct_ft": None}


def build_models(root: Path) -> None:
    """Seeded tiny Llamas with a word-level tokenizer and the templates of MODELS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "hello", "world", "the", "a", "user",
                                         "assistant", "system", "hi", "how", "are", "you", "?"])}
    for seed, (name, template) in enumerate(MODELS.items()):
        out = root / "models" / name
        shutil.rmtree(out, ignore_errors=True)
        torch.manual_seed(seed)
        cfg = LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, vocab_size=len(vocab), max_position_embeddings=32,
                          bos_token_id=1, eos_token_id=2, pad_token_id=0)
        LlamaForCausalLM(cfg).save_pretrained(out)
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                unk_token="<unk>").save_pretrained(out)
        (out / "chat_template.jinja").unlink(missing_ok=True)
        if template and template[0] == "config":
            config = json.loads((out / "tokenizer_config.json").read_text())
            (out / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template[1]}, indent=2))
        elif template:
            (out / "chat_template.jinja").write_text(template[1])


def _linear(*names: str, **extra) -> dict:
    return {"merge_method": "linear", "models": [{"model": f"models/{n}", "parameters": {"weight": 1.0}} for n in names],
            **extra}


def recipes() -> dict[str, dict]:
    """name -> recipe; each runs through mergekit and through modelglue."""
    r = {f"ct_{name}": _linear("ct_base", "ct_ft", chat_template=name)
         for name in ("chatml", "llama3", "alpaca", "mistral", "exaone")}
    r["ct_inline"] = _linear("ct_base", "ct_ft", chat_template=INLINE)
    r["ct_auto"] = _linear("ct_a", "ct_b", "ct_a2", chat_template="auto")  # A twice (once with whitespace)
    r["ct_auto_base_first"] = {**_linear("ct_b", "ct_a", "ct_a2", chat_template="auto"), "base_model": "models/ct_b"}
    r["ct_auto_none"] = _linear("ct_base", "ct_ft", chat_template="auto")  # nobody has one: the tokenizer's own
    # no key: the base's template travels with its tokenizer (a base: without one mergekit's
    # tokenizer donor is the first of a set, in hash order)
    r["ct_keep"] = {**_linear("ct_a", "ct_ft"), "base_model": "models/ct_a"}
    r["ct_override"] = _linear("ct_b", "ct_ft", chat_template="chatml")  # replaces the base's own
    r["ct_unknown_name"] = _linear("ct_base", "ct_ft", chat_template="zephyr")  # mergekit fails (after the weights)
    r["ignored_keys_models"] = {
        "merge_method": "ties", "base_model": "models/ct_base", "dype": "float16", "int8_mask": True,
        "normalize": False, "align_weights": True,
        "models": [{"model": "models/ct_base", "parameters": {"weight": 1.0, "density": 1.0}},
                   {"model": "models/ct_ft", "revision": "main",
                    "parameters": {"weight": 0.7, "density": 0.6, "densty": 0.1, "t": 0.2, "lambda": 3.0}},
                   {"model": "models/ct_a", "parameters": {"weight": [{"filter": "mlp", "value": 0.2, "fliter": "x"},
                                                                     {"value": 0.5}], "density": 0.8}}],
        "parameters": {"align_weights": True},
    }
    r["ignored_keys_slices"] = {
        "merge_method": "slerp", "base_model": "models/ct_base", "out_type": "bfloat16",
        "slices": [{"sources": [{"model": "models/ct_base", "layer_range": [0, 1], "revision": "main",
                                 "parameters": {"t": 0.9}},
                                {"model": "models/ct_ft", "layer_range": [0, 1]}],
                    "residual_weight": 0.5, "parameters": {"t": [{"filter": "self_attn", "value": 0.3}, {"value": 0.6}],
                                                           "weight": 2.0}}],
    }
    return r


def run_mergekit(root: Path, name: str, venv: Path) -> tuple[bool, str, float]:
    cmd = [str(venv / "bin" / "mergekit-yaml"), f"{name}.yml", f"mergekit_out/{name}",
           "--no-write-model-card", "--quiet", "--random-seed", "0"]
    ok, err, dt = run_tool(cmd, root, root / "mergekit_out" / name,
                           keep=lambda f: f.suffix == ".safetensors" or f.name in KEEP)
    return ok, " ".join(cmd[1:]) if ok else err, dt


def make_chat_template_goldens(root: Path = DEFAULT_OUT, venv: Path = MERGEKIT_VENV) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    build_models(root)
    for old in root.glob("*.yml"):
        old.unlink()
    shutil.rmtree(root / "mergekit_out", ignore_errors=True)
    manifest: dict = {"recipes": {}, "failed": {},
                      "command": "mergekit-yaml NAME.yml mergekit_out/NAME --no-write-model-card --quiet "
                                 "--random-seed 0 (cwd = this directory)"}
    for name, recipe in recipes().items():
        path = root / f"{name}.yml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None))
        ok, info, dt = run_mergekit(root, name, venv)
        if ok:
            manifest["recipes"][path.name] = {"output": f"mergekit_out/{name}"}
        else:
            manifest["failed"][path.name] = {"error": info}
        print(f"{'ok  ' if ok else 'FAIL'}  {name:24s} {dt:5.1f}s {'' if ok else info}")
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


if __name__ == "__main__":
    make_chat_template_goldens()
    sys.exit(0)
