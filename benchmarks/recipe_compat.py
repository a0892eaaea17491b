#!/usr/bin/env python3
"""Recipe compatibility with mergekit 0.1.5: every recipe of benchmarks/recipe_corpus/
(mergekit YAML, unchanged: every merge method, slices, gradients, filters, tokenizer
keys, chat templates, LoRA references, keys mergekit ignores, mergekit-moe configs) runs
through mergekit (`mergekit-yaml`, `mergekit-moe`) and through modelglue (`modelglue
merge`, `modelglue mix CONFIG OUT`) on tiny stand-in models this script builds, and the
outputs are compared tensor by tensor.

    .venv/bin/python benchmarks/recipe_compat.py [--work DIR] [--only a,b] [--markdown FILE]

Needs .venv-mergekit (bash benchmarks/setup_mergekit_venv.sh). A few minutes on 2 cores:
each tool runs all its recipes in one process (mergekit's click commands are called
in-process by a driver under .venv-mergekit's Python, so its import is paid once), the
two tools at the same time.

Match: every tensor of mergekit's output exists in modelglue's with the same shape and
dtype, and `|ours - theirs| <= rtol |theirs| + atol` (float32: 1e-5 / 1e-6; bfloat16 and
float16: one unit in the last place, as tests/test_mergekit_golden.py), the config's
architecture, depth and vocabulary agree, the tokenizer's vocabulary agrees and a
chat_template.jinja is byte-identical. Randomised recipes (`random_*`: DARE / DELLA
drops, random gates: the two tools draw different random numbers) match statistically:
every tensor's L2 norm within 5% of mergekit's. "bit-identical" means every tensor equal.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parent / "recipe_corpus"
MERGEKIT_VENV = ROOT / ".venv-mergekit"
WORDS = ["<pad>", "<s>", "</s>", "<unk>", "hello", "world", "the", "a", "user", "assistant", "system", "hi", "how",
         "are", "you", "?", "add", "two", "numbers", "reverse", "this", "text", "count", "letters"]
TEMPLATE_A = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
TEMPLATE_B = ("{{ bos_token }}{% for m in messages %}{{ m['role'] | upper + ': ' + m['content'] + '\\n' }}{% endfor %}")
LLAMA = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=len(WORDS), max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
             tie_word_embeddings=False)
# name -> (architecture, seed, parent, noise, chat template (where, text))
MODELS = {
    "base": ("llama", 0, None, 0.0, None),
    "ft1": ("llama", 1, "base", 0.2, ("config", TEMPLATE_A)),
    "ft2": ("llama", 2, "base", 0.2, ("file", TEMPLATE_B)),
    "ft3": ("llama", 3, "base", 0.2, ("file", TEMPLATE_A + "\n")),
    "far": ("llama", 4, "base", 1.5, None),
    "other": ("llama", 5, None, 0.0, None),  # unrelated weights (model_stock / karcher see real angles)
    "qbase": ("qwen2", 10, None, 0.0, None),
    "qft1": ("qwen2", 11, "qbase", 0.2, None),
    "qft2": ("qwen2", 12, "qbase", 0.2, None),
    "q3base": ("qwen3", 20, None, 0.0, None),
    "q3ft1": ("qwen3", 21, "q3base", 0.2, None),
    "mbase": ("mistral", 30, None, 0.0, None),
    "mft1": ("mistral", 31, "mbase", 0.2, None),
    "gbase": ("gemma2", 40, None, 0.0, None),
    "gft1": ("gemma2", 41, "gbase", 0.2, None),
    "pbase": ("phi3", 50, None, 0.0, None),
    "pft1": ("phi3", 51, "pbase", 0.2, None),
}
ADDED_TOKENS = ["<|im_start|>", "<|im_end|>"]


def save_tokenizer(out: Path, added: list[str] = ()) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AddedToken, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    if added:
        fast.add_tokens([AddedToken(t, special=True) for t in added])
    fast.save_pretrained(out)


def build_model(root: Path, name: str) -> None:
    """A seeded tiny model: a parent's weights plus a shared direction and its own noise
    (task vectors that agree in part), or fresh random weights; tokenizer and template."""
    from transformers import AutoConfig, AutoModelForCausalLM

    arch, seed, parent, noise, template = MODELS[name]
    out = root / "models" / name
    extra = {"qwen2": dict(tie_word_embeddings=True), "qwen3": dict(tie_word_embeddings=True, head_dim=4),
             "gemma2": dict(tie_word_embeddings=True, head_dim=4, query_pre_attn_scalar=4, sliding_window=16),
             "phi3": dict(pad_token_id=0)}.get(arch, {})
    config = AutoConfig.for_model(arch, **{**LLAMA, **extra})
    torch.manual_seed(seed if parent is None else MODELS[parent][1])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed * 7919 + 1)
    shared = torch.Generator().manual_seed(4242)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(MODELS[parent or name][1])))
            if noise:
                scale = noise * p.std().clamp_min(1e-3)
                p.add_(scale * (torch.randn(p.shape, generator=shared) + torch.randn(p.shape, generator=g)) / 2)
    model.save_pretrained(out)
    save_tokenizer(out)
    if template and template[0] == "config":
        cfg = json.loads((out / "tokenizer_config.json").read_text())
        (out / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": template[1]}, indent=2))
    elif template:
        (out / "chat_template.jinja").write_text(template[1])


def build_token_model(root: Path) -> None:
    """tok_add: ft1's weights, its tokenizer with two added special tokens and two more
    embedding / lm_head rows (a fine-tune that added ChatML tokens)."""
    from safetensors.torch import load_file, save_file

    src, out = root / "models" / "ft1", root / "models" / "tok_add"
    shutil.copytree(src, out, dirs_exist_ok=True)
    tensors = load_file(out / "model.safetensors")
    g = torch.Generator().manual_seed(77)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        t = tensors[key]
        tensors[key] = torch.cat([t, 0.02 * torch.randn(len(ADDED_TOKENS), t.shape[1], generator=g)])
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "vocab_size": len(WORDS) + len(ADDED_TOKENS)}, indent=2))
    (out / "tokenizer_config.json").unlink()
    save_tokenizer(out, ADDED_TOKENS)


def build_lora(root: Path) -> None:
    """A PEFT LoRA adapter (rank 2 on q_proj and v_proj) trained on nothing: seeded A and B."""
    from safetensors.torch import save_file

    out = root / "models" / "lora_ft"
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(99)
    tensors = {}
    kv = LLAMA["hidden_size"] // LLAMA["num_attention_heads"] * LLAMA["num_key_value_heads"]
    for i in range(LLAMA["num_hidden_layers"]):
        for proj, rows in (("q_proj", LLAMA["hidden_size"]), ("v_proj", kv)):
            pre = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{pre}.lora_A.weight"] = 0.3 * torch.randn(2, LLAMA["hidden_size"], generator=g)
            tensors[f"{pre}.lora_B.weight"] = 0.3 * torch.randn(rows, 2, generator=g)
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 4, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "fan_in_fan_out": False,
        "base_model_name_or_path": "models/base", "inference_mode": True}, indent=2))


def build_models(work: Path) -> None:
    for name in MODELS:
        build_model(work, name)
    build_token_model(work)
    build_lora(work)


# ----------------------------------------------------------------------------- running

MERGEKIT_DRIVER = r"""
import contextlib, io, json, os, sys, time, traceback
from mergekit.scripts.run_yaml import main as merge_main
from mergekit.scripts.moe import main as moe_main
jobs = json.loads(sys.argv[1]); results = {}
for name, kind, cfg, out, cache in jobs:
    t0 = time.perf_counter()
    args = [cfg, out, "--random-seed", "0", "--no-write-model-card", "--quiet"]
    if kind == "merge":
        args += ["--lora-merge-cache", cache]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            (merge_main if kind == "merge" else moe_main).main(args, standalone_mode=False)
        ok, why = os.path.isdir(out), ""
    except BaseException as exc:
        ok = False
        why = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300] if str(exc) else type(exc).__name__
    results[name] = {"ok": ok, "error": why, "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps({name: results[name]}), flush=True)
json.dump(results, open(os.environ["RESULTS"], "w"), indent=1)
"""


def run_mergekit(work: Path, jobs: list[tuple], venv: Path) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "RESULTS": str(work / "mergekit_results.json"), "HOME": str(work)}
    return subprocess.Popen([str(venv / "bin" / "python"), "-c", MERGEKIT_DRIVER, json.dumps(jobs)], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(work / "mergekit.log", "w"))


def run_modelglue(work: Path, jobs: list[tuple]) -> dict:
    """Each recipe through the modelglue CLI, in this process (one import of torch)."""
    import contextlib
    import io
    import os

    from modelglue.cli import main

    torch.set_num_threads(1)
    results = {}
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for name, kind, cfg, out, _ in jobs:
            args = (["merge", cfg, out, "-q", "--seed", "0"] if kind == "merge" else ["mix", cfg, out, "--seed", "0"])
            err = io.StringIO()
            t0 = time.perf_counter()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    rc = main.main(args, standalone_mode=False)
                except SystemExit as exc:
                    rc = exc.code
                except Exception as exc:  # noqa: BLE001 - a crash is a result here
                    rc, _ = 1, err.write(f"error: {type(exc).__name__}: {exc}\n")
            lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("error:")]
            results[name] = {"ok": rc in (0, None) and Path(out).is_dir(), "seconds": round(time.perf_counter() - t0, 2),
                             "error": (errors[-1] if errors else (lines[-1] if lines else f"exit {rc}"))[:300]
                             if rc not in (0, None) else "",
                             "warnings": len([ln for ln in lines if ln.startswith("warning:")])}
    finally:
        os.chdir(cwd)
    return results


# ----------------------------------------------------------------------------- comparing

TOL = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (2.0 ** -7, 1e-6), torch.float16: (2.0 ** -10, 1e-6)}


def _tensors(out: Path, loaded: bool = False) -> dict[str, torch.Tensor]:
    """The tensors as stored, or (loaded) as transformers loads them: MoE experts stored
    one by one (Mixtral's legacy layout) and fused (transformers 5's) then compare."""
    from safetensors.torch import load_file

    if loaded:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
        return {k: v.detach() for k, v in model.state_dict().items()}
    tensors = {}
    for f in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def _vocab(out: Path) -> dict | None:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab(True) if (out / "tokenizer.json").is_file() else None


def compare(ours_dir: Path, theirs_dir: Path, randomized: bool, moe: bool, same_donor: bool) -> tuple[str, str, float]:
    """(verdict, reason, max abs diff): verdict is 'bit-identical', 'within tolerance',
    'statistical' or 'MISMATCH'. Tokenizer files are compared only where mergekit's
    tokenizer donor is determined (a base_model or tokenizer keys: without them it is the
    first model of a set, in hash order)."""
    ours, theirs = _tensors(ours_dir, moe), _tensors(theirs_dir, moe)
    missing = sorted(set(theirs) - set(ours))
    if missing:
        return "MISMATCH", f"{len(missing)} tensors missing, e.g. {missing[0]}", float("nan")
    extra = sorted(set(ours) - set(theirs))
    if extra:
        return "MISMATCH", f"{len(extra)} extra tensors, e.g. {extra[0]}", float("nan")
    worst, exact = 0.0, True
    for k, b in theirs.items():
        a = ours[k]
        if a.shape != b.shape or a.dtype != b.dtype:
            return "MISMATCH", f"{k}: {list(a.shape)} {a.dtype} vs mergekit's {list(b.shape)} {b.dtype}", float("nan")
        if torch.equal(a, b):
            continue
        exact = False
        diff = (a.double() - b.double()).abs()
        worst = max(worst, diff.max().item())
        if randomized:
            na, nb = a.double().norm().item(), b.double().norm().item()
            if abs(na - nb) > 0.05 * max(nb, 1e-12):
                return "MISMATCH", f"{k}: L2 norm {na:.4g} vs mergekit's {nb:.4g}", worst
            continue
        rtol, atol = TOL.get(b.dtype, (0.0, 0.0))
        if not bool((diff <= rtol * b.double().abs() + atol).all()):
            return "MISMATCH", f"{k}: max abs diff {diff.max().item():.3g}{_ulps(diff, b)}", worst
    problem = _compare_files(ours_dir, theirs_dir, same_donor)
    if problem:
        return "MISMATCH", problem, worst
    return ("bit-identical" if exact else "statistical" if randomized else "within tolerance"), "", worst


def _ulps(diff: torch.Tensor, ref: torch.Tensor) -> str:
    """How many units in the last place of ref's dtype the largest difference is (where ref != 0)."""
    mantissa = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}.get(ref.dtype)
    nonzero = ref != 0
    if mantissa is None or not bool(nonzero.any()):
        return ""
    ulp = torch.exp2(torch.floor(torch.log2(ref[nonzero].double().abs())) - mantissa)
    zeros = int((~nonzero & (diff > 0)).sum())
    return f" ({(diff[nonzero] / ulp).max().item():.0f} ulp" + (f"; {zeros} entries 0 in mergekit's, not in ours)"
                                                                   if zeros else ")")


def _compare_files(ours_dir: Path, theirs_dir: Path, same_donor: bool) -> str:
    a, b = (json.loads((d / "config.json").read_text()) for d in (ours_dir, theirs_dir))
    a, b = (c.get("text_config", c) for c in (a, b))
    for key in ("architectures", "num_hidden_layers", "vocab_size", "num_local_experts", "num_experts",
                "num_experts_per_tok"):
        if key in b and a.get(key) != b.get(key):
            return f"config.json {key}: {a.get(key)} vs mergekit's {b.get(key)}"
    if not same_donor:
        return ""
    va, vb = _vocab(ours_dir), _vocab(theirs_dir)
    if vb is not None and va != vb:
        return "tokenizer vocabulary differs" if va else "no tokenizer.json"
    ta, tb = (d / "chat_template.jinja" for d in (ours_dir, theirs_dir))
    if tb.is_file() and (not ta.is_file() or ta.read_bytes() != tb.read_bytes()):
        return "chat_template.jinja differs" if ta.is_file() else "no chat_template.jinja"
    return ""


# ----------------------------------------------------------------------------- report


def corpus(only: list[str]) -> list[tuple[str, str]]:
    """(name, kind) for each recipe of the corpus: 'moe' for mergekit-moe configs."""
    out = []
    for f in sorted(CORPUS.glob("*.yml")):
        if only and f.stem not in only:
            continue
        raw = yaml.safe_load(f.read_text())
        out.append((f.stem, "moe" if isinstance(raw, dict) and "experts" in raw else "merge"))
    return out


def report(rows: list[dict]) -> str:
    lines = []
    for kind, title in (("merge", "merge recipes (mergekit-yaml vs modelglue merge)"),
                        ("moe", "mergekit-moe configs (mergekit-moe vs modelglue mix CONFIG)")):
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        mk = [r for r in rs if r["mergekit"]]
        mg = [r for r in rs if r["modelglue"]]
        matched = [r for r in mk if r["verdict"] in ("bit-identical", "within tolerance", "statistical")]
        bit = [r for r in mk if r["verdict"] == "bit-identical"]
        lines += [f"### {title}", "",
                  f"{len(rs)} recipes; mergekit runs {len(mk)}; modelglue runs {len(mg)}; modelglue matches "
                  f"{len(matched)} of mergekit's {len(mk)} ({100 * len(matched) / max(1, len(mk)):.0f}%), "
                  f"{len(bit)} bit-identical.", "",
                  "| recipe | mergekit | modelglue | match | max abs diff | why not |", "|---|---|---|---|---|---|"]
        for r in rs:
            diff = "" if r["max_diff"] is None or r["max_diff"] != r["max_diff"] else f"{r['max_diff']:.2g}"
            lines.append(f"| {r['name']} | {'runs' if r['mergekit'] else 'fails'} | "
                         f"{'runs' if r['modelglue'] else 'fails'}"
                         f"{' (%d warnings)' % r['warnings'] if r.get('warnings') else ''} | {r['verdict']} | {diff} | "
                         f"{r['reason'].replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/modelglue-recipe-compat"))
    ap.add_argument("--only", default="", help="comma-separated recipe names")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the report here")
    ap.add_argument("--mergekit-venv", type=Path, default=MERGEKIT_VENV)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    work: Path = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "recipes").mkdir(parents=True)
    build_models(work)
    print(f"stand-in models built in {time.perf_counter() - t0:.0f}s", flush=True)
    recipes = corpus([s for s in args.only.split(",") if s])
    for name, _ in recipes:
        shutil.copyfile(CORPUS / f"{name}.yml", work / "recipes" / f"{name}.yml")
    jobs = [(n, k, f"recipes/{n}.yml", f"out_mergekit/{n}", str(work / "lora_cache")) for n, k in recipes]
    proc = run_mergekit(work, jobs, args.mergekit_venv)
    ours = run_modelglue(work, [(n, k, f"recipes/{n}.yml", str(work / "out_modelglue" / n), None) for n, k in recipes])
    print(f"modelglue done at {time.perf_counter() - t0:.0f}s", flush=True)
    proc.wait(timeout=1800)
    results_path = work / "mergekit_results.json"
    theirs = json.loads(results_path.read_text()) if results_path.is_file() else {}
    print(f"mergekit done at {time.perf_counter() - t0:.0f}s", flush=True)
    rows = []
    for name, kind in recipes:
        mk, mg = theirs.get(name, {"ok": False, "error": "driver died"}), ours[name]
        row = {"name": name, "kind": kind, "mergekit": mk["ok"], "modelglue": mg["ok"], "warnings": mg.get("warnings", 0),
               "verdict": "", "reason": "", "max_diff": None}
        if mk["ok"] and mg["ok"]:
            raw = yaml.safe_load((CORPUS / f"{name}.yml").read_text())
            same_donor = kind == "moe" or any(raw.get(k) for k in ("base_model", "tokenizer_source", "tokenizer", "chat_template"))
            row["verdict"], row["reason"], row["max_diff"] = compare(
                work / "out_modelglue" / name, work / "out_mergekit" / name,
                randomized=name.startswith("random_"), moe=kind == "moe", same_donor=same_donor)
        elif mk["ok"]:
            row["verdict"], row["reason"] = "-", f"modelglue: {mg['error']}"
        elif mg["ok"]:
            row["verdict"], row["reason"] = "-", f"mergekit: {mk['error']}"
        else:
            row["verdict"], row["reason"] = "-", f"both fail; mergekit: {mk['error']}; modelglue: {mg['error']}"
        rows.append(row)
    text = report(rows) + f"\nTotal wall time {time.perf_counter() - t0:.0f}s (work dir {work}).\n"
    print(text)
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
