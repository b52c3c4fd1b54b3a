#!/usr/bin/env bash
# GPU readiness check in stages (see benchmarks/gpu_check.py): device facts, layer 1 on the tiny
# and the full-size SD 1.5 architecture (random weights) beside a plain reference loop, layer 2
# on the device, a Medium album job (both layers, 4 photos, 512 px), peak memory. Each stage is
# written to the results file (--out, default benchmarks/results/) as it finishes, failed or not.
#   bash benchmarks/gpu_check.sh                          # on a CUDA machine (<= 10 min)
#   bash benchmarks/gpu_check.sh --device cpu --size 64   # what CI runs (tiny SD, ~1-2 min)
#   bash benchmarks/gpu_check.sh --ablation [args]        # layer 1's ablation on the same
#       architecture (benchmarks/fine_tune_ablation.py: Medium, 512 px, 4 photos, 3 seeds;
#       untimed on a GPU so far: --seeds 0 for one seed first)
set -euo pipefail
cd "$(dirname "$0")/.."
# $PY if set, else the project's venv (python3 dev.py creates it), else python3.
if [ -z "${PY:-}" ]; then
  PY=python3
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
fi
export HF_HUB_OFFLINE=1
if [ "${1:-}" = "--ablation" ]; then
  shift
  exec "$PY" benchmarks/fine_tune_ablation.py --model sd15 \
    --json benchmarks/results/fine_tune_ablation_gpu.json "$@"
fi
exec "$PY" benchmarks/gpu_check.py "$@"
