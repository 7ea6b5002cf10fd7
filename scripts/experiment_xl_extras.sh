#!/usr/bin/env bash
# Two references beside scripts/experiment_xl.sh (same WORKDIR; run after it, or beside its
# lanes when a core is free):
#   1. moe_scratch: the UME shape (E 8, top-2, both encoder FFN slots, every block, normal
#      routers, balance + z-loss) trained from random weights with dense's own budget
#      (configs/xl.yaml: 3,000 steps, cosine): does upcycling reach it sooner?
#   2. the bundled dense_paper (trained on the fortune-text `paper` corpus) decoded on the xl
#      splits: how the old recogniser does on text, voices and channels it never saw
# Each model is decoded (attention rescoring) and scored on test, the three generalisation
# splits and dev; hypotheses land in WORKDIR/scratch and WORKDIR/bundled_on_xl.
# Usage: bash scripts/experiment_xl_extras.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work_xl}
UME=${UME:-.venv/bin/ume}
export OMP_NUM_THREADS=1
D="$W/data"
if [ ! -f "$W/scratch/moe_scratch/train_info.json" ]; then
  mkdir -p "$W/scratch"
  $UME train --preset xl --train "$D/train" --dev "$D/dev" --exp "$W/scratch/moe_scratch" \
    --cache-dir "$D/.cache" --no-progress --set model.moe.num_experts=8 \
    --set model.moe.top_k=2 --set 'model.moe.slots=[encoder_macaron, encoder_ffn]' \
    --set model.moe.layers=all --set model.moe.router_init=normal \
    --set model.moe.balance_coef=0.01 --set model.moe.z_loss_coef=0.001 \
    > "$W/scratch/train.log" 2>&1
fi
for pair in "$W/scratch/moe_scratch:$W/scratch" "ume/models/dense_paper:$W/bundled_on_xl"; do
  model=${pair%%:*} out=${pair#*:}
  mkdir -p "$out"
  for s in test:test test_heldout:heldout test_heldout_synth:heldout_synth \
    test_heldout_text:heldout_text dev:dev; do
    split=${s%%:*} name=${s#*:}
    $UME decode --model "$model" --data "$D/$split" --mode attention_rescoring \
      --out "$out/hyp_$name.txt"
    $UME score --ref "$D/$split/text" --hyp "$out/hyp_$name.txt" > "$out/score_$name.txt"
  done
done
