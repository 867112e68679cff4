#!/usr/bin/env bash
# The GPU run (benchmarks/gpu.py): on a lent GPU machine with PyPI as its only network, installs editloop, vLLM and
# bitsandbytes into a fresh virtualenv and runs every section; the figures go to benchmarks/results/gpu-<UTC>.json.
#   benchmarks/gpu.sh          a CUDA machine, under 10 minutes (the install is most of it)
#   benchmarks/gpu.sh --cpu    the smoke test: this repository's .venv (or $PYTHON), tiny shapes, no vLLM
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--cpu" ]]; then
    shift
    PY="${PYTHON:-.venv/bin/python}"
    [[ -x "$PY" ]] || PY="$(command -v python3)"
    PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" benchmarks/gpu.py --cpu "$@"
fi
VENV="${GPU_VENV:-/tmp/editloop-gpu-venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
    "$(command -v python3.11 || command -v python3)" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    # vLLM pins its own torch (a CUDA build); editloop's other pins are installed beside it, then vLLM's torch wins.
    "$VENV/bin/pip" install -q -e . vllm bitsandbytes
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONPATH="$PWD" exec timeout 540 "$VENV/bin/python" benchmarks/gpu.py "$@"
