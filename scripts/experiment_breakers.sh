#!/usr/bin/env bash
# Issue 13: the symmetry-breaker comparison (configs/experiment_breakers.yaml) as run for
# docs/history/RESULTS_log.md: two one-thread processes side by side, one per core, merged at the end.
#   core 1: dense (the bundled model, scored) -> dense_continued, ume, ume_fast
#   core 2: ume_all, ume_noise
#   then, side by side: ume_fine (core 1) and ume_router_noise (core 2)
# Usage: bash scripts/experiment_breakers.sh [WORKDIR]   (resumable: rerun it)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work_breakers}
UME=.venv/bin/ume
export OMP_NUM_THREADS=1
LANE_A=${LANE_A:-dense_continued,ume,ume_fast}
LANE_B=${LANE_B:-ume_all,ume_noise}
$UME data synth --preset paper --out "$W/data"  # the bundled model's corpus (seed 0)
mkdir -p "${W}_b" && ln -sfn "$(realpath "$W/data")" "${W}_b/data"
$UME experiment --preset breakers --workdir "${W}_b" --runs "$LANE_B" > "${W}_b.log" 2>&1 &
side=$!
$UME experiment --preset breakers --workdir "$W" --runs "dense,$LANE_A"
wait "$side"
mkdir -p "${W}_c" && ln -sfn "$(realpath "$W/data")" "${W}_c/data"
$UME experiment --preset breakers --workdir "${W}_c" --runs ume_router_noise > "${W}_c.log" 2>&1 &
side=$!
$UME experiment --preset breakers --workdir "${W}_b" --runs ume_fine
wait "$side"
$UME experiment --preset breakers --workdir "$W" --merge-from "${W}_b" --merge-from "${W}_c" \
  --runs "dense,$LANE_A,$LANE_B,ume_fine,ume_router_noise"
