#!/usr/bin/env bash
# The xl regime's long pair: from one trained dense model, EXTRA_STEPS more steps of dense training
# (dense_continued) and of UME (UME_RUN, chosen on dev from the 2,000-step pairs in
# docs/RESULTS.md), one thread each, side by side; then, on the core the dense lane frees first,
# the saturation check the issue asks for: SAT_STEPS more dense steps from the longer dense model
# (does more dense training still gain, CI excluding 0?).
#   lane a: dense_continued   START -> OUT/lane_a   (then OUT/sat: +SAT_STEPS from lane_a's model)
#   lane b: UME_RUN           START -> OUT/lane_b
#   paired bootstraps on test, dev and the three generalisation splits -> OUT/scores.txt
# Usage (resumable: `ume experiment` keeps finished runs):
#   [EXTRA_STEPS=8000] [SAT_STEPS=2000] [UME_RUN=ume_kmeans_no_freeze] [SEED=n] \
#     bash scripts/experiment_xl_pair.sh DATA_DIR START_DENSE_EXP OUT
#   SEED: `--set seed=N` for every lane (another seed of the same pair; a new OUT); score the
#   seeds together with scripts/score_seeds.sh (CI over utterances and runs). SAT_STEPS=0: no
#   saturation lane. Caution: a SAT_STEPS cycle much shorter than EXTRA_STEPS mostly measures
#   the lr re-warm, not the model's headroom (2,000 steps said "saturated" where 8,000 gained
#   10%: docs/RESULTS.md); SAT_STEPS=$EXTRA_STEPS is the real check (+65 min per 8,000 steps).
#   LANES="a b" (default) runs both lanes side by side; LANES=a or LANES=b runs one (one core,
#   e.g. one lane per session when a pair does not fit in one), and the scores are written once
#   both lanes' hypotheses are there. DATA_DIR may hold any corpus of the xl regime (xl_16k, or
#   the 133 h xl): its summary.json names the preset, passed on as `--set corpus=...`.
#   REFS=DIR: score on DIR/<split>/text instead of DATA_DIR's (scripts/unseen_subset.py: only
#   the sentences START never trained on), into OUT/scores_<DIR's name>.txt.
#   e.g. bash scripts/experiment_xl_pair.sh work_xl/data models/xl/dense_22k work_xl_pair2
# About 2 h on two cores (2-core AMD EPYC, one thread per run) for 8,000 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 3 ] || { sed -n 2,25p "$0" >&2; exit 2; }
D=$(realpath "$1") START=$2 OUT=$3
UME=${UME:-.venv/bin/ume}
EXTRA_STEPS=${EXTRA_STEPS:-8000}
SAT_STEPS=${SAT_STEPS:-2000}
UME_RUN=${UME_RUN:-ume_kmeans_no_freeze}
SEED=${SEED:-}
seed_set=()
[ -z "$SEED" ] || seed_set=(--set "seed=$SEED")
export OMP_NUM_THREADS=1
# START: a trained dense exp dir, or a bundled model dir (ume/models/dense_xl: weights + card)
for need in "$START/model.safetensors" "$D/train" "$D/dev" "$D/test"; do
  [ -e "$need" ] || { echo "missing $need (DATA_DIR is the xl corpus' data dir, START a trained dense exp or bundled model)" >&2; exit 2; }
done
LANES=${LANES:-a b}
case " $LANES " in *" a "* | *" b "*) ;; *) echo "LANES must name a, b or both, not '$LANES'" >&2; exit 2;; esac
# the corpus preset (xl_16k: the plan's default, no --set, so older workdirs resume unchanged)
corpus=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["preset"])' "$D/summary.json")
[ "$corpus" = xl_16k ] || seed_set+=(--set "corpus=$corpus")
for lane in lane_a lane_b sat; do mkdir -p "$OUT/$lane"; ln -sfn "$D" "$OUT/$lane/data"; done
# the fbank cache, once, before lanes that start together would each compute it (133 h: ~7.6 GB)
$UME data fbank --model "$START" --no-progress "$D/train" "$D/dev" >> "$OUT/fbank.log"
# a guard, not a budget: 8,000 UME steps take ~95 min at one thread
minutes=$(( EXTRA_STEPS * 3 / 200 + 30 ))
side=
if [[ " $LANES " == *" b "* ]]; then
  $UME experiment --preset xl --workdir "$OUT/lane_b" --model "$START" --runs "dense,$UME_RUN" \
    --set "extra_steps=$EXTRA_STEPS" --set "extra_minutes=$minutes" "${seed_set[@]}" \
    > "$OUT/lane_b.log" 2>&1 &
  side=$!
fi
if [[ " $LANES " == *" a "* ]]; then
  $UME experiment --preset xl --workdir "$OUT/lane_a" --model "$START" --runs dense,dense_continued \
    --set "extra_steps=$EXTRA_STEPS" --set "extra_minutes=$minutes" "${seed_set[@]}" \
    > "$OUT/lane_a.log" 2>&1
  if [ "$SAT_STEPS" -gt 0 ]; then
    $UME experiment --preset xl --workdir "$OUT/sat" --model "$OUT/lane_a/runs/dense_continued" \
      --runs dense,dense_continued --set "extra_steps=$SAT_STEPS" --set extra_minutes=60 \
      "${seed_set[@]}" > "$OUT/sat.log" 2>&1
  fi
fi
[ -z "$side" ] || wait "$side"

A="$OUT/lane_a/runs" B="$OUT/lane_b/runs/$UME_RUN" S="$OUT/sat/runs"
R=${REFS:-$D} scores="$OUT/scores.txt"
[ -z "${REFS:-}" ] || scores="$OUT/scores_$(basename "$REFS").txt"
for need in "$A/dense_continued/hyp_test.txt" "$B/hyp_test.txt"; do
  [ -e "$need" ] || { echo "no $need yet: run the other lane (LANES=a or LANES=b) to score the pair"; exit 0; }
done
for pair in test:test dev:dev test_heldout:heldout test_heldout_synth:heldout_synth \
  test_heldout_text:heldout_text; do
  split=${pair%%:*} hyp=${pair#*:}
  echo "== $UME_RUN vs dense_continued (+$EXTRA_STEPS each): $split"
  $UME score --ref "$R/$split/text" --hyp "$B/hyp_$hyp.txt" --vs "$A/dense_continued/hyp_$hyp.txt"
  echo "== dense_continued (+$EXTRA_STEPS) vs its start: $split"
  $UME score --ref "$R/$split/text" --hyp "$A/dense_continued/hyp_$hyp.txt" --vs "$A/dense/hyp_$hyp.txt"
  [ -e "$S/dense_continued/hyp_$hyp.txt" ] || continue  # no saturation lane ran
  echo "== saturation: +$SAT_STEPS more dense steps vs dense_continued (+$EXTRA_STEPS): $split"
  $UME score --ref "$R/$split/text" --hyp "$S/dense_continued/hyp_$hyp.txt" --vs "$S/dense/hyp_$hyp.txt"
done | tee "$scores"
