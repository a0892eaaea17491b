"""Issue 9, part 1: a catalogue of bad inputs to `modelglue merge`.

Every case must end with exit code 2, exactly one `error: ...` line on stderr that names
the file or key at fault, no traceback, and nothing at (or next to) the output directory.
The cases run as real processes of the CLI entry point, forked from a zygote that has
already imported torch (see test_reliability_support); a sample also runs through the
installed console script, and `--debug` is checked to show the traceback.

Set MODELGLUE_RELIABILITY_LOG=FILE to record each case's error line (RELIABILITY.md).
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_reliability_support import (
    CLI_ARGS, ENV, Result, Zygote, shared_zygote, assert_clean_failure, build_zoo, copy_model, leftovers, load_and_check,
)

LOG: dict[str, str] = {}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    return build_zoo(tmp_path_factory.getbasetemp() / "reliability-zoo")


@pytest.fixture(scope="module")
def zygote():
    z = shared_zygote()
    yield z
    log = os.environ.get("MODELGLUE_RELIABILITY_LOG")
    if log and LOG:
        old = json.loads(Path(log).read_text()) if Path(log).exists() else {}
        Path(log).write_text(json.dumps({**old, **LOG}, indent=1, sort_keys=True))


# ----------------------------------------------------------------------------- helpers


def linear(*models: str | Path, **extra) -> str:
    lines = ["merge_method: linear", "models:"]
    for m in models:
        lines += [f"  - model: {m}", "    parameters: {weight: 1.0}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def ties(base: str | Path, *models: str | Path, density: object = 0.5) -> str:
    lines = ["merge_method: ties", f"base_model: {base}", "models:"]
    for m in models:
        lines += [f"  - model: {m}", f"    parameters: {{weight: 1.0, density: {density}}}"]
    return "\n".join(lines) + "\n"


def rewrite_header(path: Path, edit: Callable[[dict], None], declared: int | None = None) -> None:
    """Rewrite a safetensors file's JSON header in place (data left as is)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", declared if declared is not None else len(new)) + new + raw[8 + n:])


def set_tensor(model: Path, name: str, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Path:
    f = model / "model.safetensors"
    tensors = load_file(f)
    new = fn(tensors[name])
    if new is None:
        del tensors[name]
    else:
        tensors[name] = new
    save_file(tensors, f, metadata={"format": "pt"})
    return model


def poison(value: float):
    def fn(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t.view(-1)[3] = value
        return t
    return fn


EMBED = "model.embed_tokens.weight"
Q0 = "model.layers.0.self_attn.q_proj.weight"

# Each case: (work dir, zoo) -> (recipe text or None, extra CLI args, expected substrings in the error line).
# The recipe is written to work/recipe.yml; the output is work/out unless the args say otherwise.
Case = Callable[[Path, dict], tuple]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


# --- the recipe file


@case
def recipe_missing(w, z):
    return None, ["merge", "nope.yml", "out"], ["nope.yml", "not found"]


@case
def recipe_is_a_directory(w, z):
    (w / "dir.yml").mkdir()
    return None, ["merge", "dir.yml", "out"], ["dir.yml", "cannot read recipe"]


@case
def recipe_empty(w, z):
    return "", [], ["recipe.yml", "mapping"]


@case
def recipe_not_a_mapping(w, z):
    return "- linear\n- a\n", [], ["recipe.yml", "mapping"]


@case
def recipe_not_utf8(w, z):
    (w / "recipe.yml").write_bytes(b"merge_method: linear\nmodels: [\xff\xfe]\n")
    return None, [], ["recipe.yml"]


@case
def yaml_syntax_error(w, z):
    return "merge_method: linear\nmodels: [a, b\n", [], ["recipe.yml", "YAML", "line"]


@case
def yaml_bad_indentation(w, z):
    return f"merge_method: linear\nmodels:\n  - model: {z['a']}\n   parameters: {{weight: 1}}\n", [], ["recipe.yml", "line 4"]


@case
def yaml_python_object_tag(w, z):
    return f"!!python/object/apply:os.system ['touch {w}/PWNED']\n", [], ["recipe.yml", "unsupported YAML tag", "python/object"]


@case
def unknown_method(w, z):
    return linear(z["a"], z["b"]).replace("linear", "lineaar"), [], ["lineaar", "did you mean 'linear'"]


@case
def missing_merge_method(w, z):
    return linear(z["a"], z["b"]).replace("merge_method: linear\n", ""), [], ["merge_method"]


@case
def unknown_top_level_key(w, z):  # mergekit ignores it: a warning by default, an error with --strict
    return linear(z["a"], z["b"]) + "modles: []\n", ["--strict"], ["'modles'", "did you mean 'models'", "--strict"]


@case
def empty_model_list(w, z):
    return "merge_method: linear\nmodels: []\n", [], ["'models'", "non-empty"]


@case
def models_and_slices_both(w, z):
    return linear(z["a"]) + f"slices:\n  - sources:\n      - model: {z['a']}\n        layer_range: [0, 2]\n", [], ["'models' or 'slices'"]


@case
def same_model_twice(w, z):
    return linear(z["a"], z["a"]), [], ["listed twice", str(z["a"])]


@case
def same_model_twice_spelled_differently(w, z):
    return linear(z["a"], f"{z['a']}/../a/"), [], ["listed twice"]


@case
def model_entry_without_model_key(w, z):
    return "merge_method: linear\nmodels:\n  - parameters: {weight: 1}\n", [], ["models[0]", "'model'"]


@case
def model_path_not_a_string(w, z):
    return "merge_method: linear\nmodels:\n  - model: 123\n    parameters: {weight: 1}\n", [], ["models[0].model", "123"]


@case
def unknown_parameter(w, z):  # mergekit ignores it: a warning by default, an error with --strict
    return ties(z["a"], z["b"], z["c"]).replace("density", "densty"), ["--strict"], ["densty", "did you mean 'density'"]


@case
def density_out_of_range(w, z):
    return ties(z["a"], z["b"], z["c"], density=1.5), [], ["recipe.yml", "models[0].parameters.density", "1.5", "out of range"]


@case
def density_negative(w, z):
    return ties(z["a"], z["b"], z["c"], density=-0.1), [], ["recipe.yml", "parameters.density", "out of range"]


@case
def slerp_t_out_of_range(w, z):
    return (f"merge_method: slerp\nbase_model: {z['a']}\nparameters: {{t: 2.0}}\n"
            f"models:\n  - model: {z['a']}\n  - model: {z['b']}\n"), [], ["recipe.yml", "parameters.t", "out of range"]


@case
def slerp_t_gradient_out_of_range(w, z):
    return (f"merge_method: slerp\nbase_model: {z['a']}\nparameters:\n  t: [0, 0.5, 3]\n"
            f"models:\n  - model: {z['a']}\n  - model: {z['b']}\n"), [], ["recipe.yml", "parameters.t", "out of range"]


@case
def weight_not_a_number(w, z):
    return linear(z["a"], z["b"]).replace("weight: 1.0", "weight: heavy"), [], ["recipe.yml", "models[0].parameters.weight", "number"]


@case
def filter_condition_without_value(w, z):
    return linear(z["a"], z["b"]).replace("{weight: 1.0}", "{weight: [{filter: mlp}]}"), [], ["weight", "'value'"]


@case
def slerp_three_models(w, z):
    return (f"merge_method: slerp\nbase_model: {z['a']}\nparameters: {{t: 0.5}}\n"
            f"models:\n  - model: {z['a']}\n  - model: {z['b']}\n  - model: {z['c']}\n"), [], ["slerp", "exactly 2"]


@case
def ties_without_base_model(w, z):
    return ties(z["a"], z["b"], z["c"]).replace(f"base_model: {z['a']}\n", ""), [], ["ties", "base_model"]


@case
def unknown_dtype(w, z):
    return linear(z["a"], z["b"], dtype="int8"), [], ["dtype", "int8"]


@case
def tokenizer_source_missing(w, z):
    return linear(z["a"], z["b"], tokenizer_source=w / "no-tok"), [], ["tokenizer_source", "no-tok"]


@case
def layer_range_reversed(w, z):
    return (f"merge_method: passthrough\nslices:\n  - sources:\n      - model: {z['a']}\n        layer_range: [2, 1]\n"), [], ["layer_range"]


@case
def layer_range_beyond_model(w, z):
    return (f"merge_method: passthrough\nslices:\n  - sources:\n      - model: {z['a']}\n        layer_range: [0, 5]\n"), [], [str(z["a"]), "layer_range", "2 layers"]


# --- the model directories


@case
def model_dir_missing(w, z):
    return linear(z["a"], w / "ghost"), [], ["ghost", "not found"]


@case
def model_path_is_a_file(w, z):
    (w / "weights.safetensors").write_bytes(b"x")
    return linear(z["a"], w / "weights.safetensors"), [], ["weights.safetensors", "not a directory"]


@case
def config_json_missing(w, z):
    m = copy_model(z["b"], w / "m")
    (m / "config.json").unlink()
    return linear(z["a"], m), [], [f"{m}", "config.json"]


@case
def config_json_invalid(w, z):
    m = copy_model(z["b"], w / "m")
    (m / "config.json").write_text('{"hidden_size": 16,')
    return linear(z["a"], m), [], [f"{m}/config.json", "invalid JSON"]


@case
def config_json_not_an_object(w, z):
    m = copy_model(z["b"], w / "m")
    (m / "config.json").write_text("[1, 2]")
    return linear(z["a"], m), [], [f"{m}/config.json"]


@case
def weights_missing(w, z):
    m = copy_model(z["b"], w / "m")
    (m / "model.safetensors").unlink()
    return linear(z["a"], m), [], [f"{m}", "no weights"]


@case
def pickle_only_without_allow_pickle(w, z):
    m = copy_model(z["b"], w / "m")
    torch.save(load_file(m / "model.safetensors"), m / "pytorch_model.bin")
    (m / "model.safetensors").unlink()
    return linear(z["a"], m), [], [f"{m}", "pytorch_model.bin", "--allow-pickle"]


@case
def safetensors_truncated(w, z):
    m = copy_model(z["b"], w / "m")
    f = m / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return linear(z["a"], m), [], [f"{f}"]


@case
def safetensors_truncated_inside_header(w, z):
    m = copy_model(z["b"], w / "m")
    f = m / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    return linear(z["a"], m), [], [f"{f}", "header"]


@case
def safetensors_empty_file(w, z):
    m = copy_model(z["b"], w / "m")
    (m / "model.safetensors").write_bytes(b"")
    return linear(z["a"], m), [], [f"{m}/model.safetensors", "not a safetensors file"]


@case
def safetensors_random_bytes(w, z):
    m = copy_model(z["b"], w / "m")
    (m / "model.safetensors").write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                                        dtype=torch.uint8).numpy().tobytes())
    return linear(z["a"], m), [], [f"{m}/model.safetensors", "corrupt"]


@case
def safetensors_huge_declared_header(w, z):
    m = copy_model(z["b"], w / "m")
    f = m / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 2**63 + 5) + raw[8:])
    return linear(z["a"], m), [], [f"{f}", "declared length"]


@case
def safetensors_header_not_json(w, z):
    m = copy_model(z["b"], w / "m")
    f = m / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[8:20] = b"\x00garbage!!\xff\xfe"
    f.write_bytes(bytes(raw))
    return linear(z["a"], m), [], [f"{f}", "not valid JSON"]


@case
def safetensors_offsets_out_of_range(w, z):
    m = copy_model(z["b"], w / "m")
    f = m / "model.safetensors"
    rewrite_header(f, lambda h: h[EMBED].__setitem__("data_offsets", [h[EMBED]["data_offsets"][0], 10**12]))
    return linear(z["a"], m), [], [f"{f}", EMBED, "out of range"]


@case
def safetensors_negative_offset(w, z):
    m = copy_model(z["b"], w / "m")
    f = m / "model.safetensors"
    rewrite_header(f, lambda h: h[EMBED].__setitem__("data_offsets", [-8, h[EMBED]["data_offsets"][1]]))
    return linear(z["a"], m), [], [f"{f}", EMBED]


@case
def safetensors_overlapping_tensors(w, z):
    m = copy_model(z["b"], w / "m")
    f = m / "model.safetensors"

    def alias(h):  # make q_proj point at embed's bytes (same size) => overlap + hole
        q, e = h[Q0], h[EMBED]
        q["shape"], q["data_offsets"] = e["shape"], list(e["data_offsets"])
    rewrite_header(f, alias)
    return linear(z["a"], m), [], [f"{f}"]


@case
def safetensors_shape_disagrees_with_size(w, z):
    m = copy_model(z["b"], w / "m")
    f = m / "model.safetensors"
    rewrite_header(f, lambda h: h[EMBED].__setitem__("shape", [32, 17]))
    return linear(z["a"], m), [], [f"{f}", EMBED, "bytes"]


@case
def safetensors_unknown_dtype(w, z):
    m = copy_model(z["b"], w / "m")
    f = m / "model.safetensors"
    rewrite_header(f, lambda h: h[EMBED].__setitem__("dtype", "F4"))
    return linear(z["a"], m), [], [f"{f}", EMBED, "dtype"]


@case
def sharded_index_corrupt(w, z):
    m = copy_model(z["b"], w / "m")
    (m / "model.safetensors.index.json").write_text('{"weight_map": [')
    return linear(z["a"], m), [], [f"{m}/model.safetensors.index.json", "corrupt index"]


@case
def sharded_index_names_missing_shard(w, z):
    m = copy_model(z["b"], w / "m")
    (m / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {EMBED: "model-00002-of-00002.safetensors"}}))
    return linear(z["a"], m), [], [f"{m}/model.safetensors.index.json", "model-00002-of-00002.safetensors", "missing"]


@case
def tensor_missing_from_one_model(w, z):
    m = set_tensor(copy_model(z["b"], w / "m"), Q0, lambda t: None)
    return linear(z["a"], m), [], [Q0, f"{m}", "missing"]


@case
def shape_mismatch(w, z):
    return linear(z["a"], z["h32"]), [], ["shape mismatch", EMBED, "h32"]


@case
def vocabulary_mismatch(w, z):
    return linear(z["a"], z["v64"]), [], ["shape mismatch", EMBED, "[32, 16]", "[64, 16]", "vocabular"]


@case
def layer_count_mismatch(w, z):
    return linear(z["a"], z["l3"]), [], ["layers", "l3: 3"]


@case
def nan_in_an_input(w, z):
    m = set_tensor(copy_model(z["b"], w / "m"), Q0, poison(float("nan")))
    return linear(z["a"], m), [], ["non-finite", "model.layers.0.self_attn.q_proj.weight", "input m"]


@case
def inf_in_an_input(w, z):
    m = set_tensor(copy_model(z["b"], w / "m"), "lm_head.weight", poison(float("inf")))
    return ties(z["a"], m, z["c"]), [], ["non-finite", "lm_head.weight"]


@case
def weights_summing_to_zero(w, z):
    return linear(z["a"], z["b"]).replace("weight: 1.0}", "weight: -1.0}", 1), [], ["not finite"]


# --- the output directory


@case
def output_inside_an_input(w, z):
    m = copy_model(z["b"], w / "m")
    return linear(z["a"], m), ["merge", "recipe.yml", m / "sub" / "out"], ["lies inside input model", f"{m}"]


@case
def output_is_an_input(w, z):
    m = copy_model(z["b"], w / "m")
    return linear(z["a"], m), ["merge", "recipe.yml", m], ["is input model", f"{m}"]


@case
def output_contains_an_input(w, z):
    m = copy_model(z["b"], w / "models" / "m")
    return linear(z["a"], m), ["merge", "recipe.yml", w / "models"], ["holds input model"]


@case
def output_exists_not_empty(w, z):
    (w / "out").mkdir()
    (w / "out" / "precious.txt").write_text("keep me")
    return linear(z["a"], z["b"]), [], ["already exists", "--overwrite"]


@case
def output_parent_is_a_file(w, z):
    (w / "afile").write_text("x")
    return linear(z["a"], z["b"]), ["merge", "recipe.yml", w / "afile" / "out"], ["afile"]


# --- options


@case
def shard_size_unreadable(w, z):
    return linear(z["a"], z["b"]), ["--shard-size", "lots"], ["--shard-size", "lots"]


@case
def shard_size_negative(w, z):
    return linear(z["a"], z["b"]), ["--shard-size", "-5MB"], ["--shard-size"]


@case
def shard_size_infinite(w, z):
    return linear(z["a"], z["b"]), ["--shard-size", "inf"], ["--shard-size"]


@case
def threads_not_positive(w, z):
    return linear(z["a"], z["b"]), ["--threads", "0"], ["--threads"]


@case
def threads_negative(w, z):
    return linear(z["a"], z["b"]), ["--threads", "-2"], ["--threads"]


@case
def device_unknown(w, z):
    return linear(z["a"], z["b"]), ["--device", "tpu"], ["--device", "tpu"]


def _prepare(name: str, work: Path, zoo: dict) -> tuple[list[str], Path, list[str]]:
    work.mkdir(parents=True, exist_ok=True)
    text, args, expect = CASES[name](work, zoo)
    if text is not None:
        (work / "recipe.yml").write_text(text)
    if not args or args[0] != "merge":
        args = ["merge", "recipe.yml", "out", *args]
    out = Path(args[2]) if Path(args[2]).is_absolute() else work / args[2]
    return ["-q" if a == "--quiet" else str(a) for a in args], out, expect


def _check_output_dir_untouched(name: str, work: Path, out: Path) -> None:
    if name == "output_exists_not_empty":  # the existing directory must survive as it was
        assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
        assert leftovers(out) == ["out"]
        return
    if name.startswith("output_") and name != "output_parent_is_a_file":
        target = out
        assert not [p for p in target.parent.glob(f".{target.name}.*")], "temp sibling left"
        return
    assert leftovers(out) == [], leftovers(out)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_fails_cleanly(name, zoo, zygote, tmp_path):
    args, out, expect = _prepare(name, tmp_path / "w", zoo)
    res = zygote.run(args, cwd=tmp_path / "w")
    line = assert_clean_failure(res, None, *expect)
    _check_output_dir_untouched(name, tmp_path / "w", out)
    assert not (tmp_path / "w" / "PWNED").exists()
    LOG[name] = line


# The same failures through the installed console script (a fresh interpreter, no fork):
# the message must be identical. A handful only, run concurrently: each costs ~2 s of CPU
# importing torch. `--debug` rides along and must show the traceback instead.
CONSOLE_SAMPLE = ["yaml_python_object_tag", "nan_in_an_input"]


@pytest.mark.slow
def test_console_script_matches_and_debug_shows_traceback(zoo, zygote, tmp_path):
    jobs = {}
    for name in CONSOLE_SAMPLE + ["debug"]:
        args, out, expect = _prepare("safetensors_truncated" if name == "debug" else name, tmp_path / name, zoo)
        argv = ["--debug", *args] if name == "debug" else args
        proc = subprocess.Popen(CLI_ARGS + argv, cwd=tmp_path / name, env=ENV, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        jobs[name] = (proc, args, out, expect)
    for name, (proc, args, out, expect) in jobs.items():
        stdout, stderr = proc.communicate(timeout=120)
        res = Result(proc.returncode, stdout, stderr)
        if name == "debug":
            assert res.rc != 0 and "Traceback (most recent call last)" in stderr and "ModelGlueError" in stderr
            assert leftovers(out) == []
            continue
        line = assert_clean_failure(res, out, *expect)
        forked = zygote.run(args, cwd=tmp_path / name)
        assert forked.rc == res.rc and forked.error_lines == [line]


def test_progress_bar_does_not_pollute_errors(zoo, zygote, tmp_path):
    """Without -q a failure in the middle of a merge still prints one line."""
    args, out, _ = _prepare("nan_in_an_input", tmp_path / "w", zoo)
    assert "-q" not in args
    res = zygote.run(args, cwd=tmp_path / "w")
    assert_clean_failure(res, out, "non-finite")


# ----------------------------------------------------------------------------- dtypes


def test_mixed_dtypes_merge_like_mergekit(zoo, zygote, tmp_path):
    """A float16 and a float32 model merge (arithmetic in the promoted dtype, as torch and
    mergekit do); the output takes the base model's dtype (or the first model's without a
    base) unless `out_dtype` / `dtype` says otherwise, and config.json says so too."""
    cases = {
        "f32_first": (linear(zoo["a"], zoo["f16"]), torch.float32),
        "f16_first": (linear(zoo["f16"], zoo["a"]), torch.float16),
        "f16_base": (ties(zoo["f16"], zoo["a"], zoo["b"]), torch.float16),
        "out_dtype": (linear(zoo["f16"], zoo["a"], out_dtype="bfloat16"), torch.bfloat16),
    }
    for name, (text, dtype) in cases.items():
        (tmp_path / f"{name}.yml").write_text(text)
        res = zygote.run(["merge", f"{name}.yml", name, "-q"], cwd=tmp_path, tag=name)
        assert res.rc == 0, res.stderr
        tensors = load_and_check(tmp_path / name)
        assert {t.dtype for t in tensors.values()} == {dtype}, name
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["dtype"] == str(dtype).removeprefix("torch."), name
    # the values: a float32 mean of the float16 model's values and the float32 model's
    a, h = load_file(zoo["a"] / "model.safetensors"), load_file(zoo["f16"] / "model.safetensors")
    got = load_file(tmp_path / "f32_first" / "model.safetensors")
    torch.testing.assert_close(got[EMBED], (a[EMBED] + h[EMBED].float()) / 2)
