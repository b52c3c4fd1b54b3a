#!/usr/bin/env bash
# GPU readiness check in stages (see benchmarks/gpu_check.py): device facts, layer 1 on the tiny
# and the full-size SD 1.5 architecture (random weights) beside a plain reference loop, layer 2
# on the device, a Medium album job (both layers, 4 photos, 512 px), peak memory. Each stage is
# written to the results file (--out, default benchmarks/results/) as it finishes, failed or not.
#   bash benchmarks/gpu_check.sh                          # on a CUDA machine (<= 10 min)
#   bash benchmarks/gpu_check.sh --device cpu --size 64   # what CI runs (tiny SD, ~1-2 min)
set -euo pipefail
cd "$(dirname "$0")/.."
# $PY if set, else the project's venv (python3 dev.py creates it), else python3.
if [ -z "${PY:-}" ]; then
  PY=python3
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
fi
export HF_HUB_OFFLINE=1
exec "$PY" benchmarks/gpu_check.py "$@"
