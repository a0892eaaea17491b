"""Zoo analysis in the wild: vocabularies that differ only by added tokens or padding rows
merge after alignment; other vocabularies (and architectures) can only be mixed.

Tiny tokenizers are built with the `tokenizers` library in the test (a char-level
WordLevel vocabulary, added tokens through `add_tokens`, as CodeLlama adds its infill
tokens to Llama-2's vocabulary); checkpoints are written directly, as in test_zoo_analysis.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from modelglue.cli import main
from modelglue.io import save_tensors
from modelglue.zoo import analyze_zoo
from modelglue.zoo.fingerprint import ALIGN, MIX, vocabulary, vocabulary_relation
from modelglue.zoo.report import summary_table

H, I, L = 16, 32, 2
CHARS = [chr(33 + i) for i in range(60)]


def _tokenizer(path: Path, chars: list[str], added: list[str] = ()) -> int:
    """Write a char-level tokenizer.json with `added` tokens on top; returns its size."""
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(chars)}, unk_token=chars[0]))
    tok.add_tokens(list(added))
    tok.save(str(path / "tokenizer.json"))
    return tok.get_vocab_size()


def _model(path: Path, rows: int, seed: int, chars=CHARS, added=(), arch="llama") -> Path:
    path.mkdir(parents=True)
    _tokenizer(path, chars, added)
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    sd = {"model.embed_tokens.weight": rnd(rows, H), "model.norm.weight": 1 + rnd(H), "lm_head.weight": rnd(rows, H)}
    for i in range(L):
        p = f"model.layers.{i}."
        sd |= {p + "self_attn.q_proj.weight": rnd(H, H), p + "self_attn.o_proj.weight": rnd(H, H),
               p + "mlp.up_proj.weight": rnd(I, H), p + "mlp.down_proj.weight": rnd(H, I),
               p + "input_layernorm.weight": 1 + rnd(H)}
        if arch == "qwen2":
            sd[p + "self_attn.q_proj.bias"] = rnd(H)
    cls = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]
    (path / "config.json").write_text(json.dumps({"architectures": [cls], "model_type": arch, "hidden_size": H,
                                                  "num_hidden_layers": L, "vocab_size": rows}))
    save_tensors(sd, path)
    return path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab_zoo")
    infill = ["<PRE>", "<SUF>", "<MID>", "<EOT>"]
    return {
        "llama2": _model(root / "llama2", 60, 0),
        "llama2_ft": _model(root / "llama2_ft", 60, 1),
        "codellama": _model(root / "codellama", 64, 2, added=infill),  # 60 + 4 added tokens, 64 rows
        "padded": _model(root / "padded", 64, 3),  # llama2's 60 tokens in 64 rows (Qwen2.5-style padding)
        "shuffled": _model(root / "shuffled", 60, 4, chars=CHARS[::-1]),  # same tokens, other ids
        "qwen": _model(root / "qwen", 60, 5, arch="qwen2"),  # the same vocabulary, another architecture
    }


@pytest.fixture(scope="module")
def analysis(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab_analysis")
    return analyze_zoo(list(zoo.values()), out_dir=out, plots=False), out


def _group(res, name: str) -> int:
    return res.group_of(next(i for i, m in enumerate(res.models) if m.name == name))


def test_vocabulary_relation_on_real_tokenizer_files(zoo):
    base, code, shuffled = (vocabulary(zoo[n]) for n in ("llama2", "codellama", "shuffled"))
    assert len(base) == 60 and len(code) == 64 and code["<MID>"] == 62
    assert vocabulary_relation(base, code) == "the same vocabulary up to 4 added tokens (60 vs 64)"
    assert vocabulary_relation(code, base) == vocabulary_relation(base, code)
    assert vocabulary_relation(base, base) == "the same vocabulary"
    assert vocabulary_relation(base, shuffled) is None


def test_groups_and_the_three_merge_levels(analysis):
    res, _ = analysis
    names = [[res.models[i].name for i in g] for g in res.groups]
    assert names == [["llama2", "llama2_ft"], ["codellama"], ["padded"], ["shuffled"], ["qwen"]]
    fp = {m.name: m for m in res.models}
    assert fp["codellama"].tokenizer_size == 64 and fp["padded"].tokenizer_size == 60 and fp["padded"].vocab_size == 64
    assert fp["llama2"].layout == fp["codellama"].layout == fp["padded"].layout != fp["qwen"].layout
    g = {n: _group(res, n) for n in ("llama2", "codellama", "padded", "shuffled", "qwen")}
    assert res.group_relation(g["llama2"], g["codellama"]) == (
        ALIGN, "the same vocabulary up to 4 added tokens (60 vs 64), 60 vs 64 embedding rows")
    assert res.group_relation(g["llama2"], g["padded"]) == (ALIGN, "the same vocabulary, 60 vs 64 embedding rows")
    # padded (60 tokens, 64 rows) and codellama (64 tokens, 64 rows): same shapes, one vocabulary extends the other
    assert res.group_relation(g["padded"], g["codellama"])[0] == ALIGN
    assert res.group_relation(g["llama2"], g["shuffled"]) == (MIX, "vocabularies differ (the same token has another id)")
    assert res.group_relation(g["llama2"], g["qwen"]) == (MIX, "architecture LlamaForCausalLM vs Qwen2ForCausalLM")
    assert res.alignment_families() == [[g["llama2"], g["codellama"], g["padded"]], [g["shuffled"]], [g["qwen"]]]


def test_reports_say_what_merges_how(analysis):
    res, out = analysis
    text = summary_table(res)
    assert "merge after aligning vocabularies (a union tokenizer, tokenizer_source: union):" in text
    assert "  groups 0 + 1 + 2:\n    group 0 / group 1: the same vocabulary up to 4 added tokens (60 vs 64), " \
           "60 vs 64 embedding rows\n    group 0 / group 2: the same vocabulary, 60 vs 64 embedding rows\n" in text
    assert "  group 0 / group 3: vocabularies differ (the same token has another id)" in text
    levels = json.loads((out / "clusters.json").read_text())["merge_levels"]
    assert [Path(p).name for p in levels["after_alignment"][0]["models"]] == ["llama2", "llama2_ft", "codellama", "padded"]
    # inside an alignment family no pair is reported as mix-only
    assert {tuple(m["groups"]) for m in levels["mix_only"]} == {(0, 3), (0, 4), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)}
    sim = json.loads((out / "similarity.json").read_text())
    assert {tuple(x["groups"]): x["relation"] for x in sim["incompatible"]}[(0, 1)] == ALIGN


def test_cli_prints_the_merge_levels(zoo, tmp_path):
    res = CliRunner().invoke(main, ["zoo", "analyze", *map(str, zoo.values()), "--out", str(tmp_path / "a"),
                                    "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "merge after aligning vocabularies" in res.output and "mix only" in res.output


def test_each_tokenizer_json_is_read_once_per_analysis(zoo, monkeypatch):
    """Real zoos carry 7-11 MB tokenizer.json files (Qwen, Llama-3): the fingerprint (its
    vocabulary hash and size) and the group links (vocabularies compared) take them from
    one read per model, with the same result as reading them separately."""
    reads: list[str] = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):
        if self.name == "tokenizer.json":
            reads.append(self.parent.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    res = analyze_zoo(list(zoo.values()), plots=False)
    assert sorted(reads) == sorted(zoo)  # each model once, although four group pairs compare vocabularies
    g = {n: _group(res, n) for n in ("llama2", "codellama", "shuffled")}
    assert res.group_relation(g["llama2"], g["codellama"])[0] == ALIGN
    assert res.group_relation(g["llama2"], g["shuffled"])[0] == MIX
    assert {m.name: m.tokenizer_size for m in res.models} == {n: len(vocabulary(p)) for n, p in zoo.items()}


def test_tokenizer_identity_ignores_the_files_key_order(tmp_path):
    """The identity hashes the vocabulary, not the file: the same token -> id map written in
    another order is the same tokenizer; one token moved to another id is not."""
    from modelglue.zoo.fingerprint import read_tokenizer

    def write(name: str, vocab: dict) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer.json").write_text(json.dumps(
            {"model": {"type": "WordLevel", "vocab": vocab}, "added_tokens": [{"id": 3, "content": "<x>"}]}))
        return tmp_path / name

    a = read_tokenizer(write("a", {"p": 0, "q": 1, "r": 2}))
    b = read_tokenizer(write("b", {"r": 2, "p": 0, "q": 1}))
    c = read_tokenizer(write("c", {"p": 0, "q": 2, "r": 1}))
    assert a.identity == b.identity != c.identity
    assert a.vocab == b.vocab == {"p": 0, "q": 1, "r": 2, "<x>": 3}
