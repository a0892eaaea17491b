"""Task suite: built-in splits are fixed, disjoint and never trained on; JSONL parsing."""
from __future__ import annotations

import json
import random

import pytest

from modelglue.errors import ModelGlueError
from modelglue.evaluate import BUILTIN_TASKS, builtin_task, load_jsonl_task, load_tasks, sample_train


def test_builtin_splits_fixed_disjoint_and_unseen():
    for name in BUILTIN_TASKS:
        val, test = builtin_task(name, "validation"), builtin_task(name, "test")
        assert len(val.examples) == 200 and len(test.examples) == 200
        assert builtin_task(name, "validation").examples == val.examples  # deterministic
        vp, tp = {e["prompt"] for e in val.examples}, {e["prompt"] for e in test.examples}
        assert not vp & tp
        rng = random.Random(0)
        trained = {sample_train(name, rng, hard)[0] for hard in (True, False) for _ in range(3000)}
        assert not trained & (vp | tp)
        # a task prefix, and short enough for the tiny models' context
        assert all(e["prompt"].startswith(name[:2]) or e["prompt"].startswith("cnt") or
                   e["prompt"].startswith("up") for e in val.examples)
        assert max(len(e["prompt"]) + len(e["answer"]) for e in val.examples + test.examples) <= 32


def test_load_tasks_all_and_unknown():
    assert [t.name for t in load_tasks("all")] == list(BUILTIN_TASKS)
    with pytest.raises(ModelGlueError, match="unknown task 'nope'"):
        load_tasks("add,nope")
    with pytest.raises(ModelGlueError, match="unknown split"):
        load_tasks("add", split="train")


def _write(tmp_path, lines):
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_jsonl_generation_and_choice(tmp_path):
    t = load_jsonl_task(_write(tmp_path, [json.dumps({"prompt": "add 1+1=", "answer": "2"}), "",
                                          json.dumps({"prompt": "rev ab=", "answer": "ba"})]))
    assert t.kind == "generate" and len(t.examples) == 2 and t.name == "t" and t.max_new_tokens >= 3
    c = load_jsonl_task(_write(tmp_path, [json.dumps({"prompt": "q", "choices": ["a", "b"], "answer": "b"}),
                                          json.dumps({"prompt": "q", "choices": ["a", "b"], "answer": 0})]))
    assert c.kind == "choice" and [e["answer"] for e in c.examples] == [1, 0]


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "a", "answer": "b"}', '{"prompt": "a", "answer": '], r"t\.jsonl:2: not valid JSON"),
    (['{"prompt": "a"}'], r"t\.jsonl:1: missing \"answer\""),
    (['["a", "b"]'], r"t\.jsonl:1: expected an object"),
    (['{"prompt": 3, "answer": "b"}'], r"t\.jsonl:1: expected an object with a string"),
    (['{"prompt": "a", "answer": 3}'], r"t\.jsonl:1: \"answer\" must be a string"),
    (['{"prompt": "a", "choices": ["x"], "answer": "y"}'], r"t\.jsonl:1: answer 'y' is not one of"),
    (['{"prompt": "a", "choices": ["x"], "answer": 4}'], r"t\.jsonl:1: answer index 4 out of range"),
    (['{"prompt": "a", "choices": [], "answer": 0}'], r"t\.jsonl:1: \"choices\" must be"),
    (['{"prompt": "a", "answer": "b"}', '{"prompt": "a", "choices": ["x"], "answer": 0}'], "mixes"),
    ([""], "no examples"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, lines, message):
    with pytest.raises(ModelGlueError, match=message):
        load_jsonl_task(_write(tmp_path, lines))


def test_missing_jsonl(tmp_path):
    with pytest.raises(ModelGlueError, match="task file not found"):
        load_tasks(str(tmp_path / "absent.jsonl"))
