#!/usr/bin/env python3
"""GPU check of `modelglue merge --device cuda` against the machine's limits.

Run through benchmarks/gpu_check.sh (sets PYTHONPATH, time limits, defaults). Steps:
1. build three random Llama checkpoints (base, ft1, ft2) on local disk, random numbers
   drawn on the GPU when there is one (fast), written shard by shard;
2. measure the limits: disk read (cold if the page cache can be dropped, and warm),
   synced write, host-to-device and device-to-host copy bandwidth (pageable and pinned);
3. run `modelglue merge RECIPE OUT --device DEVICE` for linear and ties in subprocesses
   (wall, CPU, peak RSS; peak GPU memory as reported by the child when possible);
4. spot-check the linear output against the formula on a few tensors;
5. print a table of throughput against those limits and write it to OUT/gpu_check.md
   (+ gpu_check.json).

Environment: GPU_CHECK_DEVICE (cuda|cpu), GPU_CHECK_SIZE (tiny|small|0.5b|1.5b|3b),
GPU_CHECK_DTYPE, GPU_CHECK_METHODS, GPU_CHECK_WORK (where checkpoints go),
GPU_CHECK_OUT (where the report goes; default $OUT, else bench-out/gpu).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import merge_bench as mvm  # noqa: E402

DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
SIZE = os.environ.get("GPU_CHECK_SIZE", "1.5b")
DTYPE = os.environ.get("GPU_CHECK_DTYPE", "float32")
METHODS = [m for m in os.environ.get("GPU_CHECK_METHODS", "linear,ties").split(",") if m]
WORK = Path(os.environ.get("GPU_CHECK_WORK", str(ROOT / "bench-out" / "gpu-work"))).resolve()
OUT = Path(os.environ.get("GPU_CHECK_OUT") or os.environ.get("OUT") or str(ROOT / "bench-out" / "gpu")).resolve()
MERGE_TIMEOUT = int(os.environ.get("GPU_CHECK_MERGE_TIMEOUT", "150"))

# The child: modelglue's CLI when click is importable, else the Python API (same engine).
DRIVER = r"""
import json, sys, time
recipe, out, device = sys.argv[1:4]
try:
    import click  # noqa: F401
    from modelglue.cli import main
    use_cli = True
except ImportError:
    use_cli = False
import torch
t0 = time.perf_counter()
if use_cli:
    try:
        main(["merge", recipe, out, "--device", device])  # standalone: ends in SystemExit
    except SystemExit as e:
        if e.code not in (0, None):
            raise
else:
    from modelglue import merge
    merge(recipe, out, device=device)
info = {"via": "cli" if use_cli else "api", "inner_wall_s": time.perf_counter() - t0}
if device.startswith("cuda") and torch.cuda.is_available():
    info["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
print("GPU_CHECK_CHILD " + json.dumps(info))
"""


def bandwidth(device: str) -> dict:
    """Host<->device copy bandwidth (GB/s) of a 1 GiB float32 tensor, best of 5."""
    import torch

    if not device.startswith("cuda"):
        return {"note": "no GPU: copy bandwidth not measured"}
    n = (1 << 30) // 4
    res = {}
    for pinned in (False, True):
        h = torch.empty(n, dtype=torch.float32, pin_memory=pinned)
        h.uniform_()
        d = torch.empty(n, dtype=torch.float32, device=device)
        d.copy_(h)
        torch.cuda.synchronize()
        best_h2d = best_d2h = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            d.copy_(h, non_blocking=pinned)
            torch.cuda.synchronize()
            best_h2d = min(best_h2d, time.perf_counter() - t0)
            t0 = time.perf_counter()
            h.copy_(d, non_blocking=pinned)
            torch.cuda.synchronize()
            best_d2h = min(best_d2h, time.perf_counter() - t0)
        tag = "pinned" if pinned else "pageable"
        res[f"h2d_{tag}_GBps"] = round(n * 4 / best_h2d / 1e9, 2)
        res[f"d2h_{tag}_GBps"] = round(n * 4 / best_d2h / 1e9, 2)
        del h, d
    torch.cuda.empty_cache()
    res["gpu"] = torch.cuda.get_device_name(0)
    return res


def spot_check_linear(recipe: dict, out: Path, k: int = 4) -> str:
    """Recompute a few tensors of a linear merge directly (float64) and compare."""
    from modelglue.io import Checkpoint

    merged = Checkpoint(out)
    names = sorted(merged.names())
    pick = names[:2] + names[len(names) // 2: len(names) // 2 + 1] + names[-1:]
    ws = [(Checkpoint(Path(m["model"])), m["parameters"]["weight"]) for m in recipe["models"]]
    worst = 0.0
    for name in pick[:k]:
        acc = sum(ck.get(name).double() * w for ck, w in ws) / sum(w for _, w in ws)
        got = merged.get(name)
        worst = max(worst, (got.double() - acc.to(got.dtype).double()).abs().max().item())
    return f"{len(pick[:k])} tensors, max abs diff vs float64 formula {worst:.2e}"


def main() -> int:
    import torch

    t_start = time.perf_counter()
    device = DEVICE
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("GPU_CHECK_DEVICE=cuda but torch sees no GPU", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": device, "size": SIZE, "dtype": DTYPE, "machine": mvm.machine_description(),
                    "torch": torch.__version__}
    print(f"gpu_check: device={device} size={SIZE} dtype={DTYPE} methods={METHODS}")
    print(f"machine: {report['machine']}")

    t0 = time.perf_counter()
    base, ft1, ft2 = mvm.build_checkpoints(WORK / f"models-{SIZE}-{DTYPE}", SIZE, DTYPE,
                                           device=device if device.startswith("cuda") else "cpu")
    model_bytes = mvm.weight_bytes(base)
    report["build_s"] = round(time.perf_counter() - t0, 1)
    report["model_bytes"] = model_bytes
    print(f"checkpoints: 3 x {model_bytes / 1e9:.2f} GB in {report['build_s']} s")

    limits: dict = {}
    cold = mvm.drop_caches()
    n, dt = mvm.read_files([base, ft1, ft2])
    limits["disk_read_" + ("cold" if cold else "warm_nodrop") + "_GBps"] = round(n / dt / 1e9, 2)
    n, dt = mvm.read_files([base, ft1, ft2])
    limits["disk_read_warm_GBps"] = round(n / dt / 1e9, 2)
    wdt = mvm.write_floor(WORK, model_bytes)
    limits["disk_write_fsync_GBps"] = round(model_bytes / wdt / 1e9, 2)
    limits.update(bandwidth(device))
    report["limits"] = limits
    print("limits:", json.dumps(limits))

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    runs = []
    import yaml

    for method in METHODS:
        recipe = mvm.recipe_for(method, base, ft1, ft2, DTYPE)
        rpath = OUT / f"recipe-{method}.yml"
        rpath.write_text(yaml.safe_dump(recipe, sort_keys=False))
        odir = WORK / f"out-{method}"
        if odir.exists():
            shutil.rmtree(odir)
        inputs = mvm.recipe_inputs(recipe)
        in_bytes = sum(mvm.weight_bytes(p) for p in inputs)
        mvm.read_files(inputs)  # warm cache: the same state for every method
        log = OUT / f"log-{method}.txt"
        cmd = ["timeout", str(MERGE_TIMEOUT), sys.executable, "-c", DRIVER, str(rpath), str(odir), device]
        print(f"[{method}] modelglue merge --device {device} ...", flush=True)
        m = mvm.measure(cmd, log, env)
        m["method"] = method
        text = log.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("GPU_CHECK_CHILD "):
                m.update(json.loads(line[len("GPU_CHECK_CHILD "):]))
        if m["rc"] == 0:
            m["bytes_read"] = in_bytes
            m["bytes_written"] = mvm.weight_bytes(odir)
            m["throughput_GBps"] = round((in_bytes + m["bytes_written"]) / m["wall_s"] / 1e9, 2)
            m["read_GBps"] = round(in_bytes / m["wall_s"] / 1e9, 2)
            if method == "linear":
                try:
                    m["spot_check"] = spot_check_linear(recipe, odir)
                except Exception as exc:  # report, do not abort the check
                    m["spot_check"] = f"failed: {type(exc).__name__}: {exc}"
            print(f"    wall {m['wall_s']:.1f}s, {m['throughput_GBps']} GB/s read+written, "
                  f"rss {m['maxrss_bytes'] / 1e9:.2f} GB, gpu peak {m.get('gpu_peak_bytes', 0) / 1e9:.2f} GB "
                  f"{m.get('spot_check', '')}", flush=True)
        else:
            print(f"    FAILED rc={m['rc']} (124 = timeout {MERGE_TIMEOUT}s):\n{text[-1500:]}", flush=True)
        runs.append(m)
        if odir.exists():
            shutil.rmtree(odir)
    report["runs"] = runs
    report["total_s"] = round(time.perf_counter() - t_start, 1)

    read_limit = limits.get("disk_read_warm_GBps")
    h2d = limits.get("h2d_pinned_GBps")
    lines = [f"# gpu_check: modelglue merge --device {device}", "",
             f"- machine: {report['machine']}; torch {report['torch']}; {limits.get('gpu', 'no GPU')}",
             f"- checkpoints: 3 random Llama {SIZE} {DTYPE}, {model_bytes / 1e9:.2f} GB each (built in {report['build_s']} s)",
             "- limits: " + ", ".join(f"{k} {v}" for k, v in limits.items() if k != "gpu"), "",
             "| method | wall s | CPU s | peak RSS GB | GPU peak GB | read+written GB/s | input read GB/s | "
             "vs warm disk read | vs pinned H2D | spot check |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for m in runs:
        if m["rc"] != 0:
            lines.append(f"| {m['method']} | failed rc {m['rc']} | | | | | | | | |")
            continue
        lines.append(
            f"| {m['method']} | {m['wall_s']:.1f} | {m['user_s'] + m['sys_s']:.1f} | {m['maxrss_bytes'] / 1e9:.2f} | "
            f"{m.get('gpu_peak_bytes', 0) / 1e9:.2f} | {m['throughput_GBps']} | {m['read_GBps']} | "
            f"{m['read_GBps'] / read_limit:.0%} | {(m['read_GBps'] / h2d) if h2d else float('nan'):.0%} | "
            f"{m.get('spot_check', '')} |")
    lines.append("")
    lines.append(f"total {report['total_s']} s")
    md = "\n".join(lines) + "\n"
    (OUT / "gpu_check.md").write_text(md)
    (OUT / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    print()
    print(md)
    return 0 if all(m["rc"] == 0 for m in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
