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


def test_jsonl_splits_are_disjoint_and_cover_the_file(tmp_path):
    """A JSONL task has validation and test splits like the built-ins: by a "split"
    field, by separate NAME.validation.jsonl / NAME.test.jsonl files, or else by a
    stable hash of the prompt; a search on validation never sees a test line."""
    rows = [{"prompt": f"copy w{i}=", "answer": f"w{i}"} for i in range(200)]
    hashed = _write(tmp_path, [json.dumps(r) for r in rows])
    val, test = load_jsonl_task(hashed, "validation"), load_jsonl_task(hashed, "test")
    vp, tp = {e["prompt"] for e in val.examples}, {e["prompt"] for e in test.examples}
    assert not vp & tp and len(vp | tp) == 200 and 70 < len(vp) < 130
    assert [e["prompt"] for e in load_jsonl_task(hashed, "validation").examples] == [e["prompt"] for e in val.examples]
    assert len(load_jsonl_task(hashed).examples) == 200  # no split: the whole file

    marked = tmp_path / "m.jsonl"
    marked.write_text("".join(json.dumps({**r, "split": "test" if i < 3 else "validation"}) + "\n" for i, r in enumerate(rows[:10])))
    assert [e["prompt"] for e in load_jsonl_task(marked, "test").examples] == [r["prompt"] for r in rows[:3]]
    assert len(load_jsonl_task(marked, "validation").examples) == 7

    (tmp_path / "qa.validation.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (tmp_path / "qa.test.jsonl").write_text(json.dumps(rows[1]) + "\n" + json.dumps(rows[2]) + "\n")
    for given in ("qa.validation.jsonl", "qa.test.jsonl"):
        tasks = {s: load_tasks(str(tmp_path / given), split=s)[0] for s in ("validation", "test")}
        assert tasks["validation"].name == tasks["test"].name == "qa"
        assert [len(t.examples) for t in tasks.values()] == [1, 2]
    (tmp_path / "solo.validation.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ModelGlueError, match=r"solo\.test\.jsonl \(the test split"):
        load_jsonl_task(tmp_path / "solo.validation.jsonl", "test")
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({**rows[0], "split": "train"}) + "\n")
    with pytest.raises(ModelGlueError, match=r"b\.jsonl:1: \"split\" must be validation or test"):
        load_jsonl_task(bad, "test")
