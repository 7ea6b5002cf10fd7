#!/usr/bin/env bash
# Issue 13: the `small` regime with a 3x longer continuation at the dense peak lr (3,000 steps
# at 1e-3), dense_continued and ume_kmeans side by side, one thread each, merged at the end
# (docs/history/RESULTS_log.md, "small regime"). PRESET=small_6k runs the 6,000-step version. Usage (resumable):
#   [PRESET=small_long|small_6k] bash scripts/experiment_small_long.sh [WORKDIR] [DENSE_EXPDIR]
# Needs the `small` dense model: bash scripts/experiment_small.sh trains it (work_small/runs/dense).
set -euo pipefail
cd "$(dirname "$0")/.."
P=${PRESET:-small_long}
W=${1:-work_$P}
DENSE=${2:-work_small/runs/dense}
UME=.venv/bin/ume
export OMP_NUM_THREADS=1
$UME data synth --preset paper --out "$W/data"  # the corpus the plan names (seed 0)
mkdir -p "${W}_b" && ln -sfn "$(realpath "$W/data")" "${W}_b/data"
$UME experiment --preset "$P" --workdir "${W}_b" --model "$DENSE" --runs dense,ume_kmeans \
  > "${W}_b.log" 2>&1 &
side=$!
$UME experiment --preset "$P" --workdir "$W" --model "$DENSE" --runs dense,dense_continued
wait "$side"
$UME experiment --preset "$P" --workdir "$W" --merge-from "${W}_b" \
  --runs dense,dense_continued,ume_kmeans
