#!/usr/bin/env bash
# GPU check: on a CUDA machine, train the tiny preset briefly on CUDA and on the CPU,
# decode the test split with each model on both devices, and print
#   - training and decoding speed, CUDA vs CPU (ratios);
#   - whether the texts decoded on CUDA equal those decoded on the CPU for the same model
#     (fp32 weights; the bf16-trained CUDA model is decoded in fp32 on both devices);
#   - CTC posteriors of one model on CUDA (fp32 and bf16 autocast) vs the CPU: max abs
#     difference and frame argmax agreement (meaningful even when 60 steps decode little);
#   - bench rtf on both devices;
#   - one MoE layer on CUDA, float32 and bf16 autocast (`ume bench moe --device cuda --peers`):
#     forward and fwd+bwd time and tokens/s of UME's layer (default loop, grouped, auto) vs the
#     dense FFN it replaces, WeNet's MoEFFNLayer and HF's Mixtral block, at decoding-sized
#     (37..512 tokens) and training-sized (2048, 8192 tokens) inputs.
# One prepared script, so a short GPU lease is spent measuring, not typing.
#
# Usage: bash scripts/gpu_check.sh [WORKDIR]        (STEPS=60 by default; PY=.venv/bin/python)
#        PARTS=moe bash scripts/gpu_check.sh [WORKDIR]    only the MoE layer step (~2-4 min)
#        PARTS=train ...                                  only the train/decode/rtf steps
#        PARTS=moe MOE_DEVICE=cpu MOE_SHAPES=24,16,4,2 ...  a CPU rehearsal of the MoE step
#          (no GPU needed: checks the step's plumbing, tests/test_gpu_check_script.py)
# Output: WORKDIR/gpu_check.json, WORKDIR/bench_moe_cuda_{float32,bfloat16,summary}.json
#         (MOE_DEVICE in place of cuda) and summaries on stdout.
# The WeNet column needs WeNet's source: ../shared/third_party or ./shared/third_party (or
# $UME_WENET_ORACLE); the HF columns need transformers; either missing leaves its column null.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-60}
PARTS=${PARTS:-all}
case "$PARTS" in all|train|moe) ;; *) echo "gpu_check: PARTS=$PARTS: use all, train or moe" >&2; exit 2;; esac
# MoE layer step: shapes TOKENS,D,E,K (the --peers sizes and training-sized batches),
# at most MOE_REPEATS timed rounds and MOE_BUDGET seconds per shape and pass
MOE_SHAPES=${MOE_SHAPES:-"37,144,8,2 128,144,8,2 512,144,8,2 37,256,8,2 128,256,8,2 512,256,8,2 2048,144,8,2 8192,144,8,2 8192,256,8,2"}
MOE_REPEATS=${MOE_REPEATS:-30}
MOE_BUDGET=${MOE_BUDGET:-2}
MOE_DEVICE=${MOE_DEVICE:-cuda}
W=${1:-$(mktemp -d /tmp/ume_gpu_check.XXXXXX)}
mkdir -p "$W"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
if [[ $PARTS != moe || $MOE_DEVICE != cpu ]]; then
"$PY" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: CUDA is not available here; run this on a machine with a GPU")
print("gpu:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| cuda", torch.version.cuda)
PY
fi

if [[ $PARTS != moe ]]; then
# data: the tiny synthetic corpus when the TTS engines are installed, else tones (no tools)
if command -v espeak-ng >/dev/null && command -v flite >/dev/null; then
  "$PY" -m ume.cli data synth --preset tiny --out "$W/data" >/dev/null
else
  "$PY" - "$W/data" <<'PY'
import sys
from pathlib import Path
import numpy as np, soundfile as sf
root = Path(sys.argv[1]); rng = np.random.default_rng(0)
texts = ["你好 HELLO", "我们 GO", "HELLO 世界", "好 OK", "GO HOME 你", "OK 我", "世界 好", "HOME 我们"]
for split, n in (("train", 48), ("test", 16)):
    d = root / split; d.mkdir(parents=True, exist_ok=True)
    wl, tl = [], []
    for i in range(n):
        t = np.arange(int((0.8 + 0.05 * (i % 9)) * 16000)) / 16000
        w = 0.3 * np.sin(2 * np.pi * (180 + 37 * (i % 8)) * t) + 0.05 * rng.standard_normal(t.size)
        p = d / f"{split}{i:03d}.wav"; sf.write(p, w.astype(np.float32), 16000)
        wl.append(f"{split}{i:03d} {p}"); tl.append(f"{split}{i:03d} {texts[i % 8]}")
    (d / "wav.scp").write_text("\n".join(wl) + "\n"); (d / "text").write_text("\n".join(tl) + "\n")
PY
fi

train() {  # device precision exp
  "$PY" -m ume.cli train --preset tiny --train "$W/data/train" --exp "$3" --device "$1" \
    --no-progress --set train.max_steps="$STEPS" --set train.eval_every=0 \
    --set train.checkpoint_every="$STEPS" --set train.average_last=1 \
    --set train.precision="$2" > "$3.train.log" 2>&1
}
decode() {  # device exp mode out -> prints seconds
  local t0 t1
  t0=$(date +%s.%N)
  "$PY" -m ume.cli decode --model "$2" --data "$W/data/test" --mode "$3" --out "$4" \
    --device "$1" > "$4.log" 2>&1
  t1=$(date +%s.%N)
  "$PY" -c "print(round($t1 - $t0, 2))"
}

echo "training $STEPS steps: cpu fp32, cuda fp32, cuda bf16 ..."
train cpu fp32 "$W/cpu"
train cuda fp32 "$W/cuda"
train cuda bf16 "$W/cuda_bf16"

declare -A DT
for exp in cpu cuda cuda_bf16; do
  for dev in cpu cuda; do
    for mode in ctc_greedy attention_rescoring; do
      DT[$exp.$dev.$mode]=$(decode "$dev" "$W/$exp" "$mode" "$W/hyp.$exp.$dev.$mode.txt")
    done
  done
done
for dev in cpu cuda; do
  "$PY" -m ume.cli bench rtf --model "$W/cpu" --data "$W/data/test" --device "$dev" \
    --rounds 1 --threads "$OMP_NUM_THREADS" --json > "$W/rtf.$dev.json"
done

"$PY" - "$W" "$STEPS" \
  "${DT[cpu.cpu.ctc_greedy]}" "${DT[cpu.cuda.ctc_greedy]}" \
  "${DT[cpu.cpu.attention_rescoring]}" "${DT[cpu.cuda.attention_rescoring]}" <<'PY'
import json, sys
from pathlib import Path
from ume.data.manifest import read_text_file
from ume.decode.score import score
w = Path(sys.argv[1]); steps = int(sys.argv[2])
dec = dict(zip(["greedy_cpu", "greedy_cuda", "resc_cpu", "resc_cuda"], map(float, sys.argv[3:7])))
info = {e: json.loads((w / e / "train_info.json").read_text()) for e in ("cpu", "cuda", "cuda_bf16")}
refs = read_text_file(w / "data" / "test" / "text")
out = {"steps": steps, "train_seconds": {e: i["train_seconds"] for e, i in info.items()},
       "decode_seconds_cpu_model": dec, "same_text_cpu_vs_cuda": {}, "mer": {}}
out["train_speedup_cuda_vs_cpu"] = round(info["cpu"]["train_seconds"] / max(1e-9, info["cuda"]["train_seconds"]), 2)
for exp in ("cpu", "cuda", "cuda_bf16"):
    for mode in ("ctc_greedy", "attention_rescoring"):
        a = read_text_file(w / f"hyp.{exp}.cpu.{mode}.txt")
        b = read_text_file(w / f"hyp.{exp}.cuda.{mode}.txt")
        same = sum(a[k] == b.get(k) for k in a)
        out["same_text_cpu_vs_cuda"][f"{exp}/{mode}"] = f"{same}/{len(a)}"
        out["mer"][f"{exp}/{mode}/cpu"] = round(score(refs, a)["mer"], 2)
        out["mer"][f"{exp}/{mode}/cuda"] = round(score(refs, b)["mer"], 2)
rtf = {d: json.loads((w / f"rtf.{d}.json").read_text()) for d in ("cpu", "cuda")}
out["rtf"] = {d: {k: round(v, 4) for k, v in r.items() if k.startswith("rtf_")} for d, r in rtf.items()}
out["rtf_b1_speedup_cuda_vs_cpu"] = round(rtf["cpu"]["rtf_b1"] / rtf["cuda"]["rtf_b1"], 2)
# numeric agreement, independent of how far 60 steps got: CTC posteriors of the CPU-trained
# model on the test split, CUDA fp32 and CUDA bf16-autocast vs CPU fp32
import torch
from ume.data.loader import FeatureStore
from ume.data.manifest import load_manifest
from ume.expdir import load_experiment
cfg, _, model = load_experiment(w / "cpu")
utts, _ = load_manifest(w / "data" / "test")
store = FeatureStore.build(utts, cfg.features, progress=False)
feats, lens = store.collate(list(range(len(store))))
def post(dev, amp):
    m = model.to(dev).eval()
    with torch.inference_mode(), torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
        enc, valid = m.encode(feats.to(dev), lens.to(dev))
        p = m.ctc_log_probs(enc).float().exp()
    return p.cpu(), valid.cpu()
ref, valid = post("cpu", False)
for name, dev, amp in (("cuda_fp32", "cuda", False), ("cuda_bf16", "cuda", True)):
    q, _ = post(dev, amp)
    d = (q - ref).abs()[valid]
    same = (q.argmax(-1) == ref.argmax(-1))[valid].float().mean()
    out[f"ctc_posterior_max_abs_diff_{name}"] = float(d.max())
    out[f"ctc_argmax_agreement_{name}"] = round(float(same), 4)
(w / "gpu_check.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
print(json.dumps(out, indent=2, ensure_ascii=False))
PY
echo "gpu_check: results in $W/gpu_check.json"
fi

if [[ $PARTS != train ]]; then
if [[ -z ${UME_WENET_ORACLE:-} ]]; then
  for c in ../shared/third_party/wenet_oracle.py shared/third_party/wenet_oracle.py; do
    if [[ -f $c ]]; then export UME_WENET_ORACLE=$PWD/$c; break; fi
  done
fi
[[ -n ${UME_WENET_ORACLE:-} ]] || echo "gpu_check: no WeNet oracle found: the WeNet columns stay null"
SHAPE_ARGS=()
for s in $MOE_SHAPES; do SHAPE_ARGS+=(--shape "$s"); done
for dtype in float32 bfloat16; do
  echo "bench moe on $MOE_DEVICE, $dtype: $((${#SHAPE_ARGS[@]} / 2)) shapes, at most" \
    "${MOE_BUDGET}s per shape and pass ..."
  if ! "$PY" -m ume.cli bench moe --device "$MOE_DEVICE" --dtype "$dtype" --peers \
      "${SHAPE_ARGS[@]}" --repeats "$MOE_REPEATS" --budget "$MOE_BUDGET" --json \
      > "$W/bench_moe_${MOE_DEVICE}_$dtype.json" 2> "$W/bench_moe_${MOE_DEVICE}_$dtype.log"; then
    tail -n 20 "$W/bench_moe_${MOE_DEVICE}_$dtype.log" >&2
    echo "gpu_check: bench moe $dtype failed (log: $W/bench_moe_${MOE_DEVICE}_$dtype.log)" >&2
    exit 1
  fi
done
"$PY" - "$W" "$MOE_DEVICE" <<'PY'
import json, sys
from pathlib import Path
w, dev = Path(sys.argv[1]), sys.argv[2]
out = {}
for dtype in ("float32", "bfloat16"):
    rows = json.loads((w / f"bench_moe_{dev}_{dtype}.json").read_text())
    print(f"\n{rows[0]['device']} ({rows[0]['gpu']}), {dtype}, autocast {rows[0]['autocast']}: "
          "tokens/s of one layer. UME = the default dispatch; UME/peer = UME's tokens/s over the "
          "peer's, grp/UME and auto/UME = those paths' over UME's (> 1: the first is faster)")
    print(f"{'tokens':>6} {'D':>4} {'pass':>8} {'UME tok/s':>11} {'dense tok/s':>11} "
          f"{'UME/dense':>9} {'UME/WeNet':>9} {'UME/HF':>7} {'grp/UME':>8} {'auto/UME':>8} {'auto':>7}")
    def inv(v):
        return None if v is None else round(1 / v, 3)
    cells = []
    for r in rows:
        cell = {
            "tokens": r["tokens"], "d": r["d"], "e": r["e"], "k": r["k"], "pass": r["pass"],
            "ume_tok_s": r["ours_tok_s"], "dense_tok_s": r["dense_tok_s"],
            "wenet_tok_s": r["wenet_tok_s"], "hf_tok_s": r["hf_tok_s"], "hf_best": r["hf_best"],
            "ume_vs_dense": r["tok_s_vs_dense"], "ume_vs_wenet": r["tok_s_vs_wenet"],
            "ume_vs_hf": inv(r["ratio_hf"]),
            "grouped_vs_ume": inv(r["ratio_grouped"]), "auto_vs_ume": inv(r["ratio_auto"]),
            "auto_path": r["auto_path"],
        }
        cells.append(cell)
        f = lambda v, width, p=".3f": f"{'-':>{width}}" if v is None else f"{v:>{width}{p}}"
        print(f"{r['tokens']:>6} {r['d']:>4} {r['pass']:>8} {f(cell['ume_tok_s'], 11, '.4g')} "
              f"{f(cell['dense_tok_s'], 11, '.4g')} {f(cell['ume_vs_dense'], 9)} "
              f"{f(cell['ume_vs_wenet'], 9)} {f(cell['ume_vs_hf'], 7)} "
              f"{f(cell['grouped_vs_ume'], 8)} {f(cell['auto_vs_ume'], 8)} {cell['auto_path']:>7}")
    out[dtype] = {k: rows[0][k] for k in ("device", "gpu", "dtype", "autocast")} | {"cells": cells}
(w / f"bench_moe_{dev}_summary.json").write_text(json.dumps(out, indent=1) + "\n")
print(f"\ngpu_check: MoE layer results in {w}/bench_moe_{dev}_{{float32,bfloat16,summary}}.json")
PY
fi
