"""Issue 9, part 2: property-based fuzzing of the safetensors header reader.

`modelglue.io.read_header` gets random byte strings, valid files with random byte
flips/truncations/extensions, and generated headers (plausible JSON with hostile
values). Whatever it gets, it raises ModelGlueError or returns a header whose every
tensor lies inside the file and reads back (`read_tensor`) with the declared shape;
nothing else may escape. Derandomized, moderate example counts.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import save  # noqa: E402

from modelglue.errors import ModelGlueError  # noqa: E402
from modelglue.io import read_header, read_tensor  # noqa: E402

COUNTS: dict[str, int] = {}


def fuzz(n: int):
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


VALID = save({
    "a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
    "b.bias": torch.ones(5, dtype=torch.float16),
    "c.idx": torch.tensor([1, 2, 3], dtype=torch.int64),
    "d.empty": torch.zeros(0, 3, dtype=torch.bfloat16),
}, metadata={"format": "pt"})


def check_file(path: Path, kind: str) -> str:
    try:
        tensors, metadata = read_header(path)
    except ModelGlueError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        assert str(path) in str(exc), f"the error should name the file: {exc}"
        outcome = "error"
    else:
        size = path.stat().st_size
        assert isinstance(metadata, dict)
        for name, info in tensors.items():
            assert 0 <= info.offset and info.offset + info.nbytes <= size, name
            t = read_tensor(info)
            assert tuple(t.shape) == info.shape and t.dtype == info.dtype
        outcome = "ok"
    COUNTS[f"{kind}:{outcome}"] = COUNTS.get(f"{kind}:{outcome}", 0) + 1
    return outcome


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-st") / "model.safetensors"


def test_the_valid_file_reads(target):
    target.write_bytes(VALID)
    assert check_file(target, "valid") == "ok"


@fuzz(300)
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes(target, data):
    target.write_bytes(data)
    check_file(target, "random")


@fuzz(300)
@given(data=st.binary(min_size=8, max_size=300), length=st.one_of(
    st.integers(0, 400), st.integers(0, 2**64 - 1), st.sampled_from([2**63, 2**64 - 1, 100 * 1024 * 1024 + 1])))
def test_fuzz_declared_header_length(target, data, length):
    target.write_bytes(struct.pack("<Q", length) + data)
    check_file(target, "length")


@fuzz(300)
@given(flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, len(VALID))), tail=st.binary(max_size=16))
def test_fuzz_mutated_valid_file(target, flips, cut, tail):
    raw = bytearray(VALID)
    for pos, byte in flips:
        raw[pos] = byte
    raw = bytes(raw[:cut] if cut is not None else raw) + tail
    target.write_bytes(raw)
    check_file(target, "mutated")


ints = st.one_of(st.integers(-5, 200), st.integers(-(2**70), 2**70), st.booleans(), st.floats(), st.none(), st.text(max_size=3),
                st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
entries = st.one_of(
    st.fixed_dictionaries(
        {"dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "F4", "f32", ""]), ints),
         "shape": st.one_of(st.lists(st.one_of(st.integers(0, 6), ints), max_size=4), ints),
         "data_offsets": st.one_of(st.lists(st.one_of(st.integers(0, 120), ints), max_size=3), ints)},
        optional={"extra": ints}),
    ints,
    st.lists(ints, max_size=2),
)
headers = st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(["__metadata__", "../../evil", "a/b"])),
                          entries, max_size=5)
metadata = st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.one_of(st.text(max_size=4), ints), max_size=3), ints)


@fuzz(400)
@given(header=headers, meta=metadata, data_len=st.integers(0, 160), pad=st.sampled_from([b"", b" ", b"\x00", b"\n  "]))
def test_fuzz_generated_headers(target, header, meta, data_len, pad):
    if meta is not None:
        header = {"__metadata__": meta, **header}
    try:
        raw = json.dumps(header).encode()
    except (ValueError, TypeError):  # NaN and friends are still valid for json.dumps; others skip
        return
    raw += pad
    target.write_bytes(struct.pack("<Q", len(raw)) + raw + os.urandom(0) + bytes(range(256))[:data_len])
    check_file(target, "generated")


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    """After this file's tests: record how many examples ran, by outcome (RELIABILITY.md)."""
    import json
    import os

    yield
    log = os.environ.get("MODELGLUE_RELIABILITY_LOG")
    if log and COUNTS:
        old = json.loads(Path(log).read_text()) if Path(log).exists() else {}
        Path(log).write_text(json.dumps({**old, **{f"fuzz_safetensors_{k}": v for k, v in COUNTS.items()}}, indent=1,
                                        sort_keys=True))


def test_writer_takes_a_size_one_column_with_a_wide_stride(tmp_path: Path) -> None:
    """A column cut from an SVD factor is contiguous yet has a stride other than 1 on its size-1 last dim:
    the writer stores it, and it reads back equal (safetensors' own loader agrees)."""
    from safetensors.torch import load_file

    from modelglue.io.safetensors_io import save_tensors

    u = torch.linalg.svd(torch.randn(6, 4), full_matrices=False)[0]
    column = u[:, :1]
    assert column.is_contiguous() and column.stride(-1) != 1
    files = save_tensors({"col": column, "row": u[:1, :]}, tmp_path)
    loaded = load_file(tmp_path / files[0])
    assert torch.equal(loaded["col"], column) and torch.equal(loaded["row"], u[:1, :])
