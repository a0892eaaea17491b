"""The demo zoo: layout, loadability, and the intended shape of its score table."""
from __future__ import annotations

import json

import re

import pytest
import torch

from modelglue.errors import ModelGlueError


def _manifest(zoo):
    return json.loads((zoo / "zoo.json").read_text())


def _scores(zoo):
    return json.loads((zoo / "scores.json").read_text())["scores"]


def test_layout_and_manifest(tiny_zoo):
    m = _manifest(tiny_zoo)
    assert m["scale"] == "tiny" and "sub" in m["tasks"]
    roles = {(e["family"], e["role"]) for e in m["models"]}
    assert {("A", "base"), ("A", "gentle"), ("A", "harsh"), ("B", "base"), ("B", "gentle"), ("C", "base")} <= roles
    assert sum(e["family"] == "A" and e["role"] == "gentle" for e in m["models"]) >= 3
    for e in m["models"]:
        d = tiny_zoo / e["path"]
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "generation_config.json"):
            assert (d / f).is_file(), d / f
        if e["role"] != "base":  # a fine-tune of a base of its own family
            parent = next(p for p in m["models"] if p["name"] == e["parent"])
            assert parent["role"] == "base" and parent["family"] == e["family"]
    cfg_a = json.loads((tiny_zoo / "a_base" / "config.json").read_text())
    cfg_c = json.loads((tiny_zoo / "c_base" / "config.json").read_text())
    assert cfg_a["model_type"] == "llama" and cfg_c["model_type"] != "llama"
    assert cfg_a["hidden_size"] != cfg_c["hidden_size"]  # not weight-mergeable


def test_models_load_with_auto_classes_and_generate(tiny_zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("a_base", "b_base", "c_base"):
        tok = AutoTokenizer.from_pretrained(tiny_zoo / name)
        model = AutoModelForCausalLM.from_pretrained(tiny_zoo / name)
        for text in ["rev abc=", "a  b c\n", "Up 12+3=!?"]:  # spaces survive (no byte-level rebuild)
            assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
        assert tok(["x"])["input_ids"][0][0] == tok.bos_token_id
        enc = tok(["copy abc="], return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=6, do_sample=False)
        assert out.shape[1] > enc["input_ids"].shape[1]


def test_score_table_shape(tiny_zoo):
    """Gentle fine-tunes gain on their own task and keep the rest; harsh ones forget;
    family C is the only one that knows `sub`."""
    m, s = _manifest(tiny_zoo), _scores(tiny_zoo)
    base_tasks = m["base_tasks"]
    by_name = {e["name"]: e for e in m["models"]}

    def mean(model, tasks):
        return sum(s[model][t] for t in tasks) / len(tasks)

    for e in m["models"]:
        if e["role"] == "base":
            continue
        parent, own = e["parent"], e["train_tasks"]
        others = [t for t in base_tasks if t not in own]
        if e["role"] == "gentle":
            assert mean(e["name"], own) >= mean(parent, own) + 0.05, (e["name"], s[e["name"]], s[parent])
            assert mean(e["name"], others) >= mean(parent, others) - 0.08, (e["name"], s[e["name"]], s[parent])
        else:  # harsh: drifts onto its task, forgets the others
            assert mean(e["name"], own) >= mean(parent, own), e["name"]
            assert mean(e["name"], others) <= 0.5 * mean(parent, others), (e["name"], s[e["name"]], s[parent])
    c_sub = s["c_base"][m["c_task"]]  # tiny zoo: about 0.15 against at most 0.01 for A and B
    assert c_sub >= 0.1
    assert all(c_sub >= s[n][m["c_task"]] + 0.1 for n in by_name if by_name[n]["family"] != "C")
    for base in ("a_base", "b_base", "c_base"):  # every base knows some of every family task
        assert mean(base, base_tasks) >= 0.15, (base, s[base])


def test_training_is_deterministic():
    from modelglue.demo.train import make_model, train
    from modelglue.demo.zoo import SIZES

    weights = []
    for _ in range(2):
        model = make_model("llama", SIZES["tiny"]["llama"], seed=3)
        train(model, [("rev", False, 1.0), ("add", True, 1.0)], steps=3, lr=1e-3, seed=4, batch_size=8)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_keeping_the_teacher_holds_the_other_tasks():
    """A fine-tune with a teacher keeps the teacher's next-token distribution on the `keep`
    tasks: it drifts less there than the same run without one (what lets the full zoo's
    gentle fine-tunes merge)."""
    import copy
    import random

    from modelglue.demo.train import make_batch, make_model, train
    from modelglue.demo.zoo import SIZES

    parent = make_model("llama", SIZES["tiny"]["llama"], seed=3)
    probe, _ = make_batch([("rev", True, 1.0)], random.Random(9), 16)
    with torch.no_grad():
        before = parent(input_ids=probe).logits.log_softmax(-1)

    def drift(**kw):
        model = copy.deepcopy(parent)
        train(model, [("add", True, 1.0)], steps=30, lr=3e-3, seed=4, batch_size=16, warmup=5, **kw)
        with torch.no_grad():
            after = model(input_ids=probe).logits.log_softmax(-1)
        return torch.nn.functional.kl_div(after, before, log_target=True, reduction="batchmean").item()

    free = drift()
    kept = drift(teacher=copy.deepcopy(parent).eval(), keep=[("rev", False, 1.0), ("rev", True, 1.0)], keep_share=0.5)
    assert kept < 0.5 * free, (kept, free)


def test_keeping_hidden_states_holds_the_inside_too():
    """With `keep_hidden`, a fine-tune also keeps the teacher's hidden states on the keep
    tasks, at every layer: they move much less than when only the outputs are kept."""
    import copy
    import random

    from modelglue.demo.train import make_batch, make_model, train
    from modelglue.demo.zoo import SIZES

    parent = make_model("llama", SIZES["tiny"]["llama"], seed=3)
    probe, _ = make_batch([("rev", True, 1.0)], random.Random(9), 16)
    with torch.no_grad():
        before = parent(input_ids=probe, output_hidden_states=True).hidden_states[1:]

    def moved(**kw):
        model = copy.deepcopy(parent)
        train(model, [("add", True, 1.0)], steps=30, lr=3e-3, seed=4, batch_size=16, warmup=5,
              teacher=copy.deepcopy(parent).eval(), keep=[("rev", False, 1.0), ("rev", True, 1.0)],
              keep_share=0.5, **kw)
        with torch.no_grad():
            after = model(input_ids=probe, output_hidden_states=True).hidden_states[1:]
        return sum(((a - b).square().sum() / b.square().sum()).item() for a, b in zip(after, before))

    outputs_only, inside_too = moved(), moved(keep_hidden=10.0)
    assert inside_too < 0.5 * outputs_only, (inside_too, outputs_only)


def test_training_logs_steps_where_no_bar_can_draw(capsys):
    """Under a log (stderr not a terminal) a long training run still says how far it is."""
    from modelglue.demo.train import make_model, train
    from modelglue.demo.zoo import SIZES

    model = make_model("llama", SIZES["tiny"]["llama"], seed=3)
    train(model, [("rev", False, 1.0)], steps=4, lr=1e-3, seed=4, batch_size=4, desc="m", log_every=1e-9)
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["m: step 1/4", "m: step 2/4", "m: step 3/4"]
    assert all(re.search(r"loss \d+\.\d+ \(\d+ s, ETA \d+ s\)", ln) for ln in lines)


def test_full_recipe_gentle_keep_harsh_drift():
    """Full zoo: gentle fine-tunes keep the base on the other tasks (outputs and hidden
    states), at a low lr;
    harsh ones train on one task alone at a high lr; the A and B bases share one shape."""
    from modelglue.demo.zoo import SIZES, zoo_specs

    specs = zoo_specs("full")
    for s in specs:
        if s.role == "gentle":
            assert s.keep > 0 and s.keep_hidden > 0 and s.lr <= 1e-3, s
        if s.role == "harsh":
            assert s.keep == 0 and s.replay == 0 and s.lr > 1e-3 and len(s.train_tasks) == 1, s
    assert SIZES["full"]["llama"]["hidden_size"] != SIZES["full"]["qwen3"]["hidden_size"]


def test_build_refuses_nonempty_dir_and_leaves_nothing_on_failure(tmp_path, monkeypatch, capsys):
    from modelglue.demo import zoo as zoo_mod

    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "x").write_text("keep")
    with pytest.raises(ModelGlueError, match="not empty"):
        zoo_mod.build_demo_zoo(tmp_path / "zoo", scale="tiny")

    calls = []

    def failing_train(*args, **kwargs):  # the second model dies mid-build
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 0.0

    monkeypatch.setattr(zoo_mod, "train", failing_train)
    with pytest.raises(KeyboardInterrupt):  # one worker trains in this process, where the patch applies
        zoo_mod.build_demo_zoo(tmp_path / "new", scale="tiny", workers=1)
    assert not (tmp_path / "new").exists()
    # a log (no terminal) gets one line per trained model, with elapsed time and an ETA
    first = zoo_mod.zoo_specs("tiny")[0].name
    assert re.search(rf"demo zoo +1/\d+: {first} .*elapsed \d+ s, ETA \d+ s", capsys.readouterr().err)
    assert [p.name for p in tmp_path.iterdir()] == ["zoo"]  # no temp dir left behind
    with pytest.raises(ModelGlueError, match="unknown demo scale"):
        zoo_mod.zoo_specs("huge")


def test_cli_build_demo_rejects_nonempty(tmp_path):
    from click.testing import CliRunner

    from modelglue.cli import main

    (tmp_path / "f").write_text("x")
    res = CliRunner().invoke(main, ["zoo", "build-demo", str(tmp_path), "--scale", "tiny"])
    assert res.exit_code == 2 and "error: output directory is not empty" in res.output


def test_family_d_trains_and_saves_one_tokenizer_of_its_own():
    """Family D's batches are written in the ids of the tokenizer saved with it (decoding a
    batch gives the task text back), and those ids differ from the shared tokenizer's."""
    import random

    from modelglue.demo.train import build_tokenizer, make_batch
    from modelglue.demo.zoo import D_VOCAB_SEED, FAMILY_TASKS, zoo_specs

    ids, labels = make_batch([("dup", True, 1.0)], random.Random(1), 4, vocab_seed=D_VOCAB_SEED)
    own, shared = build_tokenizer(D_VOCAB_SEED), build_tokenizer()
    text = own.decode(ids[0], skip_special_tokens=True)
    prompt, answer = text.split("=")
    assert prompt.startswith("dup ") and answer == "".join(c + c for c in prompt[4:]) + "\n"
    assert own(text)["input_ids"] != shared(text)["input_ids"]
    assert shared.decode(shared(text)["input_ids"], skip_special_tokens=True) == text
    d = [s for s in zoo_specs("full") if s.family == "D"]
    assert [s.vocab_seed for s in d] == [D_VOCAB_SEED] and FAMILY_TASKS["D"] in d[0].train_tasks
    assert all(FAMILY_TASKS["D"] not in s.train_tasks for s in zoo_specs("full") if s.family != "D")
