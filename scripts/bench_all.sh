#!/usr/bin/env bash
# Every table of docs/PERFORMANCE.md in one go, on a quiet machine (run nothing else meanwhile).
# Usage: bash scripts/bench_all.sh UME_DIR DENSE_DIR TEST_DATA_DIR OUT_DIR [THREADS]
# e.g.   bash scripts/bench_all.sh work_large/runs/ume work_large/runs/dense \
#            work_large/data/test docs/bench/2thread 2
# Takes ≈ 15-20 minutes on the 2-core dev box (2026-11-29).
set -euo pipefail
cd "$(dirname "$0")/.."
UME_DIR=${1:?UME experiment dir}
DENSE=${2:?dense experiment dir}
DATA=${3:?test data dir}
OUT=${4:?output dir}
T=${5:-2}
UME=.venv/bin/ume
mkdir -p "$OUT"
export OMP_NUM_THREADS=$T
step() { echo "[$(date +%H:%M:%S)] $*" >&2; }

step "rtf pair (dense vs UME, b1/b16, full + streaming chunk 16)"
$UME bench rtf --model "$UME_DIR" --vs "$DENSE" --data "$DATA" --threads "$T" --max-utts 64 \
  --json >"$OUT/rtf_pair.json"
step "where the UME encoder's extra time goes (FLOPs, expert weights, overhead)"
$UME bench gap --model "$UME_DIR" --vs "$DENSE" --data "$DATA" --threads "$T" --profile \
  >"$OUT/gap.txt" 2>&1
step "UME shapes vs dense"
bash scripts/bench_variants.sh "$DENSE" "$DATA" "$OUT/variants" "$T" >"$OUT/variants.md"
step "training throughput"
$UME bench train --preset paper --threads "$T" >"$OUT/bench_train.txt"
step "MoE layer dispatch (54 shapes)"
$UME bench moe --threads "$T" >"$OUT/bench_moe.txt"
step "torch.compile"
$UME bench compile --model "$DENSE" --model "$UME_DIR" --threads "$T" >"$OUT/compile.txt"
step "ONNX export check"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for m in "$DENSE" "$UME_DIR"; do
  echo "== $m"
  $UME export --model "$m" --out "$TMP/enc.onnx" --check --data "$DATA" --utts 16 --threads "$T"
done >"$OUT/export.txt" 2>&1
step "done: $OUT"
