#!/usr/bin/env bash
# GPU benchmark (issue 13): LCM-LoRA, full LCM and DMD2 training steps on Stable Diffusion 1.5's
# architecture at 512 px in bf16 (batch 8 and 16: s/step, images/s, peak GPU memory, achieved TFLOP/s
# against the chip's peak, step vs the sum of its passes) and sampling latency at 1/2/4/8 steps vs
# 50 steps + CFG. Random weights (no download); runs unattended in about 7 minutes on an H100/H200 and
# writes gpu.json + gpu.md into OUT_DIR. Never needed by the tests or CI.
#
#   bash bench/gpu.sh [OUT_DIR]      # default bench/results/gpu/<date>; extra flags go to bench/gpu_bench.py
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results/gpu/$(date +%Y-%m-%d)}"
shift || true
py="${PYTHON:-python3}"
if ! "$py" -c "import fewstep.distill" 2>/dev/null; then  # a checkout that is not pip-installed
  link="$(mktemp -d)"
  ln -s "$PWD" "$link/fewstep"
  export PYTHONPATH="$link${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" "$py" bench/gpu_bench.py --out "$out" "$@"
