"""Issue 9, part 5: untrusted files.

* pickle checkpoints are refused unless --allow-pickle, then read with
  torch.load(weights_only=True): a malicious pickle runs no code either way;
* nothing in src/ asks for trust_remote_code, unsafe YAML, unrestricted torch.load,
  eval/exec or a shell (a grep over the sources, so new code is held to it too);
* recipes are read with a yaml.SafeLoader subclass (the `!!python/object` case is in the catalogue of
  test_reliability_inputs, which also checks the payload did not run);
* names from files cannot make us read or write outside the directories given: a sharded
  index naming `../../evil.safetensors` or an absolute path is rejected, and tensor
  names with `/` and `..` end up only inside fixed shard file names.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modelglue.errors import ModelGlueError

from test_reliability_support import shared_zygote, Zygote, assert_clean_failure, build_zoo, copy_model, leftovers, load_and_check

SRC = Path(__file__).resolve().parents[1] / "src" / "modelglue"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    return build_zoo(tmp_path_factory.getbasetemp() / "reliability-zoo-sec")


@pytest.fixture(scope="module")
def zygote():
    z = shared_zygote()
    yield z


def recipe(*models: Path, base: Path | None = None) -> str:
    lines = ["merge_method: linear", "models:"]
    for m in models:
        lines += [f"  - model: {m}", "    parameters: {weight: 1.0}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- pickles


class _Evil:
    """Unpickling this would create the marker file (via os.system or builtins.open)."""

    def __init__(self, marker: Path, how: str):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        return (open, (self.marker, "w"))


def _evil_model(src: Path, dst: Path, marker: Path, how: str, legacy: bool) -> Path:
    m = copy_model(src, dst)
    state = load_file(m / "model.safetensors")
    (m / "model.safetensors").unlink()
    state["model.norm.weight"] = _Evil(marker, how)  # type: ignore[assignment]
    if legacy:  # a bare pickle stream, as old torch.save(_use_new_zipfile_serialization=False) wrote
        (m / "pytorch_model.bin").write_bytes(pickle.dumps(state, protocol=2))
    else:
        torch.save(state, m / "pytorch_model.bin")
    return m


@pytest.mark.parametrize("how", ["system", "open"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_never_runs(zoo, zygote, tmp_path, how, legacy):
    marker = tmp_path / "PWNED"
    m = _evil_model(zoo["b"], tmp_path / "evil", marker, how, legacy)
    (tmp_path / "r.yml").write_text(recipe(zoo["a"], m))
    out = tmp_path / "out"
    # refused outright without --allow-pickle
    res = zygote.run(["merge", "r.yml", "out", "-q"], cwd=tmp_path, tag="deny")
    assert_clean_failure(res, out, "pytorch_model.bin", "--allow-pickle")
    assert not marker.exists()
    # with --allow-pickle: torch.load(weights_only=True) refuses the global; still no code runs
    res = zygote.run(["merge", "r.yml", "out", "-q", "--allow-pickle"], cwd=tmp_path, tag="allow")
    assert_clean_failure(res, out, "pytorch_model.bin", "GLOBAL")
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_benign_pickle_loads_with_allow_pickle(zoo, zygote, tmp_path, legacy):
    m = copy_model(zoo["b"], tmp_path / "pickled")
    torch.save(load_file(m / "model.safetensors"), m / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    (m / "model.safetensors").unlink()
    (tmp_path / "p.yml").write_text(recipe(zoo["a"], m))
    (tmp_path / "s.yml").write_text(recipe(zoo["a"], zoo["b"]))
    assert zygote.run(["merge", "p.yml", "p", "-q", "--allow-pickle"], cwd=tmp_path).rc == 0
    assert zygote.run(["merge", "s.yml", "s", "-q"], cwd=tmp_path).rc == 0
    p, s = load_and_check(tmp_path / "p"), load_and_check(tmp_path / "s")
    assert p.keys() == s.keys() and all(torch.equal(p[k], s[k]) for k in p)


# ----------------------------------------------------------------------------- the sources


def _code_lines():
    for f in sorted(SRC.rglob("*.py")):
        for no, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if code.strip():
                yield f.relative_to(SRC.parent), no, code


FORBIDDEN = {
    "trust_remote_code other than False": re.compile(r"trust_remote_code\s*=\s*(?!False\b)"),
    "yaml.load / unsafe_load / full_load": re.compile(r"yaml\.(load|unsafe_load|full_load|load_all)\s*\("),
    "yaml Loader other than SafeLoader": re.compile(r"\b(Unsafe|Full)?Loader\s*=\s*yaml\.(Unsafe|Full)?Loader\b|yaml\.(Unsafe|Full)Loader"),
    "pickle.load(s)": re.compile(r"\bpickle\.loads?\s*\(|\bdill\.|\bcloudpickle\.loads?\("),
    "eval / exec": re.compile(r"(?<![.\w])(eval|exec)\s*\("),
    "a shell": re.compile(r"shell\s*=\s*True|\bos\.system\s*\(|\bos\.popen\s*\("),
    "numpy allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
}


def test_no_remote_code_unsafe_loading_or_shells_in_src():
    bad = [f"{f}:{no}: {what}: {code.strip()}" for f, no, code in _code_lines()
           for what, rx in FORBIDDEN.items() if rx.search(code)]
    assert not bad, "\n".join(bad)


def test_every_torch_load_is_weights_only():
    src = {f: f.read_text() for f in SRC.rglob("*.py")}
    calls = [(f, m.start()) for f, text in src.items() for m in re.finditer(r"\btorch\.load\s*\(", text)]
    for f, start in calls:
        depth, i, text = 0, src[f].index("(", start), src[f]
        for j in range(i, len(text)):  # the call's full argument list
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                break
        assert re.search(r"weights_only\s*=\s*True", text[i:j]), f"{f}: torch.load without weights_only=True"
    assert calls, "the pickle reader moved: update this test"


def test_recipes_are_read_with_a_safe_loader():
    """Recipes go through a subclass of yaml.SafeLoader (it only adds YAML 1.2 floats): a
    Python tag is refused, nothing runs."""
    import yaml

    from modelglue.recipe import _RecipeLoader, load_recipe

    assert issubclass(_RecipeLoader, yaml.SafeLoader)
    with pytest.raises(ModelGlueError, match="unsupported YAML tag"):
        load_recipe("merge_method: !!python/object/apply:os.system ['echo PWNED']\nmodels: []\n")


# ----------------------------------------------------------------------------- paths from files


@pytest.mark.parametrize("shard", ["../../evil.safetensors", "../m2/model.safetensors", "/etc/passwd",
                                   "sub/../../x.safetensors"])
def test_sharded_index_cannot_point_outside_the_model(zoo, zygote, tmp_path, shard):
    m = copy_model(zoo["b"], tmp_path / "m")
    (tmp_path / "evil.safetensors").write_bytes((m / "model.safetensors").read_bytes())
    copy_model(zoo["b"], tmp_path / "m2")
    (m / "model.safetensors.index.json").write_text(json.dumps({
        "metadata": {}, "weight_map": {"model.embed_tokens.weight": shard, "lm_head.weight": "model.safetensors"}}))
    (tmp_path / "r.yml").write_text(recipe(zoo["a"], m))
    res = zygote.run(["merge", "r.yml", "out", "-q"], cwd=tmp_path)
    assert_clean_failure(res, tmp_path / "out", "model.safetensors.index.json", "outside")


def test_hub_cache_style_symlinked_shards_are_read(zoo, zygote, tmp_path):
    """The Hugging Face cache keeps shards as symlinks into ../../blobs: those are the user's
    own files and must read, index or no index (only names in the index are policed)."""
    blobs, snap = tmp_path / "repo" / "blobs", tmp_path / "repo" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    src = load_file(zoo["b"] / "model.safetensors")
    names = sorted(src)
    half = len(names) // 2
    parts = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for i, (fname, keys) in enumerate(parts.items()):
        save_file({k: src[k] for k in keys}, blobs / f"blob{i}", metadata={"format": "pt"})
        (snap / fname).symlink_to(Path("../../blobs") / f"blob{i}")
    (blobs / "index").write_text(json.dumps({"metadata": {}, "weight_map": {k: f for f, ks in parts.items() for k in ks}}))
    (snap / "model.safetensors.index.json").symlink_to("../../blobs/index")
    shutil.copyfile(zoo["b"] / "config.json", blobs / "config")
    (snap / "config.json").symlink_to("../../blobs/config")
    (tmp_path / "r.yml").write_text(recipe(zoo["a"], snap))
    (tmp_path / "s.yml").write_text(recipe(zoo["a"], zoo["b"]))
    res = zygote.run(["merge", "r.yml", "out", "-q"], cwd=tmp_path)
    assert res.rc == 0, res.stderr
    assert zygote.run(["merge", "s.yml", "ref", "-q"], cwd=tmp_path).rc == 0
    got, ref = load_and_check(tmp_path / "out"), load_and_check(tmp_path / "ref")
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in got)


def test_hostile_tensor_names_stay_inside_shard_files(zoo, zygote, tmp_path):
    """Tensor names are data, never file names: `../`, `/`, absolute paths and NULs are
    written into the safetensors headers of fixed-name shards inside the output."""
    weird = ["../../escaped", "/tmp/abs", "a/../../b", "..", "x\x00y"]
    models = []
    for name in ("a", "b"):
        m = copy_model(zoo[name], tmp_path / f"w{name}")
        state = load_file(m / "model.safetensors")
        for i, w in enumerate(weird):
            state[w] = torch.full((4,), float(i))
        save_file(state, m / "model.safetensors", metadata={"format": "pt"})
        models.append(m)
    (tmp_path / "r.yml").write_text(recipe(*models))
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*")}
    res = zygote.run(["merge", tmp_path / "r.yml", "out", "-q", "--shard-size", "1"], cwd=work)
    created = {p for p in tmp_path.rglob("*")} - before
    if res.rc == 0:
        out = work / "out"
        assert all(p == out or out in p.parents or p.name.startswith(".") and p.parent == work for p in created), created
        assert all(re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors|[\w.]+\.(json|yml|md|txt|jinja|model)", p.name)
                   for p in out.iterdir()), sorted(p.name for p in out.iterdir())
        got = load_and_check(out)
        for w in weird:
            assert w in got
        assert not Path("/tmp/abs").exists() or not (Path("/tmp/abs").stat().st_mtime > (tmp_path / "r.yml").stat().st_mtime)
    else:  # refusing such names is fine too, as long as it is clean
        assert_clean_failure(res, work / "out")
        assert not created - {work / ".run.stdout", work / ".run.stderr"}
