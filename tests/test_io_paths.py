from __future__ import annotations

import pytest

from modelglue.errors import ModelGlueError
from modelglue.io import atomic_write, check_outside_inputs


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "x.json"
    atomic_write(target, "old")
    atomic_write(target, b"new bytes")
    assert target.read_bytes() == b"new bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write(target, "old")
    with pytest.raises(TypeError):
        atomic_write(target, 123)  # type: ignore[arg-type]
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


@pytest.mark.parametrize("out,words", [("m", "is input model"), ("m/sub", "lies inside"), (".", "holds")])
def test_output_may_not_overlap_an_input(tmp_path, out, words):
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelGlueError, match=words):
        check_outside_inputs(tmp_path / out, [tmp_path / "m"])
    check_outside_inputs(tmp_path / "other", [tmp_path / "m"])
