#!/usr/bin/env bash
# Compare two systems trained more than once (seeds) on test, dev and every generalisation split
# the corpus has (held-out voices, held-out synthesiser, held-out text domain):
# mean MER over the runs and a 95% CI from a bootstrap over utterances *and* runs
# (`ume score` with repeated --hyp/--vs; ume/decode/significance.py, seed_bootstrap_errors).
# Usage: bash scripts/score_seeds.sh DATA_DIR "BASE_RUN_DIR ..." "RUN_DIR ..."
#   each RUN_DIR holds hyp_test.txt, hyp_dev.txt, hyp_heldout.txt, ... (an experiment run, or a
#   kept copy under docs/experiment_small/hyps/), e.g.
#   H=docs/experiment_small/hyps; bash scripts/score_seeds.sh work_small_sat/data \
#     "$H/sat_dense_continued $H/sat_dense_continued_seed2" \
#     "$H/sat_ume_kmeans_fast_no_freeze+fine $H/sat_plus_fine_seed2"
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$1 BASE=$2 RUNS=$3
UME=${UME:-.venv/bin/ume}
# split dir in DATA_DIR : hyp file name in a run dir; splits a corpus lacks are skipped, said so
for pair in test:test dev:dev test_heldout:heldout test_heldout_synth:heldout_synth \
  test_heldout_text:heldout_text; do
  split=${pair%%:*} hyp=${pair#*:}
  ref="$DATA/$split/text"
  if [ ! -f "$ref" ]; then echo "== $hyp: skipped (no $ref in this corpus)"; continue; fi
  args=()
  for d in $RUNS; do args+=(--hyp "$d/hyp_$hyp.txt"); done
  for d in $BASE; do args+=(--vs "$d/hyp_$hyp.txt"); done
  echo "== $hyp"
  $UME score --ref "$ref" "${args[@]}" | tail -n 3
done
