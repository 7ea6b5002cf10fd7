#!/usr/bin/env bash
# Issue 13: the `small` preset comparison as run for docs/history/RESULTS_log.md ("small regime"): two
# one-thread processes side by side, one per core, merged into one table at the end.
#   core 1: dense from scratch -> dense_continued, ume, ume_all, ablations
#   core 2: dense_wide (capacity control) -> (once dense is done) ume_fast, ume_noise, ume_fine,
#           ume_router_noise, ume_drop_small -> moe_scratch
# Usage: bash scripts/experiment_small.sh [WORKDIR]   (resumable: rerun it; finished runs are kept)
# Recipes are chosen on dev MER only; test and held-out voices are reported, never tuned on.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work_small}
UME=.venv/bin/ume
export OMP_NUM_THREADS=1
LANE_A=${LANE_A:-dense_continued,ume,ume_all,ume_no_freeze,ume_no_balance}
LANE_B=${LANE_B:-ume_fast,ume_noise,ume_fine,ume_router_noise,ume_drop_small,moe_scratch}
$UME data synth --preset paper --out "$W/data"  # the corpus the plan names (seed 0)
mkdir -p "${W}_b" && ln -sfn "$(realpath "$W/data")" "${W}_b/data"
(
  $UME experiment --preset small --workdir "${W}_b" --runs dense_wide
  until [ -f "$W/runs/dense/hyp_test.txt" ]; do sleep 60; done  # dense trained and scored
  $UME experiment --preset small --workdir "${W}_b" --model "$W/runs/dense" --runs "$LANE_B"
) > "${W}_b.log" 2>&1 &
side=$!
$UME experiment --preset small --workdir "$W" --from-scratch --runs "dense,$LANE_A"
wait "$side"
$UME experiment --preset small --workdir "$W" --merge-from "${W}_b" \
  --runs "dense,dense_wide,$LANE_A,$LANE_B"
