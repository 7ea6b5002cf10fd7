#!/usr/bin/env bash
# Issue 13: paired batch-1 RTF of upcycled shapes vs the `small` dense model, one thread,
# alternating rounds (ume bench rtf --vs). Shapes: the trained E8 top-2 UME (both encoder FFN
# slots, all blocks) and two cheaper upcycled shapes (top-1 in every other block; top-1 in one
# slot per block); compute does not depend on training for dropless routing.
# Usage: [UME_RUN=DIR] bash scripts/rtf_small.sh [WORKDIR] [OUT_DIR]
#   (needs work_small from experiment_small.sh; UME_RUN: the trained E8 top-2 run to time,
#   default WORKDIR/runs/ume, e.g. UME_RUN=work_small_6k_b/runs/ume_kmeans)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work_small}
OUT=${2:-docs/experiment_small}
UME=.venv/bin/ume
export OMP_NUM_THREADS=1
R="${W}_rtf"
[ -f "$R/ume_top1_every_other/model.safetensors" ] ||
  $UME upcycle --dense "$W/runs/dense" --out "$R/ume_top1_every_other" --experts 8 --top-k 1 \
    --layers every_other
[ -f "$R/ume_top1_one_slot/model.safetensors" ] ||
  $UME upcycle --dense "$W/runs/dense" --out "$R/ume_top1_one_slot" --experts 8 --top-k 1 \
    --slots encoder_ffn
for m in "${UME_RUN:-$W/runs/ume}" "$R/ume_top1_every_other" "$R/ume_top1_one_slot"; do
  $UME bench rtf --model "$m" --vs "$W/runs/dense" --data "$W/data/test" --max-utts 40 \
    --threads 1 --rounds "${ROUNDS:-9}" --stream-chunk 0 --json > "$OUT/rtf_$(basename "$m").json"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1], 'b1 ratio', round(r['ratio_b1'],3), r['ratio_b1_per_round'], 'b16', round(r['ratio_b16'],3))" "$OUT/rtf_$(basename "$m").json"
done
