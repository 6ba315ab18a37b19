#!/usr/bin/env bash
# The score-distillation table of bench/SCORE_DISTILLATION.md: train the tiny score-distillation students (eval
# off), then evaluate each on the 1,000 held-out prompts of the consistency table and compare with
# the teacher at 50 DDIM steps and with the best consistency student at 1 step (LCM-LoRA with
# TSCD's 1800-step budget, bench/results/consistency-equal-budget), paired
# (bench/student_quality.py --family score). Two lanes of training side by side, one thread each;
# dmd_from_lcm starts from that LCM-LoRA's export, trained here first with the same command.
#   bash bench/score_tables.sh RUNS_DIR          # trains into RUNS_DIR unless RUNS_DIR/<name>/export exists
#   WHICH=best bash bench/score_tables.sh RUNS_DIR   # evaluate each run's best/ (validation-chosen) export
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:?usage: bash bench/score_tables.sh RUNS_DIR}
FEWSTEP=${FEWSTEP:-.venv/bin/fewstep}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
train() {  # config name, run name, extra --set assignments
  local config=$1 name=$2; shift 2
  [ -f "$RUNS/$name/export/fewstep_recipe.json" ] && return 0
  local sets=(--set name="$name" --set output_dir="$RUNS" --set eval.enabled=false)
  for kv in "$@"; do sets+=(--set "$kv"); done
  "$FEWSTEP" train "configs/tiny/$config.yaml" "${sets[@]}" > "$RUNS/$name.log" 2>&1
}
mkdir -p "$RUNS"
{ train lcm_lora tiny-lcm-lora-1800 train.steps=1800 train.lr_schedule=cosine
  train dmd_from_lcm tiny-dmd-from-lcm student.init_lora="$RUNS/tiny-lcm-lora-1800/export"; } &
{ train vsd tiny-vsd; train dmd tiny-dmd; train sid tiny-sid; train vsd_lora tiny-vsd-lora; train dmd_4step tiny-dmd-4step; } &
wait
students=()
for kind in dmd dmd-from-lcm dmd-4step sid vsd vsd-lora; do
  [ -d "$RUNS/tiny-$kind/export" ] && students+=(--student "$kind=$RUNS/tiny-$kind")
done
"$PY" bench/student_quality.py --family score ${WHICH:+--$WHICH} "${students[@]}" \
    --against consistency-best=bench/results/consistency-equal-budget/lcm-lora-1800 \
    --num-images "${NUM_IMAGES:-1000}" --out "bench/results/score${WHICH:+-$WHICH}" ${REUSE:+--reuse}
