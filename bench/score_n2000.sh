#!/usr/bin/env bash
# The score-distillation comparison of bench/SCORE_DISTILLATION.md on 2,000 held-out prompts: the 1,000 of
# the tables (procedural captions, seed 777, image i = generator seed i) and the next 1,000, so the first
# half of every row is the 1,000-prompt table's images. The FID reference stays the tables' 5,000
# procedural scenes (seed 12345; fewstep eval would take 10,000 at 2,000 images). Every row is
# re-evaluated here at 2,000 images, teacher (50 DDIM steps, CFG 3) and the consistency-best student
# (LCM-LoRA with TSCD's 1,800-step budget) included, then compared paired (bench/student_quality.py).
#   bash bench/score_n2000.sh RUNS_DIR OUT     # RUNS_DIR holds tiny-lcm-lora-1800, tiny-dmd, tiny-sid, tiny-vsd
# (the runs of bench/score_tables.sh). One thread; about 40 minutes, 20 of them the teacher.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:?usage: bash bench/score_n2000.sh RUNS_DIR OUT}
OUT=${2:?usage: bash bench/score_n2000.sh RUNS_DIR OUT}
FEWSTEP=${FEWSTEP:-.venv/bin/fewstep}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
common=(--num-images 2000 --reference-images 5000 --no-floor)
ev() {  # out folder, eval arguments
  local out=$1; shift
  [ -f "$OUT/$out/metrics.json" ] || "$FEWSTEP" eval "$@" "${common[@]}" --out "$OUT/$out"
}
ev teacher --pipeline tiny-sd --scheduler DDIMScheduler --steps 1 --teacher tiny-sd --teacher-steps 50 \
    --guidance 3 --teacher-guidance 3
ev consistency-best --run "$RUNS/tiny-lcm-lora-1800" --teacher-steps "" --steps 1,2,4,8
students=()
for kind in dmd sid vsd; do
  ev "$kind" --run "$RUNS/tiny-$kind" --teacher-steps "" --steps 1
  students+=(--student "$kind=$RUNS/tiny-$kind")
done
"$PY" bench/student_quality.py --family score "${students[@]}" --reuse --num-images 2000 \
    --teacher-report "$OUT/teacher" --against consistency-best="$OUT/consistency-best" --out "$OUT"
