#!/usr/bin/env python3
"""Benchmark `modelglue merge` against mergekit 0.1.5 on random Llama checkpoints.

    python benchmarks/merge_bench.py                       # 0.5B float32, the five recipes below
    python benchmarks/merge_bench.py --size tiny --out bench-out/smoke      # seconds: a smoke test
    python benchmarks/merge_bench.py --methods ties@index,linear --tools modelglue

Recipes (--methods, default linear,ties,dare_ties,slerp,model_stock); `METHOD@index`
runs modelglue with `tie_order: index` (its O(n) tie-break at the trim cut) against
mergekit's plain METHOD recipe.

Steps:
0. installs mergekit 0.1.5 into its own venv (.venv-mergekit, benchmarks/setup_mergekit_venv.sh)
   if it is not there yet;
1. builds three random Llama checkpoints (base, ft1, ft2; a fine-tune is base + seeded
   noise) once, under OUT/models-<size>-<dtype>/, shard by shard with a seeded generator
   (peak memory about three shards, not three models), and reuses them afterwards;
2. measures the machine's I/O floor in the same run: reading the inputs of each recipe
   (cold when the page cache can be dropped, else warm, and says which) and writing an
   output-sized file with fsync;
3. for each method writes a mergekit recipe (absolute paths) and runs
   `.venv/bin/modelglue merge` and `.venv-mergekit/bin/mergekit-yaml` in subprocesses,
   each through a small python wrapper that reports the child's wall time, user+sys CPU
   time and peak RSS (getrusage(RUSAGE_CHILDREN) of a wrapper with exactly one child);
4. compares the two outputs tensor by tensor (max abs diff; deterministic methods only),
   deletes both outputs, and prints a markdown table, also written to OUT/results.md
   (raw figures in OUT/results.json).

The page cache is put in the same state for both tools before every run: dropped
(--cache cold, needs root) or filled by reading the inputs once (--cache warm, default).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELGLUE = ROOT / ".venv" / "bin" / "modelglue"
MERGEKIT = ROOT / ".venv-mergekit" / "bin" / "mergekit-yaml"

# Llama shapes. 0.5b: Qwen2.5-0.5B's shapes as an untied Llama (about 0.63B parameters).
PRESETS = {
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
    "small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=32000),
    "small-deep": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=32, num_attention_heads=8,
                       num_key_value_heads=4, vocab_size=32000),  # `small` at 4x the depth: RSS must not grow
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936),
    # Llama-2-7B's shapes (6.74B parameters; its largest tensors, embed and lm_head, 131M entries)
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
}
RANDOMIZED = {"dare_ties", "dare_linear", "della", "della_linear"}  # outputs not compared (different generators)
SHARD_BYTES = 1 << 30


# ----------------------------------------------------------------------------- checkpoints


def llama_config(size: str, dtype: str) -> dict:
    p = PRESETS[size]
    return dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=10000.0,
                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, torch_dtype=dtype,
                attention_bias=False, mlp_bias=False, initializer_range=0.02, use_cache=True, **p)


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (v, h))]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


def build_checkpoints(dest: Path, size: str, dtype: str, seed: int = 0, device: str = "cpu",
                      rng: str = "draw") -> list[Path]:
    """base, ft1, ft2 under dest/; skipped when dest/.complete matches.

    device: where the random numbers are drawn (cuda is much faster for big presets;
    it gives other numbers than cpu, which the stamp records). rng 'pool' (_pool_draw):
    every matrix is a window into pools of 2^27 entries drawn once, so that a 7B build
    is bound by the disk, not by drawing 27 billion normals on two cores."""
    import torch
    from safetensors.torch import save_file

    names = ["base", "ft1", "ft2"]
    dirs = [dest / n for n in names]
    stamp = dest / ".complete"
    want = json.dumps({"size": size, "dtype": dtype, "seed": seed, "preset": PRESETS[size],
                       "rng": "pool-v2" if rng == "pool" else "cpu" if device == "cpu" else "cuda"}, sort_keys=True)
    if stamp.exists() and stamp.read_text() == want:
        return dirs
    if dest.exists():
        shutil.rmtree(dest)
    cfg = llama_config(size, dtype)
    tdtype = getattr(torch, dtype)
    esize = torch.tensor([], dtype=tdtype).element_size()
    shapes = tensor_shapes(cfg)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    acc = 0
    for name, shape in shapes:
        nbytes = esize
        for s in shape:
            nbytes *= s
        if shards[-1] and acc + nbytes > SHARD_BYTES:
            shards.append([])
            acc = 0
        shards[-1].append((name, shape))
        acc += nbytes
    for d in dirs:
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gens = [torch.Generator(device=device).manual_seed(seed * 1000 + k) for k in range(4)]  # base, shared, ft1, ft2
    make = _pool_draw(gens, device, tdtype) if rng == "pool" else None
    weight_map: dict[str, str] = {}
    t0 = time.perf_counter()
    for si, shard in enumerate(shards):
        fname = f"model-{si + 1:05d}-of-{len(shards):05d}.safetensors"
        parts: list[dict] = [{}, {}, {}]
        for name, shape in shard:
            weight_map[name] = fname
            if make is not None:
                for k, t in enumerate(make(shape)):
                    parts[k][name] = t.cpu()
                continue
            if len(shape) == 1:
                base = 1.0 + 0.05 * torch.randn(shape, generator=gens[0], device=device)
            else:
                base = 0.02 * torch.randn(shape, generator=gens[0], device=device)
            shared = torch.randn(shape, generator=gens[1], device=device)
            parts[0][name] = base.to(tdtype).cpu()
            for k in (1, 2):
                noise = torch.randn(shape, generator=gens[1 + k], device=device)
                # fine-tune: a shared direction plus its own noise, ~1-2% of the weights' scale
                ft = base + 0.0004 * (shared + noise) if len(shape) > 1 else base + 0.002 * (shared + noise)
                parts[k][name] = ft.to(tdtype).cpu()
                del noise, ft
            del base, shared
        for d, part in zip(dirs, parts):
            save_file(part, str(d / fname), metadata={"format": "pt"})
        del parts
        print(f"  built shard {si + 1}/{len(shards)} ({time.perf_counter() - t0:.0f}s)", flush=True)
    index = {"metadata": {"total_size": sum(esize * _numel(s) for _, s in shapes)}, "weight_map": weight_map}
    for d in dirs:
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
    stamp.write_text(want)
    return dirs


POOL = 1 << 27


def _pool_draw(gens, device, dtype):
    """make(name, shape) -> (base, ft1, ft2) for rng 'pool': matrices are windows at a
    seeded offset (wrapping around) into pools of 2^27 entries drawn once, already in
    the checkpoint dtype (base: 0.02 N; each fine-tune's difference: 0.0004 (shared +
    own) N, the same construction as 'draw'); one copy and two adds per matrix."""
    import torch

    def normal(k):
        return torch.randn(POOL, generator=gens[k], device=device)

    base_pool = (0.02 * normal(0)).to(dtype)
    shared = normal(1)
    delta_pools = [(0.0004 * (shared + normal(1 + k))).to(dtype) for k in (1, 2)]
    del shared

    def window(pool, start: int, n: int):
        if start + n <= POOL:
            return pool[start:start + n]
        parts, left = [], n
        while left:
            take = min(left, POOL - start)
            parts.append(pool[start:start + take])
            left, start = left - take, 0
        return torch.cat(parts)

    def make(shape):
        n = _numel(shape)
        if len(shape) == 1:  # norms: small, drawn as 'draw' does
            base = 1.0 + 0.05 * torch.randn(shape, generator=gens[0], device=device)
            fts = [base + 0.002 * (torch.randn(shape, generator=gens[1], device=device)
                                   + torch.randn(shape, generator=gens[1 + k], device=device)) for k in (1, 2)]
            return [t.to(dtype) for t in (base, *fts)]
        start = int(torch.randint(POOL, (1,), generator=gens[0], device=device))
        base = window(base_pool, start, n).reshape(shape)
        return [base.clone(), *((base + window(d, start, n).reshape(shape)) for d in delta_pools)]

    return make


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def weight_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.glob("*.safetensors"))


# ----------------------------------------------------------------------------- recipes


def recipe_for(method: str, base: Path, ft1: Path, ft2: Path, dtype: str) -> dict:
    """mergekit's recipe for `method` on the three checkpoints (every registered method)."""
    b, f1, f2 = str(base), str(ft1), str(ft2)
    two = [{"model": f1}, {"model": f2}]
    weighted = [{"model": f1, "parameters": {"weight": 0.6}}, {"model": f2, "parameters": {"weight": 0.4}}]
    if method == "linear":
        r = {"merge_method": "linear", "models": [
            {"model": b, "parameters": {"weight": 0.2}},
            {"model": f1, "parameters": {"weight": 0.4}},
            {"model": f2, "parameters": {"weight": 0.4}}]}
    elif method in ("ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"):
        extra = {"gamma": 0.01} if method.startswith("breadcrumbs") else {"epsilon": 0.1} if "della" in method else {}
        r = {"merge_method": method, "base_model": b, "models": [
            {"model": f1, "parameters": {"density": 0.5, "weight": 0.5, **extra}},
            {"model": f2, "parameters": {"density": 0.5, "weight": 0.5, **extra}}]}
    elif method == "task_arithmetic":
        r = {"merge_method": method, "base_model": b, "models": [
            {"model": f1, "parameters": {"weight": 0.5}},
            {"model": f2, "parameters": {"weight": 0.5}}]}
    elif method == "slerp":
        r = {"merge_method": "slerp", "base_model": f1, "models": two, "parameters": {"t": 0.5}}
    elif method in ("model_stock", "sce", "ram", "ramplus_tl"):
        params = {"ram": {"epsilon": 0.0002}, "ramplus_tl": {"epsilon": 0.0002, "r": 0.5, "alpha": 0.5}}
        r = {"merge_method": method, "base_model": b, "models": two, "parameters": params.get(method, {})}
    elif method in ("nuslerp", "multislerp"):
        r = {"merge_method": method, "models": weighted}
    elif method == "karcher":
        r = {"merge_method": method, "models": [{"model": b}, *two]}
    elif method == "nearswap":
        r = {"merge_method": method, "base_model": b, "models": [{"model": f1}], "parameters": {"t": 0.0005}}
    elif method == "arcee_fusion":
        r = {"merge_method": method, "base_model": b, "models": [{"model": f1}]}
    elif method == "passthrough":
        r = {"merge_method": method, "models": [{"model": f1}]}
    else:
        raise SystemExit(f"unknown method {method!r}")
    if not r.get("parameters"):
        r.pop("parameters", None)
    r["dtype"] = dtype
    return r


def recipe_inputs(r: dict) -> list[Path]:
    paths = [m["model"] for m in r["models"]]
    if r.get("base_model"):
        paths.append(r["base_model"])
    return [Path(p) for p in dict.fromkeys(paths)]


# ----------------------------------------------------------------------------- measuring

WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.run(sys.argv[2:], stdout=open(sys.argv[1], "w"), stderr=subprocess.STDOUT)
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": p.returncode, "wall_s": wall, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
                  "maxrss_bytes": ru.ru_maxrss * 1024}))
"""


def measure(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run cmd in a wrapper that has it as its only child; its rusage is the child's."""
    p = subprocess.run([sys.executable, "-c", WRAPPER, str(log), *cmd], capture_output=True, text=True,
                       env=env, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def read_files(paths: list[Path]) -> tuple[int, float]:
    """Read every weight file once; returns (bytes, seconds)."""
    n, t0 = 0, time.perf_counter()
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    for d in paths:
        for f in sorted(d.glob("*.safetensors")):
            with open(f, "rb", buffering=0) as fh:
                while True:
                    k = fh.readinto(view)
                    if not k:
                        break
                    n += k
    return n, time.perf_counter() - t0


def write_floor(dest_dir: Path, nbytes: int) -> float:
    """Seconds to write nbytes (fresh file, 16 MiB chunks) and fsync it."""
    chunk = os.urandom(1 << 20) * 16
    fd, path = tempfile.mkstemp(dir=dest_dir, prefix="io-floor-")
    t0 = time.perf_counter()
    try:
        left = nbytes
        while left > 0:
            k = os.write(fd, chunk[: min(left, len(chunk))])
            left -= k
        os.fsync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)


def prepare_cache(mode: str, inputs: list[Path]) -> str:
    if mode == "cold":
        if drop_caches():
            return "cold"
        read_files(inputs)
        return "warm (drop_caches failed)"
    read_files(inputs)
    return "warm"


def ulp_distance(a, b):
    """Elementwise distance of two 16-bit float tensors in representable steps."""
    import torch

    def key(t):
        i = t.contiguous().view(torch.int16).to(torch.int32)
        return torch.where(i < 0, -(i & 0x7FFF), i)  # monotonic; +0 and -0 both 0

    return (key(a) - key(b)).abs()


def compare_outputs(a: Path, b: Path) -> dict:
    """Max abs diff (and, in 16 bits, max ulp distance) over all tensors of two output
    dirs (streamed, tensor by tensor)."""
    import torch
    from modelglue.io import Checkpoint

    ca, cb = Checkpoint(a), Checkpoint(b)
    ia, ib = set(ca.names()), set(cb.names())
    res = {"same_names": ia == ib, "missing": sorted(ib - ia)[:5],
           "extra": sorted(ia - ib)[:5], "max_abs_diff": 0.0, "worst": None, "max_ulps": None,
           "tensors_differing": 0, "elements_differing": 0, "tensors": 0}
    for k in sorted(ia & ib):
        x, y = ca.get(k), cb.get(k)
        if x.shape != y.shape:
            res["shape_mismatch"] = k
            continue
        res["tensors"] += 1
        diff = (x.double() - y.double()).abs()
        d = diff.max().item() if x.numel() else 0.0
        if x.dtype == y.dtype and x.dtype in (torch.bfloat16, torch.float16) and x.numel():
            res["max_ulps"] = max(res.get("max_ulps") or 0, int(ulp_distance(x, y).max()))
        if d > 1e-6:
            res["tensors_differing"] += 1
            res["elements_differing"] += int((diff > 1e-6).sum())
        del diff
        if d > res["max_abs_diff"]:
            res["max_abs_diff"], res["worst"] = d, k
    return res


# ----------------------------------------------------------------------------- report


def machine_description() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPU cores ({cpu}), {mem}, {platform.system()} {platform.release()}, load average at start {load}"


def fmt_gb(b: float) -> str:
    return f"{b / 1e9:.2f}"


def render(results: dict) -> str:
    L = []
    L.append(f"# modelglue merge vs mergekit {results['mergekit_version']}\n")
    L.append(f"- command: `{results['command']}`")
    L.append(f"- when: {results['when']}")
    L.append(f"- machine: {results['machine']}")
    L.append(f"- checkpoints: 3 random Llama ({results['size']}, {results['dtype']}, "
             f"{results['params'] / 1e6:.1f}M parameters, {fmt_gb(results['model_bytes'])} GB each)")
    L.append(f"- page cache before each run: {results['cache']}")
    L.append(f"- threads: modelglue {results['threads'] or 'default'}, mergekit default; "
             f"mergekit options: `{results.get('mergekit_args', '')}`\n")
    L.append("## I/O floor (same run)\n")
    io = results["io"]
    for k, v in io.items():
        L.append(f"- {k}: {v}")
    L.append("")
    L.append("## Runs\n")
    L.append("| method | tool | wall s | CPU s (user+sys) | peak RSS GB | read+written GB | throughput GB/s | I/O floor s | wall / floor | load avg before/after |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results["runs"]:
        if r.get("rc", 0) != 0:
            L.append(f"| {r['method']} | {r['tool']} | failed (rc {r['rc']}, see {r['log']}) | | | | | | | |")
            continue
        L.append(f"| {r['method']} | {r['tool']} | {r['wall_s']:.1f} | {r['user_s'] + r['sys_s']:.1f} | "
                 f"{fmt_gb(r['maxrss_bytes'])} | {fmt_gb(r['bytes_read'] + r['bytes_written'])} | "
                 f"{(r['bytes_read'] + r['bytes_written']) / r['wall_s'] / 1e9:.2f} | {r['floor_s']:.1f} | "
                 f"{r['wall_s'] / r['floor_s']:.1f} | {r.get('load1_before', '?')} / {r.get('load1_after', '?')} |")
    L.append("")
    L.append("## Ratios (mergekit / modelglue; > 1 means modelglue is better)\n")
    L.append("| method | wall | CPU | peak RSS | modelglue wall / I/O floor | max abs diff of outputs |")
    L.append("|---|---:|---:|---:|---:|---|")
    for m, cmp in results["compare"].items():
        mg = next((r for r in results["runs"] if r["method"] == m and r["tool"] == "modelglue" and r.get("rc") == 0), None)
        mk = next((r for r in results["runs"] if r["method"] == m and r["tool"] == "mergekit" and r.get("rc") == 0), None)
        if not (mg and mk):
            L.append(f"| {m} | n/a | n/a | n/a | {'%.1f' % (mg['wall_s'] / mg['floor_s']) if mg else 'n/a'} | {cmp} |")
            continue
        L.append(f"| {m} | {mk['wall_s'] / mg['wall_s']:.2f} | "
                 f"{(mk['user_s'] + mk['sys_s']) / max(1e-9, mg['user_s'] + mg['sys_s']):.2f} | "
                 f"{mk['maxrss_bytes'] / mg['maxrss_bytes']:.2f} | {mg['wall_s'] / mg['floor_s']:.1f} | {cmp} |")
    L.append("")
    L.append("I/O floor of a run = reading its inputs once (in the same cache state as the run) + writing "
             "an output-sized file with fsync. Throughput = (input bytes + output bytes) / wall. "
             "Peak RSS = ru_maxrss of the child process.")
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="0.5b", help=f"one or more of {', '.join(PRESETS)}, comma-separated, "
                    "run in that order (each size's checkpoints are built when its turn comes)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--methods", default="linear,ties,dare_ties,slerp,model_stock")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--cache", choices=["warm", "cold"], default="warm")
    ap.add_argument("--threads", type=int, default=None, help="modelglue --threads (mergekit: -j the same)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool and method; the fastest is kept")
    ap.add_argument("--tools", default="modelglue,mergekit")
    ap.add_argument("--modelglue", type=Path, default=MODELGLUE)
    ap.add_argument("--mergekit", type=Path, default=MERGEKIT)
    ap.add_argument("--mergekit-args", default="--lazy-unpickle --out-shard-size 1B",
                    help="extra mergekit-yaml options: its low-memory settings by default (a shard of 1B "
                         "parameters is held in memory until written; its default is 5B)")
    ap.add_argument("--rng", choices=["draw", "pool"], default="draw",
                    help="checkpoint construction (build_checkpoints): 'pool' for big sizes")
    ap.add_argument("--delete-models", action="store_true", help="delete each size's checkpoints after its runs")
    ap.add_argument("--discard-output", action="store_true",
                    help="truncate output shards to nothing twice a second while they are written: for a "
                         "disk that cannot hold the inputs and an output; outputs are then not compared")
    ap.add_argument("--no-compare", action="store_true", help="skip the tensor comparison of outputs")
    args = ap.parse_args(argv)

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    sizes = [x for x in args.size.split(",") if x]
    unknown = [x for x in sizes if x not in PRESETS]
    if unknown:
        ap.error(f"unknown --size {unknown}; choose from {', '.join(PRESETS)}")
    tools = [t for t in args.tools.split(",") if t]
    if "mergekit" in tools and not args.mergekit.exists() and args.mergekit == MERGEKIT:
        print("installing mergekit 0.1.5 into .venv-mergekit ...", flush=True)
        subprocess.run(["bash", str(ROOT / "benchmarks" / "setup_mergekit_venv.sh")], check=True)
    for t, exe in (("modelglue", args.modelglue), ("mergekit", args.mergekit)):
        if t in tools and not exe.exists():
            print(f"{t} not found at {exe}" + (" (bash benchmarks/setup_mergekit_venv.sh)" if t == "mergekit" else ""),
                  file=sys.stderr)
            return 2
    command = " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv)
    ok = True
    for size in sizes:
        results = run_size(args, size, tools, out)
        results["command"] = command
        suffix = "" if len(sizes) == 1 else f"-{size}"
        (out / f"results{suffix}.json").write_text(json.dumps(results, indent=1) + "\n")
        md = render(results)
        (out / f"results{suffix}.md").write_text(md)
        print()
        print(md, flush=True)
        ok = ok and all(r.get("rc") == 0 for r in results["runs"])
    return 0 if ok else 1


def run_size(args: argparse.Namespace, size: str, tools: list[str], out: Path) -> dict:
    """Build (or reuse) one size's checkpoints, measure the I/O floor and run every method."""
    machine = machine_description()
    print(f"machine: {machine}")
    mdir = out / (f"models-{size}-{args.dtype}" + ("-pool" if args.rng == "pool" else ""))
    t0 = time.perf_counter()
    base, ft1, ft2 = build_checkpoints(mdir, size, args.dtype, rng=args.rng)
    print(f"checkpoints ready in {mdir} ({time.perf_counter() - t0:.0f}s)")
    model_bytes = weight_bytes(base)
    cfg = llama_config(size, args.dtype)
    shapes = tensor_shapes(cfg)
    params = sum(_numel(s) for _, s in shapes)
    largest = max(_numel(s) for _, s in shapes)

    mk_version = "?"
    if args.mergekit.exists():
        v = subprocess.run([str(args.mergekit.parent / "python"), "-c",
                            "import importlib.metadata as m; print(m.version('mergekit'))"],
                           capture_output=True, text=True)
        mk_version = v.stdout.strip() or "?"
    io, read_rate, write_rate = io_floor(out, [base, ft1, ft2], model_bytes)
    runs, compare = [], {}
    work = out / "work"
    work.mkdir(exist_ok=True)
    for method in [m for m in args.methods.split(",") if m]:
        r_runs, r_cmp = run_method(args, method, tools, out, work, (base, ft1, ft2), read_rate, write_rate)
        runs += r_runs
        compare[method] = r_cmp
        print(f"  [{method}] outputs: {r_cmp}", flush=True)
    if args.delete_models:
        shutil.rmtree(mdir)
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine, "size": size, "dtype": args.dtype, "params": params, "largest_tensor": largest,
        "model_bytes": model_bytes, "cache": args.cache, "threads": args.threads, "rng": args.rng,
        "mergekit_args": args.mergekit_args, "mergekit_version": mk_version, "io": io, "runs": runs,
        "compare": compare,
    }


def io_floor(out: Path, models: list[Path], model_bytes: int) -> tuple[dict, dict, float]:
    """Reads of 1 and 3 checkpoints (cold when possible, and warm), a synced write of one."""
    io: dict[str, str] = {}
    cold = drop_caches()
    n, dt = read_files(models[:1])
    io["read 1 checkpoint " + ("cold" if cold else "warm (cannot drop caches)")] = f"{fmt_gb(n)} GB in {dt:.2f} s = {n / dt / 1e9:.2f} GB/s"
    n, dt = read_files(models[:1])
    io["read 1 checkpoint warm"] = f"{fmt_gb(n)} GB in {dt:.2f} s = {n / dt / 1e9:.2f} GB/s"
    wdt = write_floor(out, model_bytes)
    io["write 1 checkpoint + fsync"] = f"{fmt_gb(model_bytes)} GB in {wdt:.2f} s = {model_bytes / wdt / 1e9:.2f} GB/s"
    read_rate = {"cold": None, "warm": None}
    for mode in ("cold", "warm"):
        if mode == "cold" and not cold:
            continue
        if mode == "cold":
            drop_caches()
        else:
            read_files(models)
        n, dt = read_files(models)
        read_rate[mode] = n / dt
        io[f"read 3 checkpoints {mode}"] = f"{fmt_gb(n)} GB in {dt:.2f} s = {n / dt / 1e9:.2f} GB/s"
    print("I/O floor:", json.dumps(io, indent=1))
    return io, read_rate, model_bytes / wdt


def run_method(args: argparse.Namespace, method: str, tools: list[str], out: Path, work: Path,
               models: tuple[Path, Path, Path], read_rate: dict, write_rate: float) -> tuple[list[dict], str]:
    """Both tools on one recipe; `METHOD@index` adds tie_order: index, `METHOD@exact`
    runs modelglue with --exact (16-bit arithmetic as mergekit does it)."""
    import yaml

    plain, _, variant = method.partition("@")
    r = recipe_for(plain, *models, args.dtype)
    rpath = out / f"recipe-{plain}.yml"
    rpath.write_text(yaml.safe_dump(r, sort_keys=False))
    mg_rpath, mg_flags = rpath, []
    if variant == "index":  # modelglue's own parameter; mergekit runs the plain recipe
        mg_rpath = out / f"recipe-{plain}-{variant}.yml"
        mg_rpath.write_text(yaml.safe_dump({**r, "parameters": {**r.get("parameters", {}), "tie_order": "index"}},
                                           sort_keys=False))
    elif variant == "exact":
        mg_flags = ["--exact"]
    elif variant:
        raise SystemExit(f"unknown variant {method!r} (METHOD@index or METHOD@exact)")
    inputs = recipe_inputs(r)
    in_bytes = sum(weight_bytes(p) for p in inputs)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    runs, outdirs = [], {}
    for tool in tools:
        best = None
        odir = work / f"{method}-{tool}"
        for rep in range(args.repeat):
            if odir.exists():
                shutil.rmtree(odir)
            if tool == "modelglue":
                cmd = [str(args.modelglue), "merge", str(mg_rpath), str(odir), "--device", "cpu", *mg_flags]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
            else:
                cmd = [str(args.mergekit), str(rpath), str(odir), "--no-copy-tokenizer",
                       "--no-write-model-card", "--quiet", "--random-seed", "0", *args.mergekit_args.split()]
                if args.threads:
                    cmd += ["-j", str(args.threads)]
            cache_state = prepare_cache(args.cache, inputs)
            log = out / f"log-{method}-{tool}.txt"
            print(f"[{method}] {tool} run {rep + 1}/{args.repeat} ({cache_state} cache) ...", flush=True)
            load1 = os.getloadavg()[0]
            stop = _discard_outputs(work) if args.discard_output else None
            m = measure(cmd, log, env)
            if stop is not None:
                stop()
            m.update(method=method, tool=tool, cache=cache_state, log=str(log.relative_to(out)),
                     load1_before=round(load1, 1), load1_after=round(os.getloadavg()[0], 1))
            if m["rc"] == 0:
                m["bytes_read"] = in_bytes
                m["bytes_written"] = weight_bytes(models[0]) if args.discard_output else weight_bytes(odir)
                rr = read_rate["cold"] if cache_state == "cold" else read_rate["warm"]
                m["floor_s"] = in_bytes / rr + m["bytes_written"] / write_rate
                print(f"    wall {m['wall_s']:.1f}s cpu {m['user_s'] + m['sys_s']:.1f}s "
                      f"rss {fmt_gb(m['maxrss_bytes'])} GB", flush=True)
            else:
                print(f"    FAILED rc={m['rc']}: {log.read_text()[-800:]}", flush=True)
            if best is None or (m["rc"] == 0 and (best["rc"] != 0 or m["wall_s"] < best["wall_s"])):
                best = m
            if rep + 1 < args.repeat and odir.exists():
                shutil.rmtree(odir)
        runs.append(best)
        outdirs[tool] = odir
    cmp = "not compared"
    if len(tools) == 2 and all(d.exists() for d in outdirs.values()) and not args.no_compare and not args.discard_output:
        cmp = describe_comparison(plain, compare_outputs(outdirs["modelglue"], outdirs["mergekit"]))
    for d in outdirs.values():
        if d.exists():
            shutil.rmtree(d)
    return runs, cmp


def _discard_outputs(work: Path):
    """Truncate every *.safetensors under work/ to nothing twice a second until the
    returned stop() is called: a writer still writing goes on at its offset (into a
    sparse file), and the files stay for mergekit's final renames."""
    import threading

    done = threading.Event()

    def loop() -> None:
        while not done.wait(0.5):
            for f in work.rglob("*.safetensors"):
                try:
                    os.truncate(f, 0)
                except OSError:  # renamed or gone meanwhile
                    pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join()

    return stop


def describe_comparison(method: str, c: dict) -> str:
    if not c["same_names"]:
        return f"tensor names differ (missing {c['missing']}, extra {c['extra']})"
    ulps = f", max {c['max_ulps']} ulp" if c.get("max_ulps") is not None else ""
    if method in RANDOMIZED:
        return f"randomized; max abs diff {c['max_abs_diff']:.2e}{ulps}"
    if not c["max_abs_diff"]:
        return "0 (identical)"
    return (f"{c['max_abs_diff']:.2e}{ulps} (worst {c['worst']}; {c['tensors_differing']} of {c['tensors']} "
            f"tensors, {c['elements_differing']} elements differ by > 1e-6)")


if __name__ == "__main__":
    sys.exit(main())
