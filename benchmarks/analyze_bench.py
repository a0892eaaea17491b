"""Benchmark `modelglue zoo analyze` on a zoo of ~0.5B-parameter checkpoints.

    .venv/bin/python benchmarks/analyze_bench.py                # 8 float32 models (~2.5 GB each)
    .venv/bin/python benchmarks/analyze_bench.py --n 4 --dtype bfloat16 --cleanup

Generates seeded random Llama checkpoints (hidden 896, intermediate 4864, 24 layers,
vocab 151936, untied: 0.63B parameters) under bench-out/analyze-zoo/ (git-ignored),
cached between runs. The zoo has two families like a real one: base A with gentle
fine-tunes (base + 1% noise) and one harsh fine-tune (50%), and base B (another seed)
with gentle fine-tunes. Each model is written one tensor at a time, so generation never
holds a model in memory.

The analysis runs in a fresh subprocess after the checkpoint files are evicted from the
page cache (posix_fadvise DONTNEED, no root needed), and reports wall time, bytes read
per second and the peak RSS of that subprocess (resource.getrusage).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CONFIG = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
              num_key_value_heads=2, head_dim=64, vocab_size=151936)


def tensor_specs(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    specs = [("model.embed_tokens.weight", (v, h))]
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}."
        specs += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                  (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                  (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                  (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                  (p + "mlp.down_proj.weight", (h, i))]
    specs += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return specs


def zoo_plan(n: int) -> list[dict]:
    """n models: A base, A gentle..., A harsh, B base, B gentle... (A gets the larger half)."""
    n_a = max(1, (n + 1) // 2 + (1 if n >= 6 else 0))
    plan = [{"name": "a_base", "family": 0, "noise": 0.0, "seed": 0}]
    for j in range(1, n_a):
        harsh = j == n_a - 1 and n_a >= 4
        plan.append({"name": "a_harsh" if harsh else f"a_ft{j}", "family": 0, "noise": 0.5 if harsh else 0.01,
                     "seed": 100 + j})
    for j in range(n - n_a):
        plan.append({"name": "b_base" if j == 0 else f"b_ft{j}", "family": 1, "noise": 0.0 if j == 0 else 0.01,
                     "seed": 200 + j})
    return plan


def generate(out: Path, entry: dict, dtype_name: str) -> None:
    import torch

    from modelglue.io import ShardedWriter, TensorSpec

    dtype = getattr(torch, dtype_name)
    done = out / ".complete"
    tag = json.dumps({"entry": entry, "dtype": dtype_name, "config": CONFIG}, sort_keys=True)
    if done.exists() and done.read_text() == tag:
        return
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    specs = tensor_specs(CONFIG)
    writer = ShardedWriter(out, [TensorSpec(n, s, dtype) for n, s in specs], shard_size=1_000_000_000)
    for idx, (name, shape) in enumerate(specs):
        g = torch.Generator().manual_seed(entry["family"] * 1_000_003 + idx)
        if name.endswith("norm.weight"):
            t = torch.ones(shape) + 0.05 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g).mul_(0.02)
        if entry["noise"]:
            g2 = torch.Generator().manual_seed(entry["seed"] * 1_000_003 + idx)
            t.add_(torch.randn(shape, generator=g2).mul_(entry["noise"] * float(t.pow(2).mean().sqrt())))
        writer.write(name, t.to(dtype))
        del t
    writer.close()
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "tie_word_embeddings": False,
           "torch_dtype": dtype_name, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, **CONFIG}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    done.write_text(tag)


def evict(paths: list[Path]) -> None:
    """Drop the checkpoint files from the page cache so the analysis reads from disk."""
    for d in paths:
        for f in d.glob("*.safetensors"):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from modelglue.zoo import analyze_zoo
from modelglue.zoo.report import summary_table
dirs = json.loads(sys.argv[2]); out = sys.argv[3]
t = time.perf_counter()
res = analyze_zoo(dirs, out_dir=out, method=sys.argv[4])
wall = time.perf_counter() - t
print(summary_table(res), file=sys.stderr)
print(json.dumps({"wall_s": wall, "bytes_read": sum(s.bytes_read for s in res.similarity if s),
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime,
                  "load_avg": __import__("os").getloadavg(),
                  "clusters": [[p.rsplit('/', 1)[-1] for p in c] for c in res.cluster_paths]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=8, help="number of checkpoints (default 8)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--cache", type=Path, default=ROOT / "bench-out" / "analyze-zoo")
    ap.add_argument("--method", default="hierarchical", choices=["hierarchical", "paper"])
    ap.add_argument("--no-evict", action="store_true", help="keep files in the page cache (warm run)")
    ap.add_argument("--cleanup", action="store_true", help="delete the generated checkpoints afterwards")
    args = ap.parse_args()

    plan = zoo_plan(args.n)
    zoo_dir = args.cache / args.dtype
    need = args.n * sum(__import__("math").prod(s) for _, s in tensor_specs(CONFIG)) * (4 if args.dtype == "float32" else 2)
    free = shutil.disk_usage(args.cache.parent if args.cache.parent.exists() else ROOT).free
    print(f"zoo: {args.n} x {need / args.n / 1e9:.2f} GB ({args.dtype}); {free / 1e9:.0f} GB free", flush=True)
    t0 = time.perf_counter()
    dirs = []
    for e in plan:
        d = zoo_dir / e["name"]
        generate(d, e, args.dtype)
        dirs.append(d)
        print(f"  {e['name']}: ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not args.no_evict:
        evict(dirs)
    out = args.cache / f"analysis-{args.dtype}-{args.n}"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "src"), json.dumps([str(d) for d in dirs]),
                           str(out), args.method], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-4000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    table = "\n".join(ln for ln in proc.stderr.splitlines() if "it/s" not in ln and "B/s" not in ln)
    print(table)
    gb = res["bytes_read"] / 1e9
    print(f"\nanalyzed {args.n} checkpoints ({gb:.2f} GB, {args.dtype}, {'warm' if args.no_evict else 'cold'} cache) "
          f"in {res['wall_s']:.1f} s wall: {gb / res['wall_s']:.2f} GB/s read; "
          f"peak RSS {res['peak_rss_kb'] / 1e6:.2f} GB; CPU {res['cpu_s']:.0f} s (user+sys, whole process incl. imports); "
          f"load average at the end {res['load_avg'][0]:.1f} on {os.cpu_count()} cores; clusters {res['clusters']}")
    if args.cleanup:
        shutil.rmtree(zoo_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
