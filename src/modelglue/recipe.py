"""Merge recipes: the mergekit YAML schema, accepted unchanged and validated up front.

A recipe names a merge_method, the inputs (`models:` or `slices:`), optional
`base_model`, `parameters`, `dtype`, `out_dtype` and `tokenizer_source`. A parameter
value may be a scalar, a gradient (a list interpolated across the layers of a slice),
or a list of `{filter, value}` conditions matched as substrings of tensor names, first
match wins; lookups go from the model's own parameters to the slice's to the recipe's.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial
from typing import Any, Callable

import yaml

from modelglue.chat_templates import AUTO, carries_template, jinja_problem, resolve_template
from modelglue.errors import ModelGlueError, did_you_mean, warn
from modelglue.io.paths import path_exists
from modelglue.methods import REGISTRY, get_method
from modelglue.tokenizer_spec import TokenizerSpec, parse_tokenizer

TOP_LEVEL_KEYS = {
    "merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
    "tokenizer_source", "tokenizer", "chat_template", "name", "modules",
}
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16", "float64": "float64", "float": "float32"}


@dataclass
class SliceSource:
    model: Path
    layer_range: tuple[int, int] | None  # None: all layers (the `models:` form)
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputSlice:
    sources: list[SliceSource]
    base_model: Path | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    """A validated recipe; model paths are resolved, nothing has been read yet."""

    merge_method: str
    slices: list[OutputSlice]
    base_model: Path | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer: TokenizerSpec | None = None  # tokenizer_source or the tokenizer: block; None: no vocabulary alignment
    raw: dict = field(default_factory=dict)  # the recipe as written, saved next to the output
    chat_template: str | None = None  # the template text, 'auto', or None: the output keeps the copied tokenizer's
    warnings: list[str] = field(default_factory=list)  # what mergekit would drop silently, one line each

    def models(self) -> list[Path]:
        """Every model the recipe reads, base first, without duplicates."""
        seen: list[Path] = [self.base_model] if self.base_model else []
        for s in self.slices:
            for src in s.sources:
                if src.model not in seen:
                    seen.append(src.model)
            if s.base_model and s.base_model not in seen:
                seen.append(s.base_model)
        return seen


def load_recipe(source: str | Path | dict, *, base_dir: Path | None = None, strict: bool = False) -> Recipe:
    """Parse a recipe from a YAML file, a YAML string, or a dict, and validate it.

    Keys and parameters mergekit ignores are ignored here too, each with one warning line
    on stderr (also kept in Recipe.warnings); with strict=True the first is an error.
    """
    if isinstance(source, dict):
        raw, where = copy.deepcopy(source), "recipe"
    elif not isinstance(source, (str, Path)):
        raise ModelGlueError(f"a recipe is a YAML file, YAML text or a mapping, not {type(source).__name__}")
    else:
        path = Path(source)
        text = None
        if isinstance(source, str) and ("\n" in source or ":" in source) and not path_exists(path):
            text, where = source, "recipe"
        else:
            if not path_exists(path):
                raise ModelGlueError(f"{path}: recipe file not found")
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ModelGlueError(f"{path}: cannot read recipe ({exc})") from None
            where = str(path)
            base_dir = base_dir or path.parent
        try:
            loader = _RecipeLoader(text)
            try:
                raw = loader.get_single_data()
            finally:
                loader.dispose()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            kind = "unsupported YAML tag (recipes are plain YAML)" if isinstance(exc, yaml.constructor.ConstructorError) \
                else "YAML syntax error"
            raise ModelGlueError(f"{where}: {kind}{at}: {problem}") from None
    if not isinstance(raw, dict):
        raise ModelGlueError(f"{where}: a recipe must be a mapping with at least 'merge_method'")
    return _validate(raw, where, base_dir, _Ignored(where, strict))


class _Ignored:
    """What mergekit 0.1.5 accepts and silently drops (its pydantic models ignore unknown
    keys; a method reads only the parameters it declares): one warning line each, printed
    once the whole recipe is valid; strict: the first one is the error."""

    def __init__(self, where: str, strict: bool):
        self.where, self.strict, self.lines = where, strict, []

    def add(self, what: str, name: str = "", known: Any = (), hint: str = "") -> None:
        """`what` names the thing and where it is; a near match of `name` in `known` is offered."""
        hint = hint or (did_you_mean(name, known) if name else "")
        if self.strict:
            raise ModelGlueError(f"{self.where}: {what}{hint}; mergekit ignores this, and --strict refuses it")
        self.lines.append(f"{self.where}: {what}{hint}: ignored, as mergekit does")

    def flush(self) -> list[str]:
        for line in self.lines:
            warn(line)
        return self.lines


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain YAML only: no Python tags), but `1e-9` and `1E5` are
    numbers, as YAML 1.2 and mergekit read them (PyYAML follows YAML 1.1, which needs a
    dot: `1.0e-9`)."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _check_top_level(raw: dict, where: str, ignored: _Ignored) -> Any:
    """Known keys, a known merge_method, exactly one of models / slices; returns the method."""
    if "merge_method" not in raw:
        raise ModelGlueError(f"{where}: missing key 'merge_method'")
    if not isinstance(raw["merge_method"], str):
        raise ModelGlueError(f"{where}: merge_method must be a method name, got {raw['merge_method']!r}")
    method = get_method(raw["merge_method"])
    for key in sorted(set(map(str, raw)) - TOP_LEVEL_KEYS):
        hint = f" (a parameter of {method.name}: put it under 'parameters:')" if method.param(key) else ""
        ignored.add(f"unknown key {key!r}", key, TOP_LEVEL_KEYS, hint)
    if raw.get("modules") is not None:
        raise ModelGlueError(f"{where}: key 'modules' is not supported yet (use 'slices')")
    if (raw.get("models") is not None) == (raw.get("slices") is not None):
        raise ModelGlueError(f"{where}: give exactly one of 'models' or 'slices'")
    return method


def _model_path(value: Any, key: str, where: str, base_dir: Path | None, ignored: _Ignored | None = None) -> Path:
    if isinstance(value, dict) and "model" in value:  # mergekit also accepts {model: ..., lora: ...}
        value = _reference_text(value, key, where, ignored)
    if not isinstance(value, str) or not value.strip():
        raise ModelGlueError(f"{where}: {key} must be a model directory path, got {value!r}")
    p = _local_path(value, base_dir)
    if not p.exists() and "@" in value and ignored is not None:
        value = _without_revisions(value, key, base_dir, ignored)
        p = _local_path(value, base_dir)
    if not p.exists() and "+" in value:
        return _lora_reference(value, key, where, base_dir)
    if not p.exists():
        raise ModelGlueError(f"{where}: {key}: model directory {value!r} not found{_hub_hint(value)}")
    return p


def _reference_text(ref: dict, key: str, where: str, ignored: _Ignored | None) -> Any:
    """mergekit's ModelReference as a mapping ({model, lora}, each a path or {path,
    revision}) as the 'MODEL@REV+LORA@REV' text it stands for."""
    if ref.get("override_architecture") is not None:
        raise ModelGlueError(f"{where}: {key}.override_architecture is not supported (each model keeps its architecture)")
    for extra in sorted(set(map(str, ref)) - {"model", "lora", "override_architecture"}):
        if ignored is not None:
            ignored.add(f"{key}: unknown key {extra!r}", extra, ("model", "lora"))

    def text(v: Any) -> Any:
        if isinstance(v, dict) and isinstance(v.get("path"), str):
            return v["path"] + (f"@{v['revision']}" if v.get("revision") else "")
        return v

    model, lora = text(ref["model"]), text(ref.get("lora"))
    return f"{model}+{lora}" if isinstance(model, str) and isinstance(lora, str) else model


def _without_revisions(value: str, key: str, base_dir: Path | None, ignored: _Ignored) -> str:
    """`DIR@REVISION` (each side of a '+'): mergekit reads a local DIR and ignores the
    revision (so does transformers for a directory); a warning says so."""
    parts = []
    for part in value.split("+"):
        path, _, revision = part.partition("@")
        if revision and "@" not in revision and _local_path(path, base_dir).exists():
            ignored.add(f"{key}: revision {revision!r} of local directory {path!r}")
            part = path
        parts.append(part)
    return "+".join(parts)


def _local_path(value: str, base_dir: Path | None) -> Path:
    p = Path(value).expanduser()
    if not p.is_absolute() and not p.exists() and base_dir is not None and (base_dir / p).exists():
        p = base_dir / p  # mergekit resolves against the working directory; fall back to the recipe's
    return p


def _hub_hint(value: str) -> str:
    return " (modelglue reads local directories only; download the model first)" if value.count("/") == 1 else ""


def _lora_reference(value: str, key: str, where: str, base_dir: Path | None) -> Path:
    """`MODEL+ADAPTER`, mergekit's LoRA reference: each part found like a model path, then
    carried as the one path 'MODEL+ADAPTER' (absolute parts), which io.Checkpoint opens
    as MODEL with the PEFT adapter merged into each tensor as it is read."""
    chunks = [c.strip() for c in value.split("+")]
    if len(chunks) != 2 or not all(chunks):
        raise ModelGlueError(f"{where}: {key}: {value!r} is not MODEL+ADAPTER (one '+' between two directories)")
    model, adapter = (_local_path(c, base_dir) for c in chunks)
    if not model.is_dir():
        raise ModelGlueError(f"{where}: {key}: model directory {chunks[0]!r} not found{_hub_hint(chunks[0])}")
    if not adapter.is_dir():
        raise ModelGlueError(f"{where}: {key}: LoRA adapter directory {chunks[1]!r} not found{_hub_hint(chunks[1])}")
    if not (adapter / "adapter_config.json").is_file():
        raise ModelGlueError(f"{where}: {key}: {chunks[1]!r} is not a PEFT adapter directory (no adapter_config.json)")
    return Path(f"{model.absolute()}+{adapter.absolute()}")


def _params(value: Any, key: str, where: str, method: Any, ignored: _Ignored, per_model: bool = False) -> dict[str, Any]:
    """A parameters mapping: scalar / gradient / filtered shapes, and the method's types
    and ranges, before any file is read. Names the method does not read (unknown ones,
    or a shared one such as slerp's `t` given for one model) are ignored, as in mergekit."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ModelGlueError(f"{where}: {key} must be a mapping of parameter names to values")
    out = dict(value)
    for name, setting in value.items():
        _check_setting_shape(setting, f"{where}: {key}.{name}", f"{key}.{name}", ignored)
        if _param_is_read(method, str(name), f"{key}.{name}", per_model, ignored):
            out[name] = _as_mergekit_reads(method.param(str(name)), setting)
            _check_setting_values(method.param(str(name)), out[name], f"{where}: {key}.{name}")
    return out


_TRUE, _FALSE = {"1", "on", "t", "true", "y", "yes"}, {"0", "off", "f", "false", "n", "no"}


def _as_mergekit_reads(param: Any, setting: Any) -> Any:
    """A setting's values converted as mergekit's pydantic validation (lax mode) converts
    them: '1e-9' and '0.5' are numbers, 1 / 'yes' / 'on' are true, True is 1.0; through
    gradients and conditions. Anything else is left for the parameter's check to refuse."""
    if isinstance(setting, list):
        return [_as_mergekit_reads(param, e) for e in setting]
    if isinstance(setting, dict):
        return {**setting, "value": _as_mergekit_reads(param, setting.get("value"))}
    if param.type is bool:
        if isinstance(setting, (int, float)) and not isinstance(setting, bool) and setting in (0, 1):
            return bool(setting)
        if isinstance(setting, str) and setting.strip().lower() in _TRUE | _FALSE:
            return setting.strip().lower() in _TRUE
        return setting
    if param.type in (int, float) and isinstance(setting, (str, bool)):
        try:
            return float(setting.strip()) if isinstance(setting, str) else float(setting)
        except ValueError:
            return setting
    return setting


def _models_slice(models: Any, base: Path | None, where: str, path: Callable[..., Path],
                  params: Callable[..., dict], ignored: _Ignored) -> OutputSlice:
    """`models:` as one slice over every layer; the base joins the inputs, as in mergekit."""
    if not isinstance(models, list) or not models:
        raise ModelGlueError(f"{where}: 'models' must be a non-empty list")
    sources = []
    for i, m in enumerate(models):
        if isinstance(m, str):
            m = {"model": m}
        if not isinstance(m, dict) or "model" not in m:
            raise ModelGlueError(f"{where}: models[{i}] must be a mapping with a 'model' key")
        _ignore_extra_keys(m, {"model", "parameters"}, f"models[{i}]", ignored)
        sources.append(SliceSource(path(m["model"], f"models[{i}].model"), None,
                                   params(m.get("parameters"), f"models[{i}].parameters", per_model=True)))
    paths = [s.model.resolve() for s in sources]
    dup = next((p for p in paths if paths.count(p) > 1), None)
    if dup is not None:
        raise ModelGlueError(f"{where}: model {dup} is listed twice in 'models'")
    if base is not None and base.resolve() not in paths:
        sources.append(SliceSource(base, None, {}))
    return OutputSlice(sources)


def _layer_slices(raw_slices: Any, where: str, path: Callable[..., Path],
                  params: Callable[..., dict], ignored: _Ignored) -> list[OutputSlice]:
    """`slices:` with `sources` over equal-length `layer_range`s."""
    if not isinstance(raw_slices, list) or not raw_slices:
        raise ModelGlueError(f"{where}: 'slices' must be a non-empty list")
    slices = []
    for i, s in enumerate(raw_slices):
        key = f"slices[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("sources"), list) or not s["sources"]:
            raise ModelGlueError(f"{where}: {key} must be a mapping with a non-empty 'sources' list")
        _ignore_extra_keys(s, {"sources", "base_model", "parameters"}, key, ignored)
        sources = []
        for j, src in enumerate(s["sources"]):
            k = f"{key}.sources[{j}]"
            if not isinstance(src, dict) or "model" not in src:
                raise ModelGlueError(f"{where}: {k} must be a mapping with 'model' and 'layer_range'")
            _ignore_extra_keys(src, {"model", "layer_range", "parameters"}, k, ignored)
            lr = src.get("layer_range")
            if not (isinstance(lr, list) and len(lr) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
                    and 0 <= lr[0] < lr[1]):
                raise ModelGlueError(f"{where}: {k}.layer_range must be [start, end) with 0 <= start < end, got {lr!r}")
            sources.append(SliceSource(path(src["model"], f"{k}.model"), (lr[0], lr[1]),
                                       params(src.get("parameters"), f"{k}.parameters", per_model=True)))
        if len({src.layer_range[1] - src.layer_range[0] for src in sources}) != 1:  # type: ignore[index]
            raise ModelGlueError(f"{where}: {key}: all sources of a slice must span the same number of layers")
        sbase = path(s["base_model"], f"{key}.base_model") if s.get("base_model") else None
        slices.append(OutputSlice(sources, sbase, params(s.get("parameters"), f"{key}.parameters")))
    return slices


def _ignore_extra_keys(entry: dict, known: set[str], key: str, ignored: _Ignored) -> None:
    """Keys mergekit's models (InputModelDefinition, OutputSliceDefinition, ...) drop:
    `revision:` beside `model:`, `lora:`, ... (and `residual_weight`, which it reads and never uses)."""
    for extra in sorted(set(map(str, entry)) - known):
        if extra == "residual_weight" and "sources" in known:
            ignored.add(f"{key}: key 'residual_weight' (mergekit 0.1.5 accepts it and never uses it)")
        else:
            ignored.add(f"{key}: unknown key {extra!r}", extra, known)


def _ignore_base_only_params(method: Any, s: OutputSlice, base: Path | None, where_slice: str,
                             ignored: _Ignored) -> None:
    """A non-base parameter (ties' weight and density, ...) given for the base model: the
    method reads it for the other models only, as in mergekit."""
    if not method.uses_base or base is None:
        return
    for i, src in enumerate(s.sources):
        if src.model.resolve() != base.resolve():
            continue
        for name in src.parameters:
            param = method.param(str(name))
            if param is not None and param.scope == "non_base":
                ignored.add(f"{where_slice}[{i}].parameters.{name}: {method.name!r} does not read "
                            f"{str(name)!r} for the base model")


def _check_input_counts(method: Any, s: OutputSlice, b: Path | None, where: str) -> None:
    """The method's rules on the base and on how many models a slice merges."""
    names = [src.model.resolve() for src in s.sources]
    n = len(names)
    if method.needs_base and (b is None or b.resolve() not in names):
        raise ModelGlueError(f"{where}: merge_method {method.name!r} needs a base_model that is one of the inputs")
    if method.optional_base and b is not None and b.resolve() not in names:
        raise ModelGlueError(f"{where}: merge_method {method.name!r}: base_model {b} is not one of the slice's inputs")
    if n < method.min_inputs or (method.max_inputs is not None and n > method.max_inputs):
        raise ModelGlueError(f"{where}: merge_method {method.name!r} takes "
                             f"{_count(method.min_inputs, method.max_inputs)} input model(s) per slice, got {n}")
    others = n - (1 if method.uses_base and b is not None else 0)
    if others < method.min_non_base or (method.max_non_base is not None and others > method.max_non_base):
        raise ModelGlueError(f"{where}: merge_method {method.name!r} takes "
                             f"{_count(method.min_non_base, method.max_non_base)} model(s) besides the base per "
                             f"slice, got {others}")


def _validate(raw: dict, where: str, base_dir: Path | None, ignored: _Ignored) -> Recipe:
    """The whole recipe checked, model paths resolved, parameters typed and ranged, before
    any model file is read; each problem is one line naming its key."""
    method = _check_top_level(raw, where, ignored)
    path = partial(_model_path, where=where, base_dir=base_dir, ignored=ignored)
    params = partial(_params, where=where, method=method, ignored=ignored)
    base = path(raw["base_model"], "base_model") if raw.get("base_model") is not None else None
    if raw.get("models") is not None:
        slices = [_models_slice(raw["models"], base, where, path, params, ignored)]
    else:
        slices = _layer_slices(raw["slices"], where, path, params, ignored)
    for i, s in enumerate(slices):
        _check_input_counts(method, s, s.base_model or base, where)
        _ignore_base_only_params(method, s, s.base_model or base,
                                 "models" if raw.get("models") is not None else f"slices[{i}].sources", ignored)
    rec = Recipe(
        merge_method=method.name, slices=slices, base_model=base,
        parameters=params(raw.get("parameters"), "parameters"),
        dtype=_dtype(raw.get("dtype"), "dtype", where), out_dtype=_dtype(raw.get("out_dtype"), "out_dtype", where),
        raw=raw,
    )
    rec.tokenizer = parse_tokenizer(raw, where, path, rec.models())
    rec.chat_template = _chat_template(raw.get("chat_template"), where, ignored)
    donor = base or slices[0].sources[0].model  # whose tokenizer files the output copies
    if rec.chat_template is not None and rec.tokenizer is None and not carries_template(donor):
        ignored.add(f"chat_template: {donor} has no tokenizer files, so the output has no tokenizer to carry it")
    rec.warnings = ignored.flush()
    return rec


def _chat_template(value: Any, where: str, ignored: _Ignored) -> str | None:
    """`chat_template`: a shipped name, 'auto' or inline Jinja (chat_templates.resolve_template)."""
    if value == "":
        ignored.add("empty key 'chat_template'")
    template = resolve_template(value, where)
    problem = jinja_problem(template) if template not in (None, AUTO) else None
    if problem and ignored.strict:
        raise ModelGlueError(f"{where}: chat_template is not valid Jinja ({problem}); --strict refuses it")
    if problem:  # mergekit writes it all the same; apply_chat_template will fail on it
        ignored.lines.append(f"{where}: chat_template is not valid Jinja ({problem}); written as given, as mergekit does")
    return template


def _count(low: int, high: int | None) -> str:
    return f"exactly {low}" if low == high else f"at most {high}" if high else f"at least {low}"


def _dtype(value: Any, key: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in DTYPE_NAMES:
        raise ModelGlueError(f"{where}: {key} {value!r} is not one of float32, float16, bfloat16, float64")
    return DTYPE_NAMES[value.lower()]


def _param_is_read(method: Any, name: str, key: str, per_model: bool, ignored: _Ignored) -> bool:
    """Whether the method reads this parameter here; if not, one warning (mergekit resolves
    only the parameters a method declares, and shared ones only from the slice and the top)."""
    param = method.param(name)
    if param is None:
        # a leftover `density` after switching ties -> linear, a typo'd `densty`: near
        # matches among this method's parameters first, then any method's
        own = {p.name for p in method.params}
        known = own if did_you_mean(name, own) else {p.name for m in REGISTRY.values() for p in m.params}
        ignored.add(f"{key}: parameter {name!r} is not used by {method.name!r}", name, known)
        return False
    if per_model and param.scope == "shared":
        ignored.add(f"{key}: {method.name!r} reads {name!r} once per tensor, from the slice's or the recipe's "
                    "'parameters', not per model")
        return False
    return True


def _check_setting_values(param: Any, setting: Any, where: str) -> None:
    """Every value a setting can resolve to (scalars, gradient points, condition values)
    must pass the parameter's type and range check: interpolating in-range gradient points
    stays in range, so checking the points is enough."""
    if setting is None:
        return
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, list):
        for e in setting:
            _check_setting_values(param, e.get("value") if isinstance(e, dict) else e, where)
        return
    param.check(setting, where)


def _check_setting_shape(setting: Any, where: str, key: str, ignored: _Ignored) -> None:
    scalar = (bool, int, float, str)
    if isinstance(setting, scalar) or setting is None:
        return
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, list):
        if not setting:
            raise ModelGlueError(f"{where}: empty list")
        if all(isinstance(e, scalar) for e in setting):
            return
        for cond in setting:
            if not isinstance(cond, dict) or "value" not in cond:
                raise ModelGlueError(f"{where}: conditions must be mappings with 'value' and optional 'filter'")
            if not (cond.get("filter") is None or isinstance(cond["filter"], str)):
                raise ModelGlueError(f"{where}: a condition's filter must be a string, got {cond['filter']!r}")
            for extra in sorted(set(map(str, cond)) - {"value", "filter"}):
                ignored.add(f"{key}: unknown key {extra!r} in a condition", extra, ("value", "filter"))
            _check_setting_shape(cond["value"], where, key, ignored)
        return
    raise ModelGlueError(f"{where}: unsupported value {setting!r}")


def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """Resolve filters and gradients: the mergekit rules, in one place.

    A numeric list is a gradient sampled at t in [0, 1] with linear interpolation; a
    non-numeric list picks an element; conditions match `filter` as a substring of the
    tensor name (None or '*' match everything), first match wins; None means unset.
    """
    if isinstance(setting, dict):
        setting = [setting]
    if not isinstance(setting, list):
        return setting
    if all(isinstance(e, (bool, int, float, str)) for e in setting):
        if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(setting) - 1)
        i0 = int(math.floor(scaled))
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    for cond in setting:
        f = cond.get("filter")
        if f is None or f == "*" or (tensor_name and f in tensor_name):
            return evaluate_setting(cond["value"], tensor_name, t)
    return None


def recipe_to_yaml(raw: dict) -> str:
    return yaml.safe_dump(raw, sort_keys=False)
