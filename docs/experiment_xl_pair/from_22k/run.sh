#!/usr/bin/env bash
# UME vs dense_continued, 2,000 steps each, from the saturated 22,000-step dense (xlP/sat).
cd /work/xlrun4
export PYTHONPATH=/work/xlrun4 OMP_NUM_THREADS=1
UME=/work/main/.venv/bin/ume
S=/work/xlP/sat/runs/dense_continued
for l in c d; do mkdir -p /work/xlQ/lane_$l; ln -sfn /work/xl16/data /work/xlQ/lane_$l/data; done
$UME experiment --preset xl --workdir /work/xlQ/lane_c --model $S --runs dense,ume_kmeans_no_freeze \
  --set extra_steps=2000 --set extra_minutes=60 > /work/xlQ/lane_c.log 2>&1 &
side=$!
$UME experiment --preset xl --workdir /work/xlQ/lane_d --model $S --runs dense,dense_continued \
  --set extra_steps=2000 --set extra_minutes=60 > /work/xlQ/lane_d.log 2>&1
wait $side
echo done > /work/xlQ/done
