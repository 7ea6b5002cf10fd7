#!/usr/bin/env bash
# Retrain the bundled dense model from scratch and replace ume/models/dense_paper.
# Usage: bash scripts/train_bundled.sh [WORKDIR [extra `ume train` args, e.g. --set k=v]]
# (55 min of training on 2 CPU cores, plus synthesis and scoring)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work/bundle}
shift || true
UME=.venv/bin/ume
$UME data synth --preset paper --out "$W/data"
$UME train --preset paper --train "$W/data/train" --dev "$W/data/dev" --exp "$W/dense" \
  --cache-dir "$W/data/.cache" --no-progress "$@"
.venv/bin/python -m ume.experiment.bundle --exp "$W/dense" --data "$W/data" --out ume/models/dense_paper \
  --command "bash scripts/train_bundled.sh $W $*"
