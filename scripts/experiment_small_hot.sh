#!/usr/bin/env bash
# Issue 13: the `small` regime's continuation at the dense model's peak learning rate (1e-3),
# from the same dense model as `small` (docs/history/RESULTS_log.md, "small regime, hot continuation").
# Usage: bash scripts/experiment_small_hot.sh [WORKDIR] [DENSE_EXPDIR]   (resumable)
# Needs the `small` dense model: bash scripts/experiment_small.sh trains it (work_small/runs/dense).
# One thread per process; RUNS picks the runs (recipes are chosen on dev MER only).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work_small_hot}
DENSE=${2:-work_small/runs/dense}
UME=.venv/bin/ume
export OMP_NUM_THREADS=1
RUNS=${RUNS:-dense_continued,ume_kmeans,ume,ume_no_freeze,ume_no_balance}
mkdir -p "$W"
$UME data synth --preset paper --out "$W/data"  # the corpus the plan names (seed 0)
$UME experiment --preset small_hot --workdir "$W" --model "$DENSE" --runs "dense,$RUNS"
