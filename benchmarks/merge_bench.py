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
}
DETERMINISTIC = {"linear", "ties", "slerp", "model_stock", "task_arithmetic", "breadcrumbs"}
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


def build_checkpoints(dest: Path, size: str, dtype: str, seed: int = 0, device: str = "cpu") -> list[Path]:
    """base, ft1, ft2 under dest/; skipped when dest/.complete matches.

    device: where the random numbers are drawn (cuda is much faster for big presets;
    it gives other numbers than cpu, which the stamp records)."""
    import torch
    from safetensors.torch import save_file

    names = ["base", "ft1", "ft2"]
    dirs = [dest / n for n in names]
    stamp = dest / ".complete"
    want = json.dumps({"size": size, "dtype": dtype, "seed": seed, "preset": PRESETS[size],
                       "rng": "cpu" if device == "cpu" else "cuda"}, sort_keys=True)
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
    weight_map: dict[str, str] = {}
    t0 = time.perf_counter()
    for si, shard in enumerate(shards):
        fname = f"model-{si + 1:05d}-of-{len(shards):05d}.safetensors"
        parts: list[dict] = [{}, {}, {}]
        for name, shape in shard:
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
            weight_map[name] = fname
        for d, part in zip(dirs, parts):
            save_file(part, str(d / fname), metadata={"format": "pt"})
        del parts
        print(f"  built shard {si + 1}/{len(shards)} ({time.perf_counter() - t0:.0f}s)", flush=True)
    index = {"metadata": {"total_size": sum(esize * _numel(s) for _, s in shapes)}, "weight_map": weight_map}
    for d in dirs:
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
    stamp.write_text(want)
    return dirs


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
    b, f1, f2 = str(base), str(ft1), str(ft2)
    if method == "linear":
        r = {"merge_method": "linear", "models": [
            {"model": b, "parameters": {"weight": 0.2}},
            {"model": f1, "parameters": {"weight": 0.4}},
            {"model": f2, "parameters": {"weight": 0.4}}]}
    elif method in ("ties", "dare_ties", "breadcrumbs"):
        extra = {"gamma": 0.01} if method == "breadcrumbs" else {}
        r = {"merge_method": method, "base_model": b, "models": [
            {"model": f1, "parameters": {"density": 0.5, "weight": 0.5, **extra}},
            {"model": f2, "parameters": {"density": 0.5, "weight": 0.5, **extra}}]}
    elif method == "task_arithmetic":
        r = {"merge_method": method, "base_model": b, "models": [
            {"model": f1, "parameters": {"weight": 0.5}},
            {"model": f2, "parameters": {"weight": 0.5}}]}
    elif method == "slerp":
        r = {"merge_method": "slerp", "base_model": f1, "models": [{"model": f1}, {"model": f2}],
             "parameters": {"t": 0.5}}
    elif method == "model_stock":
        r = {"merge_method": "model_stock", "base_model": b, "models": [{"model": f1}, {"model": f2}]}
    else:
        raise SystemExit(f"unknown method {method!r}")
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


def compare_outputs(a: Path, b: Path) -> dict:
    """Max abs diff over all tensors of two output dirs (streamed, tensor by tensor)."""
    from modelglue.io import Checkpoint

    ca, cb = Checkpoint(a), Checkpoint(b)
    ia, ib = set(ca.names()), set(cb.names())
    res = {"same_names": ia == ib, "missing": sorted(ib - ia)[:5],
           "extra": sorted(ia - ib)[:5], "max_abs_diff": 0.0, "worst": None,
           "tensors_differing": 0, "elements_differing": 0, "tensors": 0}
    for k in sorted(ia & ib):
        x, y = ca.get(k), cb.get(k)
        if x.shape != y.shape:
            res["shape_mismatch"] = k
            continue
        res["tensors"] += 1
        diff = (x.double() - y.double()).abs()
        d = diff.max().item() if x.numel() else 0.0
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
    L.append(f"- threads: modelglue {results['threads'] or 'default'}, mergekit default\n")
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
    ap.add_argument("--size", default="0.5b", choices=sorted(PRESETS))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--methods", default="linear,ties,dare_ties,slerp,model_stock")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--cache", choices=["warm", "cold"], default="warm")
    ap.add_argument("--threads", type=int, default=None, help="modelglue --threads (mergekit: -j the same)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool and method; the fastest is kept")
    ap.add_argument("--tools", default="modelglue,mergekit")
    ap.add_argument("--modelglue", type=Path, default=MODELGLUE)
    ap.add_argument("--mergekit", type=Path, default=MERGEKIT)
    ap.add_argument("--no-compare", action="store_true", help="skip the tensor comparison of outputs")
    args = ap.parse_args(argv)

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    tools = [t for t in args.tools.split(",") if t]
    if "mergekit" in tools and not args.mergekit.exists() and args.mergekit == MERGEKIT:
        print("installing mergekit 0.1.5 into .venv-mergekit ...", flush=True)
        subprocess.run(["bash", str(ROOT / "benchmarks" / "setup_mergekit_venv.sh")], check=True)
    for t, exe in (("modelglue", args.modelglue), ("mergekit", args.mergekit)):
        if t in tools and not exe.exists():
            print(f"{t} not found at {exe}" + (" (bash benchmarks/setup_mergekit_venv.sh)" if t == "mergekit" else ""),
                  file=sys.stderr)
            return 2
    machine = machine_description()
    print(f"machine: {machine}")
    mdir = out / f"models-{args.size}-{args.dtype}"
    t0 = time.perf_counter()
    base, ft1, ft2 = build_checkpoints(mdir, args.size, args.dtype)
    print(f"checkpoints ready in {mdir} ({time.perf_counter() - t0:.0f}s)")
    model_bytes = weight_bytes(base)
    cfg = llama_config(args.size, args.dtype)
    params = sum(_numel(s) for _, s in tensor_shapes(cfg))

    mk_version = "?"
    if args.mergekit.exists():
        v = subprocess.run([str(args.mergekit.parent / "python"), "-c",
                            "import importlib.metadata as m; print(m.version('mergekit'))"],
                           capture_output=True, text=True)
        mk_version = v.stdout.strip() or "?"

    # I/O floor: reads of 2 and 3 checkpoints (cold when possible, and warm), synced write of one
    io: dict[str, str] = {}
    cold = drop_caches()
    n, dt = read_files([base])
    io["read 1 checkpoint " + ("cold" if cold else "warm (cannot drop caches)")] = f"{fmt_gb(n)} GB in {dt:.2f} s = {n / dt / 1e9:.2f} GB/s"
    n, dt = read_files([base])
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
            read_files([base, ft1, ft2])
        n, dt = read_files([base, ft1, ft2])
        read_rate[mode] = n / dt
        io[f"read 3 checkpoints {mode}"] = f"{fmt_gb(n)} GB in {dt:.2f} s = {n / dt / 1e9:.2f} GB/s"
    write_rate = model_bytes / wdt
    print("I/O floor:", json.dumps(io, indent=1))

    runs, compare = [], {}
    work = out / "work"
    work.mkdir(exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for method in methods:
        import yaml

        plain, _, tie_order = method.partition("@")
        r = recipe_for(plain, base, ft1, ft2, args.dtype)
        rpath = out / f"recipe-{plain}.yml"
        rpath.write_text(yaml.safe_dump(r, sort_keys=False))
        mg_rpath = rpath
        if tie_order:  # modelglue's own parameter; mergekit runs the plain recipe
            mg_rpath = out / f"recipe-{plain}-{tie_order}.yml"
            mg_rpath.write_text(yaml.safe_dump({**r, "parameters": {"tie_order": tie_order}}, sort_keys=False))
        inputs = recipe_inputs(r)
        in_bytes = sum(weight_bytes(p) for p in inputs)
        outdirs = {}
        for tool in tools:
            best = None
            for rep in range(args.repeat):
                odir = work / f"{method}-{tool}"
                if odir.exists():
                    shutil.rmtree(odir)
                if tool == "modelglue":
                    cmd = [str(args.modelglue), "merge", str(mg_rpath), str(odir), "--device", "cpu"]
                    if args.threads:
                        cmd += ["--threads", str(args.threads)]
                else:
                    cmd = [str(args.mergekit), str(rpath), str(odir), "--no-copy-tokenizer",
                           "--no-write-model-card", "--quiet", "--random-seed", "0"]
                    if args.threads:
                        cmd += ["-j", str(args.threads)]
                cache_state = prepare_cache(args.cache, inputs)
                log = out / f"log-{method}-{tool}.txt"
                print(f"[{method}] {tool} run {rep + 1}/{args.repeat} ({cache_state} cache) ...", flush=True)
                load1 = os.getloadavg()[0]
                m = measure(cmd, log, env)
                m.update(method=method, tool=tool, cache=cache_state, log=str(log.relative_to(out)),
                         load1_before=round(load1, 1), load1_after=round(os.getloadavg()[0], 1))
                if m["rc"] == 0:
                    m["bytes_read"] = in_bytes
                    m["bytes_written"] = weight_bytes(odir)
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
            outdirs[tool] = work / f"{method}-{tool}"
        if len(tools) == 2 and all(d.exists() for d in outdirs.values()) and not args.no_compare:
            c = compare_outputs(outdirs["modelglue"], outdirs["mergekit"])
            if not c["same_names"]:
                compare[method] = f"tensor names differ (missing {c['missing']}, extra {c['extra']})"
            elif plain in DETERMINISTIC:
                compare[method] = (f"{c['max_abs_diff']:.2e} (worst {c['worst']}; {c['tensors_differing']} of "
                                   f"{c['tensors']} tensors, {c['elements_differing']} elements differ by > 1e-6)"
                                   if c["max_abs_diff"] else "0 (identical)")
            else:
                compare[method] = f"randomized; max abs diff {c['max_abs_diff']:.2e}"
        else:
            compare[method] = "not compared"
        for d in outdirs.values():
            if d.exists():
                shutil.rmtree(d)
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine, "size": args.size, "dtype": args.dtype, "params": params,
        "model_bytes": model_bytes, "cache": args.cache, "threads": args.threads,
        "mergekit_version": mk_version, "io": io, "runs": runs, "compare": compare,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    md = render(results)
    (out / "results.md").write_text(md)
    print()
    print(md)
    return 0 if all(r.get("rc") == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
