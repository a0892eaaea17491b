"""Issue 9, part 1 for the commands beyond merge: eval, zoo analyze, search, mix, glue.

Each bad input ends with exit code 2 and one `error: ...` line naming the file, key or
option, no traceback, and nothing left at the output path.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from test_reliability_support import assert_clean_failure, build_llama, shared_zygote


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cmds")
    for i, name in enumerate(("a", "b")):
        build_llama(root / name, seed=i)
    (root / "bad.jsonl").write_text('{"prompt": "x=", "answer": "1"}\n{not json\n')
    (root / "zoo_unknown.yml").write_text("models: [a, b]\ntasks: [add]\nbudgett: 3\n")
    (root / "zoo_syntax.yml").write_text("models: [a, b\ntasks: add\n")
    (root / "zoo_strategy.yml").write_text("models: [a, b]\ntasks: [add]\nstrategies: [greedy]\n")
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("x")
    return root


# (id, argv, output path that must not appear, words the error line must contain)
CASES = [
    ("eval-missing-dir", ["eval", "nope", "--tasks", "add"], None, ["nope"]),
    ("eval-unknown-task", ["eval", "a", "--tasks", "addd"], None, ["addd"]),
    ("eval-bad-jsonl", ["eval", "a", "--tasks", "bad.jsonl", "--no-cache"], None, ["bad.jsonl", "2"]),
    ("eval-limit-zero", ["eval", "a", "--tasks", "add", "--limit", "0"], None, ["--limit"]),
    ("analyze-missing", ["zoo", "analyze", "a", "nope", "--out", "an"], "an", ["nope"]),
    ("analyze-twice", ["zoo", "analyze", "a", "a", "--out", "an"], "an", ["twice"]),
    ("analyze-threshold", ["zoo", "analyze", "a", "b", "--threshold", "2", "--out", "an"], "an", ["threshold"]),
    ("analyze-out-in-model", ["zoo", "analyze", "a", "b", "--out", "a/inside"], "a/inside", ["a"]),
    ("search-missing-model", ["search", "--models", "a", "nope", "--tasks", "add", "--strategy", "uniform", "--out", "s"],
     "s", ["nope"]),
    ("search-unknown-strategy", ["search", "--models", "a", "b", "--tasks", "add", "--strategy", "greedy", "--out", "s"],
     "s", ["greedy"]),
    ("search-budget-zero", ["search", "--models", "a", "b", "--tasks", "add", "--strategy", "cmaes", "--budget", "0",
                            "--out", "s"], "s", ["budget"]),
    ("search-out-not-empty", ["search", "--models", "a", "b", "--tasks", "add", "--strategy", "uniform", "--out", "full"],
     None, ["full"]),
    ("mix-unknown-level", ["mix", "--level", "layer", "--experts", "a", "b", "--router", "random", "--out", "m"], "m",
     ["layer"]),
    ("mix-missing-expert", ["mix", "--level", "model", "--experts", "a", "nope", "--router", "random", "--out", "m"], "m",
     ["nope"]),
    ("mix-unknown-router", ["mix", "--level", "model", "--experts", "a", "b", "--router", "oracle", "--out", "m"], "m",
     ["oracle"]),
    ("mix-ffn-one-expert", ["mix", "--level", "ffn", "--experts", "a", "--router", "random", "--out", "m"], "m",
     ["two experts"]),
    ("glue-missing-file", ["glue", "nope.yml", "--out", "g"], "g", ["nope.yml"]),
    ("glue-unknown-key", ["glue", "zoo_unknown.yml", "--out", "g"], "g", ["budgett"]),
    ("glue-yaml-syntax", ["glue", "zoo_syntax.yml", "--out", "g"], "g", ["zoo_syntax.yml", "line"]),
    ("glue-unknown-strategy", ["glue", "zoo_strategy.yml", "--out", "g"], "g", ["greedy"]),
]


@pytest.mark.parametrize("name,args,out,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(work, name, args, out, expect):
    res = shared_zygote().run(args, cwd=work, tag=name)
    assert_clean_failure(res, work / out if out else None, *expect)
