#!/bin/bash
# `fewstep export` of one run by an older fewstep commit and by this checkout, side by side (one thread
# each), REPS times; wall seconds and peak RSS of each (GNU time), then whether the two exports' tensors
# are equal. The older commit runs from a temporary git worktree (bench/old_commit.sh). A run whose
# config.yaml holds keys the older commit does not know is passed to it as a copy without them (OLD_RUN).
#   bash bench/export_ab.sh OLD_COMMIT RUN REPS OUT [OLD_RUN]
# e.g. bash bench/export_ab.sh 437216e runs/export-timing-dmd 1 bench/results/export-restore runs/export-timing-dmd-old
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: bash bench/export_ab.sh OLD_COMMIT RUN REPS OUT [OLD_RUN]" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=$1; RUN=$(realpath "$2"); REPS=$3; OUT=$(realpath -m "$4"); OLD_RUN=$(realpath "${5:-$2}")
source "$ROOT/bench/old_commit.sh" && old_commit "$ROOT" "$OLD" && mkdir -p "$OUT"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
label=$(basename "$RUN")
for i in $(seq 1 "$REPS"); do
  (cd "$TMP" && PYTHONPATH="$OLD_PATH" /usr/bin/time -f "old $label $i %e s %M KB" "$ROOT/.venv/bin/python" \
     -m fewstep.pipelines.cli export "$OLD_RUN" --out "$TMP/exp-old-$i" > "$OUT/old-$label-$i.log" 2>&1) &
  (cd "$ROOT" && /usr/bin/time -f "new $label $i %e s %M KB" .venv/bin/fewstep export "$RUN" --out "$TMP/exp-new-$i" \
     > "$OUT/new-$label-$i.log" 2>&1) &
  wait
  tail -1 "$OUT/old-$label-$i.log"; tail -1 "$OUT/new-$label-$i.log"
  "$ROOT/.venv/bin/python" - "$TMP/exp-old-$i" "$TMP/exp-new-$i" <<'PY'
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

old, new = map(Path, sys.argv[1:])
for f in sorted(old.rglob("*.safetensors")):
    a, b = load_file(str(f)), load_file(str(new / f.relative_to(old)))
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(f.relative_to(old), "equal" if same else "DIFFERENT")
PY
done
