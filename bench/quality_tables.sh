#!/usr/bin/env bash
# The quality tables of BENCHMARKS.md, with intervals: the teacher sweep (trailing DDIM at 1, 2, 4,
# 25, 50 steps; the default pipeline's leading spacing at 1, 2, 4 as its own rows), then the three
# consistency students against the teacher at 50 steps (paired bootstrap, FID-infinity, floor row,
# diversity, precision/recall), 1,000 held-out prompts, one thread each.
#   bash bench/quality_tables.sh RUNS_DIR     # RUNS_DIR holds tiny-lcm-lora, tiny-lcm-full, tiny-tscd-lora
# The students come from `fewstep train configs/tiny/{lcm_lora,lcm_full,tscd_lora}.yaml --set eval.enabled=false`.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:?usage: bash bench/quality_tables.sh RUNS_DIR}
FEWSTEP=${FEWSTEP:-.venv/bin/fewstep}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
N=${NUM_IMAGES:-1000}
if [ ! -f bench/results/teacher-sweep/metrics.json ] || [ "${REDO_TEACHER:-0}" = 1 ]; then
  "$FEWSTEP" eval --pipeline tiny-sd --scheduler DDIMScheduler --steps 1,2,4 --teacher tiny-sd \
      --teacher-steps 1,2,4,25,50 --num-images "$N" --guidance 3 --teacher-guidance 3 --out bench/results/teacher-sweep
fi
"$PY" bench/student_quality.py --family consistency --student lcm-lora="$RUNS/tiny-lcm-lora" --student lcm-full="$RUNS/tiny-lcm-full" \
    --student tscd-lora="$RUNS/tiny-tscd-lora" --num-images "$N" --out bench/results/consistency ${REUSE:+--reuse}
