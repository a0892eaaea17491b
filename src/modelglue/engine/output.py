"""The files of a merged model directory besides its weights: config.json (depth and
per-layer lists updated), the recipe as mergekit_config.yml, a model card, the tokenizer."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from modelglue.arch import layer_count_key, per_layer_config_keys
from modelglue.chat_templates import AUTO, auto_template, write_template
from modelglue.engine.plan import TORCH_DTYPE_NAMES, Plan
from modelglue.io import copy_tokenizer_files
from modelglue.io.lora import model_directory
from modelglue.recipe import recipe_to_yaml


def output_config(plan: Plan) -> dict:
    """config.json of the result: the reference model's, with depth, per-layer lists and dtype updated."""
    rec = plan.recipe
    ref_idx = plan.models.index(rec.base_model) if rec.base_model in plan.models else \
        plan.models.index(rec.slices[0].sources[0].model)
    config = json.loads(json.dumps(plan.checkpoints[ref_idx].config))
    target = config.get("text_config") if "text_config" in config and not any(
        k in config for k in ("num_hidden_layers", "n_layer", "num_layers")) else config
    per_layer = per_layer_config_keys(target)
    src_cfgs = [ck.config.get("text_config", ck.config) for ck in plan.checkpoints]
    for key in per_layer:  # keep per-layer lists (e.g. layer_types) consistent with the new depth
        target[key] = [src_cfgs[m][key][layer] if isinstance(src_cfgs[m].get(key), list) and layer < len(src_cfgs[m][key])
                       else target[key][min(layer, len(target[key]) - 1)] for m, layer in plan.layer_origin]
    target[layer_count_key(target)] = plan.num_out_layers
    if plan.vocab is not None:  # rows of the output vocabulary (mergekit sets the same key)
        (config["text_config"] if "text_config" in config and "vocab_size" not in config else config)["vocab_size"] = \
            plan.vocab.rows
    if "max_window_layers" in target and isinstance(target["max_window_layers"], int):
        target["max_window_layers"] = min(target["max_window_layers"], plan.num_out_layers)
    out_dtype = next((t.dtype for t in plan.tasks if t.dtype.is_floating_point), None)
    if out_dtype is not None:
        for key in ("torch_dtype", "dtype"):
            if key in config or key == "dtype":
                config[key] = TORCH_DTYPE_NAMES[out_dtype]
    return config


def write_model_files(plan: Plan, out: Path) -> None:
    rec = plan.recipe
    (out / "config.json").write_text(json.dumps(output_config(plan), indent=2) + "\n")
    write_tokenizer(plan, out)
    write_chat_template(plan, out)
    (out / "mergekit_config.yml").write_text(recipe_to_yaml(rec.raw))
    (out / "README.md").write_text(model_card(plan))


def write_tokenizer(plan: Plan, out: Path) -> None:
    """The tokenizer the merged rows are indexed by: the aligned vocabulary's (saved by
    transformers, as mergekit saves it) or, without tokenizer keys, the base's files."""
    rec = plan.recipe
    ref = rec.base_model or rec.slices[0].sources[0].model
    if plan.vocab is None:
        copy_tokenizer_files(Path(ref), out)
        return
    plan.vocab.tokenizer.save_pretrained(str(out))
    generation = model_directory(ref) / "generation_config.json"  # MODEL+ADAPTER: MODEL's
    if generation.is_file():
        shutil.copyfile(generation, out / "generation_config.json")


def write_chat_template(plan: Plan, out: Path) -> None:
    """The recipe's `chat_template` into the tokenizer just written, as mergekit's
    _set_chat_template: `auto` takes the inputs' most common template (none found: the
    tokenizer keeps its own); an output without a tokenizer gets none (the recipe's warnings said so)."""
    template = plan.recipe.chat_template
    if template == AUTO:
        template = auto_template(plan.recipe.models())
    if template is None:
        return
    if not any((out / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")):
        return
    write_template(out, template)


def model_card(plan: Plan) -> str:
    rec = plan.recipe
    lines = [
        "---", "library_name: transformers", "tags:", "- modelglue", "- merge", "---", "",
        "# Merged model", "",
        f"Made with [modelglue](https://github.com/) using the **{rec.merge_method}** method"
        + (f" ({plan.method.reference})" if plan.method.reference else "") + ".", "",
    ]
    if rec.base_model:
        lines += [f"Base model: `{rec.base_model}`", ""]
    lines += ["## Inputs", ""] + [f"- `{m}`" for m in plan.models] + [""]
    lines += [f"Output: {plan.num_out_layers} layers, {len(plan.tasks)} tensors.", ""]
    if plan.method.randomized:
        lines += [f"Random seed: {plan.seed}", ""]
    lines += ["## Recipe", "", "```yaml", recipe_to_yaml(rec.raw).rstrip(), "```", ""]
    return "\n".join(lines)
