"""Zoo analysis on tiny hand-built checkpoints: fingerprints, compatibility groups,
streamed similarities against a direct numpy computation, clusters, outputs and CLI.

The checkpoints are written directly (config.json + safetensors + tokenizer.json) rather
than through transformers, so the module runs in seconds; their tensor names and config
keys follow Llama and Qwen2.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from modelglue.cli import main
from modelglue.io import save_tensors
from modelglue.zoo import analyze_zoo, group_similarity
from modelglue.io import Checkpoint

H, I, L = 16, 40, 2  # hidden, intermediate, layers


def _state(seed, vocab=64, arch="llama", hidden=H):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    sd = {"model.embed_tokens.weight": rnd(vocab, hidden)}
    for i in range(L):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = 1 + rnd(hidden)
        for n, shape in (("q_proj", (hidden, hidden)), ("k_proj", (hidden // 2, hidden)),
                         ("v_proj", (hidden // 2, hidden)), ("o_proj", (hidden, hidden))):
            sd[p + f"self_attn.{n}.weight"] = rnd(*shape)
            if arch == "qwen2" and n != "o_proj":
                sd[p + f"self_attn.{n}.bias"] = rnd(shape[0])
        sd[p + "post_attention_layernorm.weight"] = 1 + rnd(hidden)
        sd[p + "mlp.gate_proj.weight"] = rnd(I, hidden)
        sd[p + "mlp.up_proj.weight"] = rnd(I, hidden)
        sd[p + "mlp.down_proj.weight"] = rnd(hidden, I)
    sd["model.norm.weight"] = 1 + rnd(hidden)
    sd["lm_head.weight"] = rnd(vocab, hidden)
    return sd


def _tokenizer_json(vocab, shift=0):
    chars = [chr(33 + (i + shift) % 200) for i in range(vocab)]
    return {"version": "1.0", "added_tokens": [], "model": {"type": "WordLevel", "unk_token": chars[0],
                                                            "vocab": {c: i for i, c in enumerate(chars)}}}


def _write(path: Path, sd, arch="llama", vocab=64, tok_shift=0, dtype=torch.float32, hidden=H):
    path.mkdir(parents=True)
    cls = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]
    cfg = {"architectures": [cls], "model_type": arch, "hidden_size": hidden, "intermediate_size": I,
           "num_hidden_layers": L, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": vocab,
           "tie_word_embeddings": False}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "tokenizer.json").write_text(json.dumps(_tokenizer_json(vocab, tok_shift)))
    save_tensors({k: v.to(dtype) for k, v in sd.items()}, path)
    return path


def _finetune(sd, seed, rel):
    """base + seeded noise of `rel` times each tensor's RMS (a 'fine-tune')."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + rel * v.pow(2).mean().sqrt() * torch.randn(v.shape, generator=g) for k, v in sd.items()}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    a, b = _state(0), _state(1)
    m = {}
    m["a_base"] = _write(root / "a_base", a)
    m["a_ft1"] = _write(root / "a_ft1", _finetune(a, 10, 0.02))
    m["a_ft2"] = _write(root / "a_ft2", _finetune(a, 11, 0.03), dtype=torch.bfloat16)  # dtype may differ
    m["a_harsh"] = _write(root / "a_harsh", _finetune(a, 12, 0.5))
    m["b_base"] = _write(root / "b_base", b)
    m["b_ft1"] = _write(root / "b_ft1", _finetune(b, 20, 0.02))
    m["a_tok2"] = _write(root / "a_tok2", _finetune(a, 13, 0.02), tok_shift=7)  # same shapes, other tokenizer
    m["v80"] = _write(root / "v80", _state(2, vocab=80), vocab=80)  # other vocab size
    m["qwen"] = _write(root / "qwen", _state(3, arch="qwen2"), arch="qwen2")
    m["qwen_ft"] = _write(root / "qwen_ft", _finetune(_state(3, arch="qwen2"), 30, 0.02), arch="qwen2")
    return m


ORDER = ["a_base", "a_ft1", "a_ft2", "a_harsh", "b_base", "b_ft1", "a_tok2", "v80", "qwen", "qwen_ft"]


@pytest.fixture(scope="module")
def result(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    return analyze_zoo([zoo[n] for n in ORDER], out_dir=out, chunk_elems=300), out


def _names(res, groups):
    return [[res.models[i].name for i in g] for g in groups]


def test_fingerprints(result, zoo):
    res, _ = result
    fp = {m.name: m for m in res.models}
    assert fp["a_base"].architecture == "LlamaForCausalLM" and fp["qwen"].architecture == "Qwen2ForCausalLM"
    assert fp["a_base"].num_params == sum(v.numel() for v in _state(0).values())
    assert fp["a_ft2"].dtype == "bfloat16" and fp["a_base"].dtype == "float32"
    assert fp["a_base"].signature == fp["a_ft2"].signature == fp["b_base"].signature  # dtype not in signature
    assert fp["a_base"].tokenizer == fp["b_base"].tokenizer != fp["a_tok2"].tokenizer
    assert fp["v80"].vocab_size == 80 and fp["a_base"].num_layers == L


def test_compatibility_groups(result):
    res, _ = result
    # two architectures and two tokenizers (plus a vocab size) split the zoo
    assert _names(res, res.groups) == [["a_base", "a_ft1", "a_ft2", "a_harsh", "b_base", "b_ft1"],
                                       ["a_tok2"], ["v80"], ["qwen", "qwen_ft"]]
    reasons = {tuple(x["groups"]): x["reason"] for x in res.to_similarity_json()["incompatible"]}
    assert reasons[(0, 1)] == "tokenizers differ"
    assert reasons[(0, 2)] == "tensor names or shapes differ"
    assert reasons[(0, 3)].startswith("architecture")


def test_clusters_reproduce_families(result):
    res, _ = result
    # hierarchical: gentle fine-tunes with their base; the harsh fine-tune (50% noise,
    # cosine ~0.8) is cut off in the largest gap; family B separate; other groups alone
    assert _names(res, res.clusters) == [["a_base", "a_ft1", "a_ft2"], ["a_harsh"], ["b_base", "b_ft1"],
                                         ["a_tok2"], ["v80"], ["qwen", "qwen_ft"]]
    assert [res.models[i].name for i in res.cluster_bases] == ["a_base", "a_harsh", "b_base", "a_tok2", "v80", "qwen"]


def test_paper_method_and_given_base(zoo):
    res = analyze_zoo([zoo[n] for n in ["a_ft1", "a_ft2", "a_harsh", "b_ft1"]], base=zoo["b_base"], method="paper")
    assert _names(res, res.clusters) == [["a_ft1", "a_ft2"], ["a_harsh"], ["b_ft1", "b_base"]]
    # the given base joins the analysis and is the base of its cluster; others detect theirs
    assert res.models[res.base].name == "b_base"
    assert [res.models[i].name for i in res.cluster_bases] == ["a_ft1", "a_harsh", "b_base"]


def _per_column_cos(x, y):
    """The paper's code: F.cosine_similarity(W_a, W_b, dim=0).mean(), in float64."""
    x = x.double().reshape(x.shape[0], -1) if x.dim() >= 2 else x.double()[:, None]
    y = y.double().reshape(y.shape[0], -1) if y.dim() >= 2 else y.double()[:, None]
    return torch.nn.functional.cosine_similarity(x, y, dim=0).mean().item()


def test_similarity_matches_direct_computation(zoo):
    names = ["a_base", "a_ft1", "a_ft2", "a_harsh", "b_base"]
    ckpts = [Checkpoint(zoo[n]) for n in names]
    # a tiny chunk budget forces many row blocks per tensor
    sim = group_similarity(ckpts, chunk_elems=200)
    full = [{n: c.get(n) for n in c.names()} for c in ckpts]
    paper = [n for n in full[0] if ".layers." in n and ("self_attn" in n or "mlp" in n)]
    assert sorted(sim.paper_tensors) == sorted(paper)
    k = len(names)
    W = np.array([[np.mean([_per_column_cos(full[a][n], full[b][n]) for n in paper]) for b in range(k)]
                  for a in range(k)])
    np.testing.assert_allclose(sim.weight_cosine, W, atol=1e-10)
    z = 0  # task vectors against a_base
    T = np.full((k, k), np.nan)
    for a in range(1, k):
        for b in range(1, k):
            T[a, b] = np.mean([_per_column_cos(full[a][n] - full[z][n], full[b][n] - full[z][n]) for n in paper])
    # task vectors come from the Gram identity: float64 cancellation, still ~1e-9
    np.testing.assert_allclose(sim.task_cosine(z), T, atol=1e-8)
    # per layer: mean over that layer's tensors
    lay = [n for n in paper if ".layers.1." in n]
    w1 = np.mean([_per_column_cos(full[1][n], full[3][n]) for n in lay])
    assert sim.layer_weight_cosine[1][1, 3] == pytest.approx(w1, abs=1e-10)
    # relative L2 over the paper set
    num = sum((full[3][n].double() - full[0][n].double()).pow(2).sum() for n in paper).sqrt()
    den = sum(full[0][n].double().pow(2).sum() for n in paper).sqrt()
    assert sim.rel_l2()[3, 0] == pytest.approx((num / den).item(), rel=1e-9)
    # every float tensor is reported: outside the paper set as the flat cosine
    emb = "model.embed_tokens.weight"
    flat = torch.nn.functional.cosine_similarity(full[0][emb].double().flatten(), full[4][emb].double().flatten(), dim=0)
    assert sim.tensor_weight_cosine[emb][0, 4] == pytest.approx(flat.item(), abs=1e-10)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert sim.tensor_weight_cosine[q][1, 2] == pytest.approx(_per_column_cos(full[1][q], full[2][q]), abs=1e-10)
    # each file is read once: bytes read = the models' float tensor bytes
    assert sim.bytes_read == sum(c.nbytes(n) for c in ckpts for n in c.names())


def test_streaming_chunk_size_does_not_change_results(zoo):
    ckpts = [Checkpoint(zoo[n]) for n in ["a_base", "a_ft1", "a_harsh"]]
    small = group_similarity(ckpts, chunk_elems=50)
    big = group_similarity(ckpts)
    np.testing.assert_allclose(small.weight_cosine, big.weight_cosine, atol=1e-12)
    np.testing.assert_allclose(small.task_cosine_by_base, big.task_cosine_by_base, atol=1e-9)


def test_base_detection_and_identical_model(zoo, tmp_path):
    # a byte-identical copy of the base has no task vector: NaN, not a fake cosine
    import shutil

    dup = tmp_path / "a_copy"
    shutil.copytree(zoo["a_base"], dup)
    res = analyze_zoo([zoo["a_ft1"], zoo["a_ft2"], zoo["a_base"], dup])
    sim = res.similarity[0]
    assert res.models[res.cluster_bases[0]].name in ("a_base", "a_copy")
    t = sim.task_cosine(2)
    assert np.isnan(t[3, 0]) and np.isfinite(t[0, 1])
    assert sim.weight_cosine[2, 3] == pytest.approx(1.0)


def test_outputs(result):
    res, out = result
    clusters = json.loads((out / "clusters.json").read_text())
    assert clusters["clusters"] == res.cluster_paths
    assert clusters["cluster_bases"] == res.cluster_base_paths
    meta = {m["name"]: m for m in clusters["models"]}
    assert meta["a_ft1"]["cluster_base"].endswith("a_base") and meta["a_base"]["is_cluster_base"]
    assert 0.99 < meta["a_ft1"]["weight_cosine_to_base"] < 1
    sim = json.loads((out / "similarity.json").read_text())
    g0 = sim["groups"][0]
    assert len(g0["weight_cosine"]) == 6 and g0["task_cosine"]["base"].endswith("a_base")
    assert set(g0["per_layer"]) == {"0", "1"}
    assert (out / "heatmap.png").stat().st_size > 1000 and (out / "dendrogram.png").stat().st_size > 1000


def test_cli(zoo, tmp_path):
    out = tmp_path / "an"
    r = CliRunner().invoke(main, ["zoo", "analyze", str(zoo["a_base"]), str(zoo["a_ft1"]), str(zoo["b_base"]),
                                  str(zoo["qwen"]), "--out", str(out), "--method", "paper", "-q"])
    assert r.exit_code == 0, r.output
    assert "a_ft1" in r.output and "cluster" in r.output
    assert json.loads((out / "clusters.json").read_text())["clusters"] == [
        [str(zoo["a_base"]), str(zoo["a_ft1"])], [str(zoo["b_base"])], [str(zoo["qwen"])]]


@pytest.mark.parametrize("args, msg", [
    (["nope"], "nope: model directory not found"),
    (["{a}", "{a}"], "listed twice"),
    (["{a}", "--threshold", "2"], "not a cosine similarity"),
    (["{a}", "--out", "{a}/x"], "lies inside input model"),
])
def test_cli_errors(zoo, tmp_path, args, msg):
    args = [x.format(a=zoo["a_base"]) for x in args]
    r = CliRunner().invoke(main, ["zoo", "analyze", *args])
    assert r.exit_code == 2 and f"error:" in r.output and msg in r.output, r.output


def test_demo_zoo_families(request, tmp_path):
    """On the demo zoo: family A's base and gentle fine-tunes form one cluster, family B
    another, family C (another architecture) its own compatibility group."""
    try:
        zoo_dir = Path(request.getfixturevalue("tiny_zoo"))
    except pytest.FixtureLookupError:
        pytest.skip("tiny_zoo fixture (tests/conftest.py) not available yet")
    manifest = json.loads((zoo_dir / "zoo.json").read_text())
    role = {m["name"]: (m["family"], m["role"]) for m in manifest["models"]}
    res = analyze_zoo([zoo_dir], out_dir=tmp_path / "an")
    clusters = _names(res, res.clusters)
    groups = _names(res, res.groups)
    by_name = {n: i for i, c in enumerate(clusters) for n in c}
    a_keep = [n for n, (f, r) in role.items() if f == "A" and r in ("base", "gentle")]
    assert len({by_name[n] for n in a_keep}) == 1
    a_cluster = set(clusters[by_name[a_keep[0]]])
    assert not any(role[n][0] == "B" for n in a_cluster)
    b_names = [n for n, (f, _) in role.items() if f == "B"]
    assert len({by_name[n] for n in b_names}) == 1
    c_names = [n for n, (f, _) in role.items() if f == "C"]
    c_group = [g for g in groups if c_names[0] in g][0]
    assert set(c_group) == set(c_names)


def test_pickle_checkpoints_give_the_same_numbers(zoo, tmp_path):
    # pickles have no file offsets: the reader falls back to whole-tensor reads
    import shutil

    dirs = []
    for n in ("a_base", "a_ft1", "a_harsh"):
        d = tmp_path / n
        d.mkdir()
        shutil.copy(zoo[n] / "config.json", d)
        ck = Checkpoint(zoo[n])
        torch.save({k: ck.get(k) for k in ck.names()}, d / "pytorch_model.bin")
        dirs.append(d)
    ref = analyze_zoo([zoo[n] for n in ("a_base", "a_ft1", "a_harsh")])
    got = analyze_zoo(dirs, allow_pickle=True, chunk_elems=100)
    np.testing.assert_allclose(got.similarity[0].weight_cosine, ref.similarity[0].weight_cosine, atol=1e-12)
    np.testing.assert_allclose(got.similarity[0].task_cosine(0), ref.similarity[0].task_cosine(0), atol=1e-9)
