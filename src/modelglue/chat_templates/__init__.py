"""Chat templates for a recipe's `chat_template` key, as mergekit 0.1.5 reads it.

The value is a template name (one of the .jinja files next to this module: mergekit's
own set, the same text byte for byte), an inline Jinja string, or `auto`: the template
most input models share. The merged model's tokenizer then carries it in
`chat_template.jinja`, the file transformers reads first (and writes itself).
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from importlib import resources
from pathlib import Path

from modelglue.errors import ModelGlueError, did_you_mean
from modelglue.io.lora import model_directory

AUTO = "auto"
TEMPLATE_FILE = "chat_template.jinja"
EXTRA_TEMPLATE_DIR = "additional_chat_templates"


def template_names() -> list[str]:
    """The named templates shipped with modelglue (and mergekit 0.1.5)."""
    return sorted(p.name[: -len(".jinja")] for p in resources.files(__package__).iterdir()
                  if p.name.endswith(".jinja"))


def resolve_template(value: object, where: str) -> str | None:
    """The template a recipe's `chat_template` asks for: its text, AUTO, or None (unset).

    mergekit's rule: a value under 256 characters with no newline and no '{' that names
    a shipped template is that template; any other value must look like Jinja (at least
    20 characters, with a '{'). mergekit finds a bad name only after writing the weights;
    here it is refused before anything is read.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ModelGlueError(f"{where}: chat_template must be a template name, 'auto' or Jinja text, got {value!r}")
    if value == AUTO:
        return AUTO
    if len(value) < 256 and "\n" not in value and "{" not in value:
        named = resources.files(__package__).joinpath(value + ".jinja")
        if "/" not in value and "\\" not in value and named.is_file():
            return named.read_text(encoding="utf-8")
    if len(value) < 20 or "{" not in value:
        raise ModelGlueError(f"{where}: unknown chat_template {value!r}{did_you_mean(value, template_names())}; use one of "
                             f"{', '.join(template_names())}, 'auto', or an inline Jinja template")
    return value


def jinja_problem(text: str) -> str | None:
    """Why `text` would not compile as a chat template (None if it would): Jinja syntax
    with the loop controls and the `{% generation %}` block transformers allows."""
    import jinja2
    from jinja2.ext import Extension

    class _Generation(Extension):  # transformers' assistant-mask block: parse its body, keep it
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols", _Generation])
    try:
        env.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {exc.message}"
    return None


def carries_template(model_dir: Path) -> bool:
    """Whether the tokenizer copied from a model directory can carry a chat template: it
    has tokenizer files (a merge without tokenizer keys copies the donor's)."""
    model_dir = model_directory(model_dir)  # MODEL+ADAPTER: the model's tokenizer
    return any((model_dir / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json", "tokenizer.model"))


def model_template(model_dir: Path) -> str | None:
    """The default chat template transformers would load from a model directory: the
    .jinja files first, then tokenizer_config.json's `chat_template` (a string, a list
    of {name, template}, or a mapping); None if it has none or cannot be read."""
    model_dir = model_directory(model_dir)  # MODEL+ADAPTER: the model's tokenizer
    try:
        if (model_dir / TEMPLATE_FILE).is_file():
            return (model_dir / TEMPLATE_FILE).read_text(encoding="utf-8")
        if (model_dir / EXTRA_TEMPLATE_DIR).is_dir():
            return None  # named templates only: transformers gives a mapping without 'default'
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):
        template = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) and template else None


def auto_template(models: list[Path]) -> str | None:
    """mergekit's `auto`: the most common template among the input models (each model
    counted once, compared after stripping whitespace, written stripped). On a tie
    mergekit's pick follows its set order (the hash seed); here the earliest model wins."""
    found = [t.strip() for t in (model_template(m) for m in models) if t and t.strip()]
    return Counter(found).most_common(1)[0][0] if found else None


def write_template(out_dir: Path, template: str) -> None:
    """Make `template` the tokenizer's only chat template in a model directory: written
    to chat_template.jinja (what transformers' save_pretrained writes), with any template
    copied from the input (in tokenizer_config.json or other files) removed."""
    config_path = out_dir / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if isinstance(config, dict) and "chat_template" in config:
            del config["chat_template"]
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "chat_template.json").unlink(missing_ok=True)
    shutil.rmtree(out_dir / EXTRA_TEMPLATE_DIR, ignore_errors=True)
    (out_dir / TEMPLATE_FILE).write_text(template, encoding="utf-8")
