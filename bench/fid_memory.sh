#!/usr/bin/env bash
# Peak memory of a 1,000-image vs a 5,000-image FID of the embedded teacher against as many
# reference images (issue: streaming statistics, memory must not grow with the number of images).
# Each run computes its reference statistics from scratch (fresh cache dir). 10 DDIM steps: the
# step count does not change memory, only time.
#   [PIPELINE=dir] bash bench/fid_memory.sh > bench/results/fid_memory.txt
set -euo pipefail
cd "$(dirname "$0")/.."
FEWSTEP=${FEWSTEP:-.venv/bin/fewstep}
for n in 1000 5000; do
  out=$(mktemp -d)
  start=$(date +%s)
  OMP_NUM_THREADS=1 /usr/bin/time -v "$FEWSTEP" eval --pipeline "${PIPELINE:-tiny-sd}" --scheduler DDIMScheduler --steps 10 \
      --guidance 3 --num-images "$n" --reference-images "$n" --cache-dir "$out/cache" --out "$out/report" \
      > "$out/log" 2>&1
  rss=$(grep "Maximum resident set size" "$out/log" | awk '{print $NF}')
  fid=$(python3 -c "import json,sys; r=json.load(open('$out/report/metrics.json'))['rows'][0]; print(round(r['fid'],3))")
  echo "images=$n peak_rss_kib=$rss fid=$fid seconds=$(( $(date +%s) - start ))"
done
