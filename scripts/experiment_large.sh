#!/usr/bin/env bash
# The `large` preset comparison as run for docs/history/RESULTS_log.md ("UME, large preset"): two one-thread
# processes side by side, one per core, merged into one table at the end.
#   core 1: dense from scratch (55 min) -> ume
#   core 2: moe_scratch (95 min) -> dense_continued (from core 1's dense model)
# Usage: bash scripts/experiment_large.sh [WORKDIR]   (≈ 2.5 h on 2 cores; resumable: rerun it)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work_large}
UME=.venv/bin/ume
export OMP_NUM_THREADS=1
$UME data synth --preset large --out "$W/data"  # the corpus the experiment would make (seed 0)
for side in s c; do
  mkdir -p "${W}_$side" && ln -sfn "$(realpath "$W/data")" "${W}_$side/data"
done
(
  $UME experiment --preset large --workdir "${W}_s" --runs moe_scratch
  until [ -f "$W/runs/dense/hyp_test.txt" ]; do sleep 60; done  # dense trained and scored
  $UME experiment --preset large --workdir "${W}_c" --model "$W/runs/dense" --runs dense_continued
) > "${W}_side.log" 2>&1 &
side=$!
$UME experiment --preset large --workdir "$W" --from-scratch --runs dense,ume
wait "$side"
$UME experiment --preset large --workdir "$W" --merge-from "${W}_s" --merge-from "${W}_c" \
  --runs dense,dense_continued,ume,moe_scratch
