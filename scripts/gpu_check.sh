#!/usr/bin/env bash
# GPU check (issue 15): on a CUDA machine, train the tiny preset briefly on CUDA and on the CPU,
# decode the test split with each model on both devices, and print
#   - training and decoding speed, CUDA vs CPU (ratios);
#   - whether the texts decoded on CUDA equal those decoded on the CPU for the same model
#     (fp32 weights; the bf16-trained CUDA model is decoded in fp32 on both devices);
#   - CTC posteriors of one model on CUDA (fp32 and bf16 autocast) vs the CPU: max abs
#     difference and frame argmax agreement (meaningful even when 60 steps decode little);
#   - bench rtf on both devices.
# One prepared script, so a short GPU lease is spent measuring, not typing.
#
# Usage: bash scripts/gpu_check.sh [WORKDIR]        (STEPS=60 by default; PY=.venv/bin/python)
# Output: WORKDIR/gpu_check.json and a summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-60}
W=${1:-$(mktemp -d /tmp/ume_gpu_check.XXXXXX)}
mkdir -p "$W"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
"$PY" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: CUDA is not available here; run this on a machine with a GPU")
print("gpu:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| cuda", torch.version.cuda)
PY

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
