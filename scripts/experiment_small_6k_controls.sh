#!/usr/bin/env bash
# Issue 13: the controls of the `small_6k` comparison (docs/history/RESULTS_log.md, "A 6x longer
# continuation"), two one-thread lanes at a time, each lane its own workdir sharing one corpus:
#   c: dense_continued_frozen   (dense_continued with UME's freezing phases)
#   d: ume_kmeans_no_freeze     (UME with k-means routers, no freezing phase)
#   e: dense_wide_continued     (the capacity control trained as long as dense_continued)
#   f: moe_scratch_continued    (the scratch MoE trained as long as dense_continued)
#   g: ume_no_freeze            (no_freeze with the plain random routers: is k-means needed?)
#   h: ume_kmeans_drop_no_freeze (d + Drop-Upcycling at drop_small: more diverse experts)
# Lanes e and f continue the from-scratch runs of scripts/experiment_small.sh (its side workdir,
# SCRATCH, default work_small_b), copied in without their checkpoints.
# Usage (resumable; finished runs are kept):
#   [LANES="c d e f g h"] bash scripts/experiment_small_6k_controls.sh [WORKDIR] [DENSE] [SCRATCH]
# Then compare any two runs on the same utterances, e.g.
#   ume score --ref WORKDIR_d/data/test/text --hyp WORKDIR_d/runs/ume_kmeans_no_freeze/hyp_test.txt \
#     --vs WORKDIR/runs/dense_continued/hyp_test.txt      (WORKDIR: the small_6k comparison's)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-work_small_6k}
DENSE=${2:-work_small/runs/dense}
SCRATCH=${3:-work_small_b}
UME=${UME:-.venv/bin/ume}  # UME=echo: print the commands only
export OMP_NUM_THREADS=1
$UME data synth --preset paper --out "$W/data"  # the corpus the plan names (seed 0)

declare -A RUN=([c]=dense_continued_frozen [d]=ume_kmeans_no_freeze [e]=dense_wide_continued
  [f]=moe_scratch_continued [g]=ume_no_freeze [h]=ume_kmeans_drop_no_freeze)
declare -A BASE=([e]=dense_wide [f]=moe_scratch)

lane() {  # lane LETTER: one workdir, one run
  local l=$1 wd="${W}_$1"
  mkdir -p "$wd/runs" && ln -sfn "$(realpath "$W/data")" "$wd/data"
  if [ -n "${BASE[$l]:-}" ]; then
    local b=${BASE[$l]}
    if [ ! -f "$wd/runs/$b/train_info.json" ]; then
      mkdir -p "$wd/runs/$b"
      find "$SCRATCH/runs/$b" -mindepth 1 -maxdepth 1 ! -name checkpoints \
        -exec cp -r {} "$wd/runs/$b/" \;
    fi
    $UME experiment --preset small_6k --workdir "$wd" --runs "${RUN[$l]}"
  else
    $UME experiment --preset small_6k --workdir "$wd" --model "$DENSE" --runs "dense,${RUN[$l]}"
  fi
}

set -- ${LANES:-c d e f g h}
while [ $# -gt 0 ]; do  # two lanes side by side, one per core
  lane "$1" > "${W}_$1.log" 2>&1 &
  first=$!
  if [ $# -gt 1 ]; then lane "$2" > "${W}_$2.log" 2>&1; shift; fi
  wait "$first"
  shift
done
