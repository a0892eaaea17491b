#!/usr/bin/env bash
# GPU check for the merge engine, prepared for a machine with one GPU (e.g. an H200),
# no network, torch + transformers + safetensors installed. Under 5 minutes there:
# builds 3 random ~1.5B float32 Llama checkpoints (18.5 GB) on local disk, measures disk
# read / write and host<->device copy bandwidth, runs `modelglue merge --device cuda`
# for linear and ties, and prints throughput against those limits.
#
#   bash benchmarks/gpu_check.sh                                       # on the GPU machine
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZE=tiny bash benchmarks/gpu_check.sh   # dry run here
#
# Knobs: GPU_CHECK_DEVICE (cuda), GPU_CHECK_SIZE (1.5b; also tiny small 0.5b 3b),
# GPU_CHECK_DTYPE (float32), GPU_CHECK_METHODS (linear,ties), GPU_CHECK_WORK (checkpoints,
# default bench-out/gpu-work), GPU_CHECK_OUT (report; default $OUT, else bench-out/gpu),
# GPU_CHECK_KEEP=1 keeps the checkpoints afterwards, GPU_CHECK_TIMEOUT (whole run, 290 s).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]] && "$ROOT/.venv/bin/python" -c "import torch" 2>/dev/null; then
        PY="$ROOT/.venv/bin/python"
    else
        PY="$(command -v python3 || command -v python)"
    fi
fi
# modelglue from the source tree: no install, no dependency resolution (there is no network).
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" - <<'PYEOF'
import importlib.util, sys
need = ["torch", "safetensors", "yaml", "tqdm"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing python modules {missing} (modelglue's engine needs them)")
import torch
print(f"gpu_check: python {sys.version.split()[0]}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
import modelglue.merge  # fails here, clearly, if the engine's imports are not met
PYEOF
WORK="${GPU_CHECK_WORK:-$ROOT/bench-out/gpu-work}"
export GPU_CHECK_WORK="$WORK"
rc=0
timeout "${GPU_CHECK_TIMEOUT:-290}" "$PY" "$ROOT/benchmarks/gpu_check.py" || rc=$?
if [[ "${GPU_CHECK_KEEP:-0}" != "1" ]]; then
    rm -rf "$WORK"
fi
if [[ $rc -eq 124 ]]; then echo "gpu_check: timed out after ${GPU_CHECK_TIMEOUT:-290}s" >&2; fi
exit $rc
