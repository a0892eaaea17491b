"""Scoring: greedy decoding matches transformers, choice tasks, the cache, the CLI."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from modelglue.cli import main
from modelglue.evaluate import evaluate, evaluate_dir, greedy_generate, load_model, model_fingerprint


@pytest.fixture(scope="module")
def a_base(tiny_zoo):
    return load_model(tiny_zoo / "a_base")


@pytest.fixture()
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "modelglue"


def test_batched_greedy_matches_hf_generate(a_base):
    model, tok = a_base
    prompts = ["add 12+7=", "rev abcde=", "up xy=", "sort dcba=", "cnt a:abca=", "copy hello="]
    ours = greedy_generate(model, tok, prompts, max_new_tokens=9, batch_size=4)  # left-padded batches
    for p, o in zip(prompts, ours):
        enc = tok(p, return_tensors="pt")
        ref = model.generate(**enc, max_new_tokens=9, do_sample=False, eos_token_id=tok.eos_token_id)
        text = tok.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).split("\n")[0]
        assert o == text, p


def test_plain_module_without_cache_gives_same_answers(a_base):
    model, tok = a_base

    class Plain(torch.nn.Module):  # a module with the minimal protocol: ids + mask -> logits
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits

    a = evaluate(model, tok, "rev,add", limit=30)
    b = evaluate(Plain(model), tok, "rev,add", limit=30)
    assert a["scores"] == b["scores"]


def test_in_memory_eval_is_never_cached(a_base, cache_home):
    model, tok = a_base
    before = evaluate(model, tok, "copy", limit=40)["scores"]["copy"]
    saved = model.lm_head.weight.detach().clone()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: argmax is token 0 (pad), never the answer
    try:
        assert evaluate(model, tok, "copy", limit=40)["scores"]["copy"] == 0.0
    finally:
        with torch.no_grad():
            model.lm_head.weight.copy_(saved)
    assert evaluate(model, tok, "copy", limit=40)["scores"]["copy"] == before > 0
    assert not cache_home.exists()


def test_choice_task_by_loglikelihood(a_base, tmp_path):
    model, tok = a_base
    path = tmp_path / "mc.jsonl"
    rows = [{"prompt": f"copy {w}=", "choices": [w[::-1] + "q", w], "answer": 1} for w in
            ["abc", "hello", "xyz", "cab", "moon", "tree", "bird", "fish"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = evaluate(model, tok, [str(path)])
    assert res["details"]["mc"]["metric"] == "acc" and res["scores"]["mc"] >= 0.75


def test_dir_cache_and_fingerprint(tiny_zoo, tmp_path, cache_home):
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_zoo / "a_rev", model_dir)
    first = evaluate_dir(model_dir, "rev,sort", limit=20)
    assert not any(first["details"][t].get("cached") for t in ("rev", "sort"))
    second = evaluate_dir(model_dir, "rev,sort", limit=20)
    assert all(second["details"][t].get("cached") for t in ("rev", "sort"))
    assert second["scores"] == first["scores"]
    assert not evaluate_dir(model_dir, "rev", limit=20, use_cache=False)["details"]["rev"].get("cached")
    assert not evaluate_dir(model_dir, "rev", limit=10)["details"]["rev"].get("cached")  # other settings
    fp = model_fingerprint(model_dir)
    st = (model_dir / "model.safetensors").stat()
    os.utime(model_dir / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "rewritten"
    assert model_fingerprint(model_dir) != fp
    assert not evaluate_dir(model_dir, "rev", limit=20)["details"]["rev"].get("cached")


def test_cli_eval_table_json_and_errors(tiny_zoo, tmp_path, cache_home):
    runner = CliRunner()
    out = tmp_path / "r.json"
    res = runner.invoke(main, ["eval", str(tiny_zoo / "c_base"), "--tasks", "sub,copy", "--limit", "20",
                               "--split", "validation", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "sub" in res.output and "mean" in res.output
    data = json.loads(out.read_text())
    assert set(data["scores"]) == {"sub", "copy"} and data["split"] == "validation" and data["limit"] == 20

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n{oops\n')
    for args, msg in [([str(tmp_path / "absent")], "model directory not found"),
                      ([str(tiny_zoo / "a_base"), "--tasks", "nope"], "unknown task 'nope'"),
                      ([str(tiny_zoo / "a_base"), "--tasks", str(bad)], "bad.jsonl:2: not valid JSON"),
                      ([str(tmp_path)], "no config.json")]:
        res = runner.invoke(main, ["eval", *args])
        assert res.exit_code == 2 and f"error: " in res.output and msg in res.output, (args, res.output)
        assert "Traceback" not in res.output


def test_cli_eval_scores_every_line_of_an_unmarked_file(tiny_zoo, tmp_path, cache_home):
    """A file without split markers is scored whole (as every evaluator scores the file
    it is given); --split, or a file that marks its splits, picks one split."""
    from modelglue.evaluate import builtin_task, unmarked_split

    rows = builtin_task("rev", "validation").examples[:12] + builtin_task("rev", "test").examples[:18]
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in rows))
    runner = CliRunner()
    out = tmp_path / "r.json"
    res = runner.invoke(main, ["eval", str(tiny_zoo / "a_rev"), "--tasks", str(mine), "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["details"]["mine"]["n"] == 30
    whole = data["scores"]["mine"]
    # the score is that of all 30 lines: the two hash halves, weighted by their sizes
    halves = {}
    for split in ("validation", "test"):
        res = runner.invoke(main, ["eval", str(tiny_zoo / "a_rev"), "--tasks", str(mine), "--split", split,
                                   "--json", str(out)])
        d = json.loads(out.read_text())
        halves[split] = (d["details"]["mine"]["n"], d["scores"]["mine"])
    (nv, sv), (nt, st) = halves["validation"], halves["test"]
    assert nv + nt == 30 and 0 < nt < 30
    assert whole * 30 == pytest.approx(sv * nv + st * nt)
    assert "no split markers" in unmarked_split(mine) and f"sends {nv} lines to validation" in unmarked_split(mine)
    # a file with a "split" field on its lines keeps its splits
    marked = tmp_path / "marked.jsonl"
    marked.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"],
                                          "split": "test" if i % 3 else "validation"}) + "\n"
                              for i, r in enumerate(rows)))
    assert unmarked_split(marked) is None
    res = runner.invoke(main, ["eval", str(tiny_zoo / "a_rev"), "--tasks", str(marked), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["details"]["marked"]["n"] == 20
