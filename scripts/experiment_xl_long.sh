#!/usr/bin/env bash
# The xl regime, one cosine cycle further (run after scripts/experiment_xl.sh and
# scripts/experiment_xl_extras.sh on the same WORKDIR): is UME's gain over more dense training
# larger when the dense model it starts from is trained longer, and does upcycling then catch the
# from-scratch MoE?
#   1. side by side, one thread each, a warm restart (200-step re-warm to lr 1e-3, cosine) of
#        the dense model:     WORKDIR/dense              -> WORKDIR_long/dense        (DENSE_STEPS)
#        the scratch MoE:     WORKDIR/scratch/moe_scratch -> WORKDIR_long/moe_scratch (SCRATCH_STEPS)
#   2. the pair from WORKDIR_long/dense (configs/experiment_xl.yaml, EXTRA_STEPS more steps):
#        lane a: dense_continued            (WORKDIR_long/lane_a)
#        lane b: ume_kmeans_fast_no_freeze  (WORKDIR_long/lane_b)
#      beside it, the longer scratch MoE decoded on every split (WORKDIR_long/scratch_eval)
#   SCRATCH_STEPS=0 skips the scratch MoE's restart (it costs a core for ~1.5 h).
#   3. paired bootstraps on test, dev and the three generalisation splits -> WORKDIR_long/scores.txt
# Usage (resumable: finished steps are kept):
#   [DENSE_STEPS=9000] [SCRATCH_STEPS=6000] [EXTRA_STEPS=2000] bash scripts/experiment_xl_long.sh [WORKDIR]
# About 3 h on two cores (2-core AMD EPYC, one thread per run).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work_xl}
L=${W}_long
UME=${UME:-.venv/bin/ume}
DENSE_STEPS=${DENSE_STEPS:-9000}
SCRATCH_STEPS=${SCRATCH_STEPS:-6000}
EXTRA_STEPS=${EXTRA_STEPS:-2000}
export OMP_NUM_THREADS=1
D="$W/data"
needs=("$W/dense/train_info.json")
[ "$SCRATCH_STEPS" -gt 0 ] && needs+=("$W/scratch/moe_scratch/train_info.json")
for need in "${needs[@]}"; do
  [ -f "$need" ] || { echo "missing $need: run scripts/experiment_xl.sh and scripts/experiment_xl_extras.sh $W first" >&2; exit 2; }
done
mkdir -p "$L"
restart() {  # restart FROM OUT STEPS LOG: the same warm restart for both models
  [ -f "$2/train_info.json" ] && return 0
  $UME train --init "$1" --exp "$2" --train "$D/train" --dev "$D/dev" --cache-dir "$D/.cache" \
    --no-progress --set train.sortagrad=false --set train.curriculum_steps=0 \
    --set train.max_steps="$3" --set train.lr=0.001 --set train.warmup_steps=200 \
    --set train.lr_schedule=cosine --set train.max_minutes=110 --set train.eval_every=1000 \
    --set train.checkpoint_every=500 > "$4" 2>&1
}
side=
if [ "$SCRATCH_STEPS" -gt 0 ]; then
  restart "$W/scratch/moe_scratch" "$L/moe_scratch" "$SCRATCH_STEPS" "$L/scratch.log" &
  side=$!
fi
restart "$W/dense" "$L/dense" "$DENSE_STEPS" "$L/dense.log"
[ -z "$side" ] || wait "$side"

for lane in a b; do mkdir -p "$L/lane_$lane"; ln -sfn "$(realpath "$D")" "$L/lane_$lane/data"; done
set_steps=(--set "extra_steps=$EXTRA_STEPS" --set extra_minutes=75)
$UME experiment --preset xl --workdir "$L/lane_b" --model "$L/dense" \
  --runs dense,ume_kmeans_fast_no_freeze "${set_steps[@]}" > "$L/lane_b.log" 2>&1 &
side=$!
$UME experiment --preset xl --workdir "$L/lane_a" --model "$L/dense" \
  --runs dense,dense_continued "${set_steps[@]}" > "$L/lane_a.log" 2>&1
if [ "$SCRATCH_STEPS" -gt 0 ]; then
  mkdir -p "$L/scratch_eval"
  for s in test:test test_heldout:heldout test_heldout_synth:heldout_synth \
    test_heldout_text:heldout_text dev:dev; do
    split=${s%%:*} name=${s#*:}
    $UME decode --model "$L/moe_scratch" --data "$D/$split" --mode attention_rescoring \
      --out "$L/scratch_eval/hyp_$name.txt"
    $UME score --ref "$D/$split/text" --hyp "$L/scratch_eval/hyp_$name.txt" \
      > "$L/scratch_eval/score_$name.txt"
  done
fi
wait "$side"

A="$L/lane_a/runs" B="$L/lane_b/runs/ume_kmeans_fast_no_freeze"
for pair in test:test dev:dev test_heldout:heldout test_heldout_synth:heldout_synth \
  test_heldout_text:heldout_text; do
  split=${pair%%:*} hyp=${pair#*:}
  echo "== UME vs dense_continued: $split"
  $UME score --ref "$D/$split/text" --hyp "$B/hyp_$hyp.txt" --vs "$A/dense_continued/hyp_$hyp.txt"
  echo "== dense_continued vs dense: $split"
  $UME score --ref "$D/$split/text" --hyp "$A/dense_continued/hyp_$hyp.txt" --vs "$A/dense/hyp_$hyp.txt"
  if [ "$SCRATCH_STEPS" -gt 0 ]; then
    echo "== scratch MoE (longer) vs UME: $split"
    $UME score --ref "$D/$split/text" --hyp "$L/scratch_eval/hyp_$hyp.txt" --vs "$B/hyp_$hyp.txt"
  fi
done | tee "$L/scores.txt"
