#!/usr/bin/env bash
# Issue 13: retrain the `dense_small` model (models/small/dense_small) from scratch: the
# `small` dense (configs/small.yaml, 8,000 steps, cosine to 0) continued 6,000 steps at 1e-3
# (small_6k's dense_continued): the nearly saturated, capacity-bound dense model that the
# saturated comparison starts from (docs/history/RESULTS_log.md, "A (nearly) saturated dense model").
# Shipped in float32, so runs started from the bundle equal runs started from the trained dir.
# One thread, as the recorded runs: ~50 + ~45 min of training on an idle core, plus scoring.
# Usage (resumable; finished runs are kept): bash scripts/train_bundled_small.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work_small}
UME=${UME:-.venv/bin/ume}  # UME=echo: print the commands only
export OMP_NUM_THREADS=1
$UME data synth --preset paper --out "$W/data"  # the corpus the plan names (seed 0)
$UME experiment --preset small --workdir "$W" --from-scratch --runs dense
mkdir -p "${W}_6k" && ln -sfn "$(realpath -m "$W/data")" "${W}_6k/data"
$UME experiment --preset small_6k --workdir "${W}_6k" --model "$W/runs/dense" \
  --runs dense,dense_continued
[ "$UME" = echo ] && PY="echo python" || PY=.venv/bin/python
$PY -m ume.experiment.bundle --exp "${W}_6k/runs/dense_continued" --data "$W/data" \
  --out models/small/dense_small --dtype float32 \
  --command "bash scripts/train_bundled_small.sh $W" \
  --history "8,000 steps from scratch (ume experiment --preset small --from-scratch), then 6,000 at 1e-3 (small_6k dense_continued)"
