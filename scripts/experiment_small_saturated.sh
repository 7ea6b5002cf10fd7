#!/usr/bin/env bash
# Issue 13: the `small_6k` comparison one continuation later. The dense model is the 14,000-step
# dense_continued of `small_6k` (8,000 from scratch + 6,000 at 1e-3), bundled bit-exact as
# models/small/dense_small (scripts/train_bundled_small.sh remakes it); from it, with the same
# plan (6,000 steps at 1e-3, cosine, 100-step re-warm):
#   lane a: dense_continued       (20,000 dense steps: is the 14,000-step model saturated?)
#   lane b: ume_kmeans_no_freeze  (the recipe that beat dense_continued in small_6k, chosen on dev)
#           or the UME runs in $LANE_B (comma-separated, one after another)
# Two one-thread processes side by side, each its own workdir sharing one corpus; paired
# comparisons with `ume score --vs` (docs/history/RESULTS_log.md, "A saturated dense model").
# Usage (resumable; finished runs are kept):
#   [LANE_B=run,run] [LANE_A=run,run] [VS=HYP_DIR] bash scripts/experiment_small_saturated.sh \
#     [WORKDIR] [DENSE_EXPDIR]
# LANE_A (default dense_continued) runs in WORKDIR, LANE_B in WORKDIR_b; every UME run is paired
# with VS/hyp_SPLIT.txt (default WORKDIR/runs/dense_continued). With the kept hypotheses of a
# finished dense_continued (docs/experiment_small/hyps/sat_dense_continued), both cores can run
# UME recipes: LANE_A=ume_x LANE_B=ume_y VS=docs/experiment_small/hyps/sat_dense_continued
# SET_A / SET_B: plan changes for that lane's workdir (`ume experiment --set`, space-separated
# KEY=VALUE), e.g. SET_B="balance_coef=0 z_loss_coef=0"; a changed plan needs a new WORKDIR.
# CORPUS: an existing complete `paper` corpus to link as WORKDIR/data instead of synthesising.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work_small_sat}
DENSE=${2:-models/small/dense_small}
LANE_B=${LANE_B:-ume_kmeans_no_freeze}
LANE_A=${LANE_A:-dense_continued}
VS=${VS:-$W/runs/dense_continued}
UME=${UME:-.venv/bin/ume}  # UME=echo: print the commands only
SET_A=${SET_A:-} SET_B=${SET_B:-}
export OMP_NUM_THREADS=1
if [ -n "${CORPUS:-}" ] && [ ! -e "$W/data" ]; then
  mkdir -p "$W" && ln -sfn "$(realpath "$CORPUS")" "$W/data"
fi
$UME data synth --preset paper --out "$W/data"  # the corpus the plan names (seed 0); reused
mkdir -p "${W}_b" && ln -sfn "$(realpath -m "$W/data")" "${W}_b/data"
side_log="${W}_b.log"; [ "$UME" = echo ] && side_log=/dev/stdout  # a dry run keeps the log
# shellcheck disable=SC2086  # SET_* split into one --set per KEY=VALUE
$UME experiment --preset small_6k --workdir "${W}_b" --model "$DENSE" \
  --runs "dense,$LANE_B" ${SET_B:+$(printf -- '--set %s ' $SET_B)} > "$side_log" 2>&1 &
side=$!
# shellcheck disable=SC2086
$UME experiment --preset small_6k --workdir "$W" --model "$DENSE" --runs "dense,$LANE_A" \
  ${SET_A:+$(printf -- '--set %s ' $SET_A)}
wait "$side"
for lane in "$W:$LANE_A" "${W}_b:$LANE_B"; do  # score each lane's UME runs in its workdir
  lane_w=${lane%%:*} lane_runs=${lane#*:}
  for run in ${lane_runs//,/ }; do
    [ "$run" = dense_continued ] && continue
    dir="$lane_w/runs/$run"
    for split in test dev; do
      $UME score --ref "$W/data/$split/text" --hyp "$dir/hyp_$split.txt" --vs "$VS/hyp_$split.txt"
    done
    $UME score --ref "$W/data/test_heldout/text" --hyp "$dir/hyp_heldout.txt" \
      --vs "$VS/hyp_heldout.txt"
  done
done
