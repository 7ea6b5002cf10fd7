#!/usr/bin/env bash
# The xl regime on two CPU cores: a corpus no model memorises (Debian documentation + fortunes,
# ~3,200 Mandarin characters, the wide voice set with channels, four test splits), a dense model
# trained from scratch on it, then the same continuation for more dense training and for UME.
#   1. ume data synth --preset xl_16k   (~14 h of train audio; the full `xl` preset is ~107 h
#      with the same dev/test splits: PRESET=xl)
#   2. dense from scratch: configs/xl.yaml (3,000 steps, cosine), one thread
#   3. two one-thread lanes side by side (configs/experiment_xl.yaml, 1,500 extra steps):
#        lane a: dense_continued            (WORKDIR)
#        lane b: ume_kmeans_fast_no_freeze  (WORKDIR_b; or the runs in $LANE_B)
#   4. paired bootstrap of UME vs dense_continued on test, dev and the three generalisation
#      splits (held-out voices, held-out synthesiser, held-out text domain)
# Usage (resumable: finished steps are kept):  [LANE_B=run] [SEED=n] bash scripts/experiment_xl.sh [WORKDIR]
# SEED: `--set seed=N` for both lanes (another seed of the same comparison; new WORKDIR).
# TRAIN_ARGS / EXP_ARGS: extra `ume train` / `ume experiment` arguments (a smoke test:
#   PRESET=xl_tiny TRAIN_ARGS="--set train.max_steps=4" EXP_ARGS="--set extra_steps=2" ...)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work_xl}
PRESET=${PRESET:-xl_16k}
LANE_B=${LANE_B:-ume_kmeans_fast_no_freeze}
UME=${UME:-.venv/bin/ume}
SEED=${SEED:-}
read -r -a train_args <<< "${TRAIN_ARGS:-}"
read -r -a exp_args <<< "${EXP_ARGS:-}"
export OMP_NUM_THREADS=1
D="$W/data"
$UME data synth --preset "$PRESET" --out "$D" --workers 2
if [ ! -f "$W/dense/train_info.json" ]; then
  $UME train --preset xl --train "$D/train" --dev "$D/dev" --exp "$W/dense" \
    --cache-dir "$D/.cache" --no-progress "${train_args[@]}" > "$W/dense_train.log" 2>&1
fi
mkdir -p "${W}_a" "${W}_b"
for lane in a b; do ln -sfn "$(realpath "$D")" "${W}_$lane/data"; done
set_seed=()
[ -n "$SEED" ] && set_seed=(--set "seed=$SEED")
set_seed+=("${exp_args[@]}")
$UME experiment --preset xl --workdir "${W}_b" --model "$W/dense" --runs "dense,$LANE_B" \
  "${set_seed[@]}" > "${W}_b.log" 2>&1 &
side=$!
$UME experiment --preset xl --workdir "${W}_a" --model "$W/dense" --runs dense,dense_continued \
  "${set_seed[@]}" > "${W}_a.log" 2>&1
wait "$side"
VS="${W}_a/runs/dense_continued"
for run in ${LANE_B//,/ }; do
  dir="${W}_b/runs/$run"
  for pair in test:test dev:dev test_heldout:heldout test_heldout_synth:heldout_synth \
    test_heldout_text:heldout_text; do
    split=${pair%%:*} hyp=${pair#*:}
    echo "== $run vs dense_continued: $split"
    $UME score --ref "$D/$split/text" --hyp "$dir/hyp_$hyp.txt" --vs "$VS/hyp_$hyp.txt"
  done
done
