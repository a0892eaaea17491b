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
