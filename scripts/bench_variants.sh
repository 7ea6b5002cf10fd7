#!/usr/bin/env bash
# RTF of UME shapes vs their dense model, one paired `ume bench rtf --vs` run per shape.
# Upcycling adds compute but no training is needed to time it, so each shape is upcycled from
# DENSE (router_init normal: near-uniform load, like a trained, balanced UME) and timed.
# Usage: bash scripts/bench_variants.sh DENSE_DIR TEST_DATA_DIR OUT_DIR [THREADS]
# e.g.   bash scripts/bench_variants.sh ume/models/dense_paper work/bundle/data/test docs/bench/variants 2
set -euo pipefail
cd "$(dirname "$0")/.."
DENSE=${1:?dense experiment dir}
DATA=${2:?test data dir}
OUT=${3:?output dir for the JSON rows}
THREADS=${4:-2}
UME=.venv/bin/ume
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"
# name  slots  layers  top-k
while read -r name slots layers k; do
  $UME upcycle --dense "$DENSE" --out "$TMP/$name" --experts 8 --top-k "$k" --slots "$slots" \
    --layers "$layers" --router-init normal >/dev/null
  $UME bench rtf --model "$TMP/$name" --vs "$DENSE" --data "$DATA" --threads "$THREADS" \
    --max-utts 64 --json >"$OUT/$name.json"
  echo "$name done"
done <<'EOF'
k2_both_all encoder_macaron,encoder_ffn all 2
k2_ffn_all encoder_ffn all 2
k2_both_every_other encoder_macaron,encoder_ffn every_other 2
k2_ffn_every_other encoder_ffn every_other 2
k1_both_all encoder_macaron,encoder_ffn all 1
EOF
.venv/bin/python scripts/variants_table.py "$OUT"
