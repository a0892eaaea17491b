"""Issue 9, part 2: property-based fuzzing of the recipe parser.

`modelglue.recipe.load_recipe` gets generated dicts (near-valid recipes with random
mutations, and arbitrary nested values) and generated YAML text; whatever it gets, it
returns a Recipe or raises ModelGlueError, never anything else. Examples are
derandomized (the same on every run) and moderate in number so this stays fast.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from modelglue.errors import ModelGlueError  # noqa: E402
from modelglue.methods import REGISTRY  # noqa: E402
from modelglue.recipe import TOP_LEVEL_KEYS, Recipe, load_recipe  # noqa: E402

def fuzz(n: int):
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


FUZZ = fuzz(100)  # structured recipes: generation dominates (~10 ms an example)
FUZZ_CHEAP = fuzz(300)
COUNTS: dict[str, int] = {}

# Real directories so that some generated recipes get past the path checks. The parser
# only checks that they exist; no file inside is read.
MODEL_ROOT = Path(__file__).resolve().parent / "data" / "mergekit_golden" / "models"
MODEL_DIRS = sorted(str(p) for p in MODEL_ROOT.iterdir()) if MODEL_ROOT.is_dir() else []

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["base", "union", "*", "", "mlp", "self_attn", "float16", "bf16", "x\x00y"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
param_names = st.sampled_from(sorted({p.name for m in REGISTRY.values() for p in m.params} | {"densty", "t", ""}))
param_values = st.one_of(
    st.floats(-3, 3), st.integers(-2, 3), st.booleans(), st.lists(st.floats(-1, 2), min_size=0, max_size=4),
    st.lists(st.fixed_dictionaries({"value": st.floats(-1, 2)}, optional={"filter": st.sampled_from(["mlp", "*", None, 3])}),
             max_size=3),
    values,
)
params = st.dictionaries(param_names, param_values, max_size=4)
model_refs = st.one_of(st.sampled_from(MODEL_DIRS or ["."]), st.text(max_size=12), values)
model_entries = st.one_of(
    model_refs,
    st.fixed_dictionaries({"model": model_refs}, optional={"parameters": params, "extra": values}),
)
sources = st.fixed_dictionaries(
    {"model": model_refs},
    optional={"layer_range": st.one_of(st.lists(st.integers(-2, 40), min_size=0, max_size=3), values),
              "parameters": params})
slices = st.lists(st.fixed_dictionaries({"sources": st.one_of(st.lists(sources, max_size=3), values)},
                                        optional={"parameters": params, "base_model": model_refs}), max_size=3)
recipes = st.fixed_dictionaries(
    {"merge_method": st.one_of(st.sampled_from(sorted(REGISTRY)), values)},
    optional={
        "models": st.one_of(st.lists(model_entries, max_size=4), values),
        "slices": st.one_of(slices, values),
        "base_model": model_refs,
        "parameters": st.one_of(params, values),
        "dtype": st.one_of(st.sampled_from(["float32", "bf16", "int8"]), values),
        "out_dtype": values,
        "tokenizer_source": st.one_of(st.sampled_from(["base", "union"]), model_refs),
        "tokenizer": values,
        "modules": values,
        "name": values,
    },
)
extra_keys = st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), values, max_size=2)


def check(source) -> str:
    """load_recipe either succeeds or raises ModelGlueError with a one-line message."""
    with contextlib.redirect_stderr(io.StringIO()):  # ignored-parameter warnings
        try:
            rec = load_recipe(source)
        except ModelGlueError as exc:
            assert str(exc) and "\n" not in str(exc).strip(), repr(str(exc))
            return "error"
    assert isinstance(rec, Recipe)
    return "ok"


def count(name: str, outcome: str) -> None:
    COUNTS[f"{name}:{outcome}"] = COUNTS.get(f"{name}:{outcome}", 0) + 1


@FUZZ
@given(recipes)
def test_fuzz_structured_recipe_dicts(raw):
    count("dict", check(raw))


@FUZZ
@given(recipes, extra_keys)
def test_fuzz_recipe_dicts_with_extra_keys(raw, extra):
    count("dict+keys", check({**raw, **extra}))


@FUZZ
@given(st.one_of(values, st.dictionaries(st.sampled_from(sorted(TOP_LEVEL_KEYS)), values, max_size=6)))
def test_fuzz_arbitrary_values(raw):
    count("any", check(raw))


near_valid = st.builds(
    lambda method, models, base, shared, per_model: {
        "merge_method": method,
        **({"base_model": models[base % len(models)]} if base is not None else {}),
        "models": [{"model": m, "parameters": p} for m, p in zip(models, per_model)],
        **({"parameters": shared} if shared else {}),
    },
    st.sampled_from(sorted(REGISTRY)),
    st.lists(st.sampled_from(MODEL_DIRS or ["."]), min_size=1, max_size=4, unique=True),
    st.one_of(st.none(), st.integers(0, 3)),
    params,
    st.lists(params, min_size=4, max_size=4),
)


@FUZZ
@given(near_valid)
def test_fuzz_near_valid_recipes(raw):
    """Valid structure and real directories, random parameter names, values, gradients and
    conditions: this reaches the per-method checks (base, input counts, types, ranges)."""
    count("near-valid", check(raw))


@FUZZ
@given(recipes)
def test_fuzz_recipe_yaml_text(raw):
    """The same dicts through YAML text (as the CLI reads them)."""
    try:
        text = yaml.safe_dump(raw, allow_unicode=True)
    except yaml.YAMLError:
        return
    count("yaml", check(text))


yaml_chunks = st.sampled_from([
    "merge_method: linear\n", "merge_method: ties\n", "models:\n", "  - model: ", "    parameters:\n",
    "      weight: 1\n", "      density: [0, 1]\n", "slices:\n", "  - sources:\n", "      - model: x\n",
    "        layer_range: [0, 2]\n", "base_model: ", "parameters: {t: 0.5}\n", "dtype: bf16\n", "- ", ": ", "{", "}",
    "[", "]", "\t", "&a ", "*a ", "!!python/object:os.system ", "!!binary ", "'", '"', "#", "\n", "---\n", "...\n",
    "%YAML 1.1\n", "? ", "|\n", ">\n", "\x00", "\ufeff", "~", ".inf", ".nan", "0x1F",
] + [f"{d}\n" for d in MODEL_DIRS[:2]])


@FUZZ_CHEAP
@given(st.lists(st.one_of(yaml_chunks, st.text(max_size=6)), min_size=1, max_size=25))
def test_fuzz_yaml_text_fragments(chunks):
    """Broken and hostile YAML: tabs, anchors, tags, NULs, BOMs, unbalanced brackets."""
    text = "".join(chunks)
    if "\n" not in text and ":" not in text:
        text += "\n"  # strings without either are taken as a file path
    count("fragments", check(text))


@FUZZ_CHEAP
@given(st.binary(max_size=200))
def test_fuzz_recipe_files_of_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzz-recipe.yml"
    path.write_bytes(data)
    count("file", check(path))


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    """After this file's tests: record how many examples ran, by outcome (RELIABILITY.md)."""
    import json
    import os

    yield
    log = os.environ.get("MODELGLUE_RELIABILITY_LOG")
    if log and COUNTS:
        old = json.loads(Path(log).read_text()) if Path(log).exists() else {}
        Path(log).write_text(json.dumps({**old, **{f"fuzz_recipe_{k}": v for k, v in COUNTS.items()}}, indent=1,
                                        sort_keys=True))
