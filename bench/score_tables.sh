#!/usr/bin/env bash
# The score-distillation table of BENCHMARKS.md: train the four tiny score-distillation students
# (eval off), then evaluate each on the 1,000 held-out prompts of the consistency table and compare
# with the teacher at 50 DDIM steps and with the best consistency student at 1 step (TSCD-LoRA),
# paired (bench/student_quality.py --family score). Two trainings run side by side, one thread each.
#   bash bench/score_tables.sh RUNS_DIR          # trains into RUNS_DIR unless RUNS_DIR/<name>/export exists
#   WHICH=best bash bench/score_tables.sh RUNS_DIR   # evaluate each run's best/ (validation-chosen) export
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:?usage: bash bench/score_tables.sh RUNS_DIR}
FEWSTEP=${FEWSTEP:-.venv/bin/fewstep}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
train() {  # config name -> RUNS/tiny-<name with _ as ->
  local run="$RUNS/tiny-${1//_/-}"
  [ -f "$run/export/fewstep_recipe.json" ] && return 0
  "$FEWSTEP" train "configs/tiny/$1.yaml" --set output_dir="$RUNS" --set eval.enabled=false > "$RUNS/$1.log" 2>&1
}
mkdir -p "$RUNS"
{ train dmd; train vsd_lora; } &
{ train sid; train dmd_4step; } &
wait
"$PY" bench/student_quality.py --family score ${WHICH:+--$WHICH} --student dmd="$RUNS/tiny-dmd" \
    --student dmd-4step="$RUNS/tiny-dmd-4step" --student sid="$RUNS/tiny-sid" --student vsd-lora="$RUNS/tiny-vsd-lora" \
    --against tscd-lora=bench/results/consistency/tscd-lora --num-images "${NUM_IMAGES:-1000}" \
    --out "bench/results/score${WHICH:+-$WHICH}" ${REUSE:+--reuse}
