#!/usr/bin/env bash
# Create (idempotently) .venv-mergekit: mergekit 0.1.5 in its own venv, used as the
# reference implementation by benchmarks/make_golden.py and benchmarks/merge_bench.py.
# Usage: bash benchmarks/setup_mergekit_venv.sh   (from anywhere)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MERGEKIT_VENV:-$ROOT/.venv-mergekit}"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"          # CPU wheel on local disk; never unpinned
MERGEKIT_PIN="${MERGEKIT_PIN:-mergekit==0.1.5}"
# mergekit 0.1.5 requires transformers>=5,<6; pinned to the main venv's version so both read configs alike.
TRANSFORMERS_PIN="${TRANSFORMERS_PIN:-transformers==5.24.0}"
STAMP="$VENV/.mergekit-stamp"
WANT="$TORCH_PIN $MERGEKIT_PIN $TRANSFORMERS_PIN"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$VENV/bin/python" -c "import mergekit, torch" 2>/dev/null; then
    echo "mergekit venv ready: $VENV"
    exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH_PIN"
# keep torch pinned while resolving mergekit's deps
"$VENV/bin/python" -m pip install -q "$MERGEKIT_PIN" "$TRANSFORMERS_PIN" "$TORCH_PIN"
"$VENV/bin/python" -c "import mergekit, torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
echo "$WANT" > "$STAMP"
echo "mergekit venv ready: $VENV"
