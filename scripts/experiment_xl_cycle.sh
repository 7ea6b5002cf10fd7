#!/usr/bin/env bash
# Another training cycle for a finished pair: does UME's gain over dense training grow with
# more training? Both runs of a pair (dense_continued and UME, from experiment_xl_pair.sh) train
# STEPS more steps each, with their own config's schedule (warm-up, cosine to 0) and a new
# data order (train.seed=SEED), side by side at one thread; then every split is decoded
# (ume.experiment.evaluate.evaluate_run: test, dev, the three generalisation splits, the train
# subset) and the pair is scored with paired-bootstrap CIs (scripts/score_seeds.sh), on the full
# splits and, with REFS=DIR, on DIR/<split>/text (scripts/unseen_subset.py's unseen subsets).
#   OUT/base: BASE_RUN + STEPS     OUT/ume: UME_RUN + STEPS     OUT/scores*.txt
# Usage (resumable: ume train resumes from OUT/<lane>'s checkpoints):
#   [STEPS=5000] [SEED=1235] [REFS=DIR] bash scripts/experiment_xl_cycle.sh DATA_DIR BASE_RUN UME_RUN OUT
#   e.g. REFS=docs/experiment_xl_pair/xl133_from_22k_6k/unseen bash scripts/experiment_xl_cycle.sh \
#     W/data W_pair/lane_a/runs/dense_continued W_pair/lane_b/runs/ume_kmeans_no_freeze W_cycle
# About 65 min on two cores (2-core AMD EPYC, one thread per run) for 5,000 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 4 ] || { sed -n 2,15p "$0" >&2; exit 2; }
D=$(realpath "$1") BASE=$(realpath "$2") MOE=$(realpath "$3") OUT=$4
UME=${UME:-.venv/bin/ume}
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-5000} SEED=${SEED:-1235}
export OMP_NUM_THREADS=1
for need in "$BASE/model.safetensors" "$MOE/model.safetensors" "$D/train" "$D/dev"; do
  [ -e "$need" ] || { echo "missing $need" >&2; exit 2; }
done
mkdir -p "$OUT"
lane() {  # lane NAME INIT: train, then decode every split (skipped once results.json is there)
  local name=$1 init=$2 exp="$OUT/$1"
  if [ ! -s "$exp/results.json" ]; then
    $UME train --init "$init" --train "$D/train" --dev "$D/dev" --exp "$exp" --no-progress \
      --cache-dir "$D/.cache" \
      --set "train.max_steps=$STEPS" --set "train.seed=$SEED" \
      --set "train.max_minutes=$(( STEPS * 3 / 200 + 30 ))"
    $PY -c 'import json, sys; from ume.experiment.evaluate import evaluate_run
print(json.dumps(evaluate_run(sys.argv[1], sys.argv[2], threads=1)))' "$exp" "$D" \
      > "$exp/results.json.tmp"
    mv "$exp/results.json.tmp" "$exp/results.json"  # written whole or not at all
  fi
}
lane ume "$MOE" > "$OUT/ume.log" 2>&1 &
side=$!
lane base "$BASE" > "$OUT/base.log" 2>&1
wait "$side"
bash scripts/score_seeds.sh "$D" "$OUT/base" "$OUT/ume" | tee "$OUT/scores.txt"
if [ -n "${REFS:-}" ]; then
  bash scripts/score_seeds.sh "$REFS" "$OUT/base" "$OUT/ume" | tee "$OUT/scores_$(basename "$REFS").txt"
fi
