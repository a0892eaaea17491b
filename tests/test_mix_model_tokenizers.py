"""Model-level mixtures of experts that each read their own tokenizer, driven through text.

Three tiny experts: the demo char tokenizer (llama), the same characters under permuted
ids (mistral), and a BPE tokenizer that splits the same text into other pieces (qwen3).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modelglue.errors import ModelGlueError
from modelglue.evaluate import HFTextLM, Task, evaluate, load_model, text_lm
from modelglue.mixture import mix
from modelglue.mixture.testing import make_tiny_expert

DIGITS = [f"{i}+{3 * i + 2}=" for i in range(12)]
LETTERS = ["abcdefghijklmnop"[i:i + 4 + i % 3] for i in range(12)]
UPPER = ["QRSTUVWXYZ"[i % 5:i % 5 + 3 + i % 4] + "!" for i in range(12)]
CLASSES = (DIGITS, LETTERS, UPPER)
ROUTE = [{"prompt": p, "expert": e} for e, prompts in enumerate(CLASSES) for p in prompts]
MERGES = [("a", "b"), ("c", "d"), ("1", "2"), ("+", "1"), ("Q", "R"), ("ab", "cd"), ("=", "1")]


def bpe_tokenizer():
    """The demo characters plus a few merged pieces: another tokenization of the same text."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    from modelglue.demo.train import BOS, CHARS, SPECIALS

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS + [a + b for a, b in MERGES])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES, unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", BOS)])
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left", model_max_length=64)


def make_bpe_expert(out, seed: int = 3):
    from transformers import AutoConfig, AutoModelForCausalLM

    from modelglue.demo.train import BOS, EOS, PAD, save_tokenizer

    tok = bpe_tokenizer()
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("qwen3", vocab_size=len(tok), hidden_size=40, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=10, max_position_embeddings=128,
                               bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    model.save_pretrained(out)
    save_tokenizer(tok, out)
    return out


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok_experts")
    return [make_tiny_expert(root / "char", seed=0),
            make_tiny_expert(root / "perm", arch="mistral", seed=7, vocab_seed=1),
            make_bpe_expert(root / "bpe")]


@pytest.fixture(scope="module")
def mixture_dir(experts, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok_mix") / "mixture"
    rep = mix("model", experts, out, router="trained", router_data=ROUTE, router_encoder=0)
    assert rep.details["shared_tokenizer"] is False
    return out


def test_the_three_tokenizers_really_differ(experts):
    from transformers import AutoTokenizer

    toks = [AutoTokenizer.from_pretrained(e) for e in experts]
    ids = [t("ab12+1=")["input_ids"] for t in toks]
    assert ids[0] != ids[1] and len(ids[0]) == len(ids[1])  # permuted ids, same pieces
    assert len(ids[2]) < len(ids[0])  # merged pieces
    assert all(t.decode(i, skip_special_tokens=True) == "ab12+1=" for t, i in zip(toks, ids))


def test_routes_each_prompt_and_returns_its_experts_text(experts, mixture_dir):
    mixture, tok = load_model(mixture_dir)
    lm = text_lm(mixture, tok)
    prompts = ["5+17=", "bcdefg", "RSTU!", "11+35=", "ijklm", "QRS!"]
    assert lm.route(prompts) == [0, 1, 2, 0, 1, 2]
    got = lm.greedy(prompts, max_new_tokens=5)
    alone = [HFTextLM(*load_model(e)) for e in experts]
    for p, e, text in zip(prompts, lm.route(prompts), got):
        assert text == alone[e].greedy([p], 5)[0]
    # the experts disagree on these prompts, so a wrong route would show
    assert len({a.greedy(["5+17="], 5)[0] for a in alone}) == 3
    # an independent decoder: the expert's own transformers generate, one prompt at a time
    from transformers import AutoModelForCausalLM, AutoTokenizer

    e_tok, e_model = AutoTokenizer.from_pretrained(experts[2]), AutoModelForCausalLM.from_pretrained(experts[2])
    one = e_tok(["RSTU!"], return_tensors="pt")
    want = e_model.generate(**one, max_new_tokens=5, do_sample=False, pad_token_id=e_tok.pad_token_id)
    assert got[2] == e_tok.decode(want[0, one["input_ids"].shape[1]:], skip_special_tokens=True).split("\n")[0]


def _choice_task() -> Task:
    rows = []
    for e, prompts in enumerate(CLASSES):
        for p in prompts[:6]:
            rows.append({"prompt": p, "choices": ["12", "abcd", " Q", "7"], "answer": e})
    return Task("mc", rows, kind="choice", source="test")


def test_loglikelihoods_equal_each_expert_alone_on_its_rows(experts, mixture_dir):
    from modelglue.mixture.routers import completion_logprob

    mixture, tok = load_model(mixture_dir)
    lm = text_lm(mixture, tok)
    task = _choice_task()
    requests = [(ex["prompt"], c) for ex in task.examples for c in ex["choices"]]
    got = lm.loglikelihoods(requests)
    route = lm.route([ex["prompt"] for ex in task.examples])
    assert route == [e for e in range(3) for _ in range(6)]
    loaded = [load_model(e) for e in experts]
    for e, (model, etok) in enumerate(loaded):
        rows = [i for i, (p, _) in enumerate(requests) if route[[x["prompt"] for x in task.examples].index(p)] == e]
        alone = HFTextLM(model, etok).loglikelihoods([requests[i] for i in rows])
        assert [got[i] for i in rows] == alone  # the same numbers, bit for bit
        # and against an independent scorer (one unpadded forward per continuation)
        for i, (score, _) in zip(rows, alone):
            assert score == pytest.approx(completion_logprob(model, etok, *requests[i]), abs=1e-4)
    # the whole task through the evaluator: accuracy from those same numbers
    res = evaluate(mixture, tok, [task], keep_outputs=True)
    scores = [s for s, _ in got]
    picks = [max(range(4), key=lambda j, i=i: scores[4 * i + j]) for i in range(len(task.examples))]
    assert res["scores"]["mc"] == sum(p == ex["answer"] for p, ex in zip(picks, task.examples)) / len(picks)
    assert res["details"]["mc"]["outputs"] == [ex["choices"][p] for p, ex in zip(picks, task.examples)]


def test_token_level_calls_refuse_with_a_pointer_to_text(mixture_dir):
    mixture, _ = load_model(mixture_dir)
    with pytest.raises(ModelGlueError, match="text_lm"):
        mixture(input_ids=torch.tensor([[1, 5, 6]]))


def test_cli_eval_scores_the_mixture(experts, mixture_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from modelglue.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps({"prompt": p, "answer": "x"}) + "\n" for p in DIGITS[:4] + UPPER[:4]))
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps(ex) + "\n" for ex in _choice_task().examples))
    out = tmp_path / "res.json"
    res = CliRunner().invoke(main, ["eval", str(mixture_dir), "--tasks", f"{gen},{mc}", "--json", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    mixture, tok = load_model(mixture_dir)
    from modelglue.evaluate import whole_file_tasks

    want = evaluate(mixture, tok, whole_file_tasks(f"{gen},{mc}"))
    assert got["scores"] == want["scores"]
    assert got["details"]["mc"]["n"] == 18 and got["details"]["gen"]["n"] == 8


def test_lm_eval_adapter_scores_the_mixture_like_our_evaluator(experts, mixture_dir, tmp_path, monkeypatch):
    """A multiple-choice task through lm-eval's simple_evaluate (log-likelihoods from our
    adapter) and through our evaluator: the same accuracy, and the one expected."""
    pytest.importorskip("lm_eval")
    from modelglue.evaluate.lmeval import export_lm_eval_tasks, run_lm_eval

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    mixture, tok = load_model(mixture_dir)
    lm = text_lm(mixture, tok)
    rows = _choice_task().examples
    # the right answer is the routed expert's favourite on even rows and another choice
    # on odd rows: an accuracy of exactly 1/2, only if every row reaches its expert
    alone = [HFTextLM(*load_model(e)) for e in experts]
    for i, (ex, e) in enumerate(zip(rows, lm.route([ex["prompt"] for ex in rows]))):
        scores = [s for s, _ in alone[e].loglikelihoods([(ex["prompt"], c) for c in ex["choices"]])]
        best = max(range(4), key=scores.__getitem__)
        ex["answer"], ex["split"] = best if i % 2 == 0 else (best + 1) % 4, "test"
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps(ex) + "\n" for ex in rows + [{**rows[0], "split": "validation"}]))
    export_lm_eval_tasks(tmp_path / "tasks", tasks=[str(mc)])
    ours = evaluate(mixture, tok, [str(mc)], split="test")["scores"]["mc"]
    theirs = run_lm_eval(mixture, tok, ["modelglue_mc"], split="test", include_path=tmp_path / "tasks")
    assert ours == 0.5
    assert theirs["modelglue_mc"]["score"] == 0.5 and theirs["modelglue_mc"]["n"] == len(rows)


# ----------------------------------------------------------------------------- glue


def _with_added_tokens(src, out):
    """src's tokenizer plus two added tokens and two more embedding rows (as CodeLlama
    extends Llama-2's vocabulary): merges with src after aligning the vocabularies."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelglue.demo.train import save_tokenizer

    tok, model = AutoTokenizer.from_pretrained(src), AutoModelForCausalLM.from_pretrained(src)
    tok.add_tokens(["<PRE>", "<SUF>"])
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(out)
    save_tokenizer(tok, out)
    return out


def _expert_choice_tasks(experts, root):
    """Two multiple-choice tasks, one per expert: each row's answer is that expert's own
    favourite choice, so expert 0 wins task `digits` and expert 1 task `letters`."""
    import random

    rng = random.Random(0)
    digits = list(dict.fromkeys(f"{rng.randint(0, 60)}+{rng.randint(0, 60)}=" for _ in range(60)))[:40]
    letters = list(dict.fromkeys("".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(3, 7)))
                                 for _ in range(60)))[:40]
    paths = []
    for e, (name, prompts) in enumerate((("digits", digits), ("letters", letters))):
        lm = HFTextLM(*load_model(experts[e]))
        lines = []
        for i, p in enumerate(prompts):
            choices = ["12", "abcd", " Q", "7"]
            scores = [s for s, _ in lm.loglikelihoods([(p, c) for c in choices])]
            lines.append({"prompt": p, "choices": choices, "answer": max(range(4), key=scores.__getitem__),
                          "split": "validation" if i % 2 else "test"})
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        paths.append(str(path))
    return paths


def test_glue_mixes_clusters_with_different_tokenizers(experts, tmp_path, monkeypatch):
    from modelglue.evaluate import load_text_lm
    from modelglue.glue import GlueConfig, run_glue

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    zoo = [experts[0], experts[2], _with_added_tokens(experts[0], tmp_path / "char_added")]
    tasks = _expert_choice_tasks([experts[0], experts[2]], tmp_path)
    cfg = GlueConfig(models=zoo, tasks=tasks, out_dir=tmp_path / "out", routers=["trained"], budget=2,
                     strategies=["heuristic-average"], limit=None, pareto=False)
    results = run_glue(cfg, quiet=True)
    # three compatibility groups, each its own cluster: nothing merges directly
    assert len(results["groups"]) == 3 and len(results["clusters"]) == 3
    singles = {e["name"]: e for e in results["entries"] if e["kind"] == "single"}
    assert singles["char"]["test"]["digits"] == 1.0 and singles["bpe"]["test"]["letters"] == 1.0
    final = next(e for e in results["entries"] if e["kind"] == "model-glue")
    # char and char_added merge after aligning their vocabularies: glue tries the union merge
    [aligned] = results["aligned_merges"]
    assert aligned["groups"] == [0, 2] and aligned["best_member"] in ("cluster0", "cluster2")
    assert (Path(aligned["path"]) / "tokenizer.json").is_file() and aligned["path"].endswith("aligned/family0")
    union_tok = json.loads((Path(aligned["path"]) / "tokenizer.json").read_text())
    assert {t["content"] for t in union_tok["added_tokens"]} >= {"<PRE>", "<SUF>"}
    best_val = max(e["validation_mean"] for e in results["entries"] if e["name"] in ("char", "char_added"))
    assert aligned["kept"] == (aligned["validation_mean"] >= best_val)
    mixed = [aligned["path"] if aligned["kept"] else experts[0], experts[2]]
    report = json.loads((tmp_path / "out" / "final" / "mixture_report.json").read_text())
    assert report["experts"] == ["family0" if aligned["kept"] else "char", "bpe"]
    # the final mixture scores each test row as the expert it routes the row to, alone
    mixture = load_text_lm(tmp_path / "out" / "final")
    alone = [HFTextLM(*load_model(e)) for e in mixed]
    for t, path in enumerate(tasks):
        rows = [json.loads(x) for x in Path(path).read_text().splitlines() if '"test"' in x]
        route = mixture.route([r["prompt"] for r in rows])
        assert sum(e == t for e in route) >= 0.9 * len(rows)  # routed across tokenizers to the task's winner
        hits = []
        for r, e in zip(rows, route):
            scores = [s for s, _ in alone[e].loglikelihoods([(r["prompt"], c) for c in r["choices"]])]
            hits.append(max(range(4), key=scores.__getitem__) == r["answer"])
        assert final["test"][Path(path).stem] == sum(hits) / len(hits)
    assert results["final"]["test_mean"] >= 0.95 and results["final"]["gain_over_best_single"] > 0
    # the report says which clusters merge after alignment and that glue kept them mixed
    levels = results["merge_levels"]
    assert [sorted(Path(p).name for p in f["models"]) for f in levels["after_alignment"]] == [["char", "char_added"]]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## How the clusters can be joined" in md
    assert "merge after aligning vocabularies" in md and "aligned family 0: union-tokenizer merge of cluster" in md
    assert "each expert reads its own tokenizer" in final["note"]
    assert "mix only" in md and "How the clusters can be joined" in (tmp_path / "out" / "report.html").read_text()
