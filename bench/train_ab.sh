#!/bin/bash
# `fewstep train CONFIG` by an older fewstep commit and by this checkout, started together side by side
# (one thread each), STEPS steps each, then seconds per step of both over the log records after step
# WARMUP (records every 10 steps: the steps' wall time, no validation or evaluation inside the window),
# paired by step: the ratio old / new per record, its median and mean with a 95 % t-interval. The older
# commit runs from a temporary git worktree (bench/old_commit.sh). Extra arguments go to both runs, but
# `--new-set KEY=VALUE` only to this checkout's (a setting the older commit does not have).
# Records pair by step, not by time: with train.compile, warm inductor's cache for both sides first (a
# few steps of each), or the side that compiles longer runs its last steps alone, on a quieter machine.
#   bash bench/train_ab.sh OLD_COMMIT CONFIG STEPS WARMUP OUT [--set KEY=VALUE ...] [--new-set KEY=VALUE ...]
# e.g. bash bench/train_ab.sh 08efad9 configs/tiny/lcm_lora.yaml 200 40 bench/results/lora-merged/train-ab \
#        --set train.compile=true --set data.source=cache --set data.path=runs/cache-tiny-19200
set -euo pipefail
[ $# -ge 5 ] || { echo "usage: bash bench/train_ab.sh OLD_COMMIT CONFIG STEPS WARMUP OUT [--set KEY=VALUE ...]" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=$1; CONFIG=$(realpath "$2"); STEPS=$3; WARMUP=$4; OUT=$(realpath -m "$5"); COMMAND="bash bench/train_ab.sh $*"; shift 5
EXTRA=(); NEW_EXTRA=(); only_new=0
for a in "$@"; do  # a data.path relative to this checkout, as both runs see it
  [ "$a" = "--new-set" ] && { only_new=1; continue; }
  case $a in data.path=*) p=${a#data.path=}; [ -e "$ROOT/$p" ] && a="data.path=$ROOT/$p" ;; esac
  if [ $only_new = 1 ]; then NEW_EXTRA+=(--set "$a"); only_new=0; else EXTRA+=("$a"); fi
done
source "$ROOT/bench/old_commit.sh" && old_commit "$ROOT" "$OLD" && mkdir -p "$OUT"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
FLAGS=(--set name=ab --set train.steps="$STEPS" --set train.log_every=10 --set train.checkpoint_every=0
       --set train.validation_every=0 --set eval.enabled=false "${EXTRA[@]}")
(cd "$TMP" && PYTHONPATH="$OLD_PATH" /usr/bin/time -f "old %e s %M KB" "$ROOT/.venv/bin/python" -m fewstep.pipelines.cli \
   train "$CONFIG" --no-export --set output_dir="$TMP/old-runs" "${FLAGS[@]}" > "$OUT/old.log" 2>&1) &
(cd "$ROOT" && /usr/bin/time -f "new %e s %M KB" .venv/bin/fewstep train "$CONFIG" --no-export --set output_dir="$TMP/new-runs" "${FLAGS[@]}" ${NEW_EXTRA[@]+"${NEW_EXTRA[@]}"} \
   > "$OUT/new.log" 2>&1) &
wait
tail -1 "$OUT/old.log"; tail -1 "$OUT/new.log"
echo "$COMMAND" > "$OUT/command.txt"
git -C "$ROOT" rev-parse --short HEAD >> "$OUT/command.txt"
"$ROOT/.venv/bin/python" - "$TMP/old-runs/ab" "$TMP/new-runs/ab" "$WARMUP" "$OUT" "$ROOT" <<'PY'
import json
import statistics
import sys
from pathlib import Path

from fewstep.distill.runlog import read_logs

sys.path.insert(0, str(Path(sys.argv[5]) / "bench"))
from reference_seeds import t_interval  # noqa: E402

old, new, warmup, out = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
sec = [{r["step"]: r["sec_per_step"] for r in read_logs(d) if "sec_per_step" in r and r["step"] > warmup}
       for d in (old, new)]
steps = sorted(set(sec[0]) & set(sec[1]))
ratios = [sec[0][s] / sec[1][s] for s in steps]
mean = t_interval(ratios)
result = {"steps": steps, "old_sec_per_step": [sec[0][s] for s in steps], "new_sec_per_step": [sec[1][s] for s in steps],
          "ratio_old_over_new": ratios, "median_ratio": statistics.median(ratios),
          "mean_ratio_t95": mean, "old_median_s": statistics.median(sec[0][s] for s in steps),
          "new_median_s": statistics.median(sec[1][s] for s in steps)}
(out / "train_ab.json").write_text(json.dumps(result, indent=1))
print(f"{len(steps)} records after step {warmup}: old {result['old_median_s']:.3f} s/step, new {result['new_median_s']:.3f}"
      f" (medians); old / new median {result['median_ratio']:.3f}, mean {mean[0]:.3f} [{mean[1]:.3f}, {mean[2]:.3f}]")
PY
