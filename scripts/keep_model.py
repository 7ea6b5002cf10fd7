"""Keep a trained experiment dir in the repository as a start point for later runs (not package
data: the package's bundled models have a 30 MB budget, tests/test_bundled.py): config,
tokenizer, CMVN, dev curve, train_info, the scores of an `ume experiment` row if given, and
the weights (float16 by default, half the bytes; they load as float32). --results: an `ume
experiment` results.json (with --run) or one evaluate_run row (experiment_xl_cycle.sh's).

Usage:
    python scripts/keep_model.py --exp /work/xl16_long/dense --out models/xl/dense_12k \\
        --results /work/xlL/lane_a/results.json --run dense \\
        --command "bash scripts/experiment_xl.sh W && bash scripts/experiment_xl_long.sh W"
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from ume.expdir import MODEL_FILE, copy_experiment_assets, load_experiment, save_weights

KEEP = ("config.yaml", "curve.jsonl", "train_info.json")
SCORES = ("test_mer", "heldout_mer", "heldout_synth_mer", "heldout_text_mer", "dev_mer")
SCORES_EXTRA = ("train_subset_mer", "test_cer_zh", "test_wer_en")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exp", required=True, type=Path, help="trained experiment dir")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--results", type=Path, help="an `ume experiment` results.json")
    ap.add_argument("--run", default="dense", help="the row of --results that is this model")
    ap.add_argument("--command", required=True, help="what trained it (goes into scores.json)")
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    args = ap.parse_args()
    _, _, model = load_experiment(args.exp)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    copy_experiment_assets(args.exp, out)
    for name in KEEP:
        if (args.exp / name).is_file():
            shutil.copy(args.exp / name, out / name)
    save_weights(model, out / MODEL_FILE, dtype=getattr(torch, args.dtype))
    card: dict = {"command": args.command, "weights_dtype": args.dtype}
    if args.results:
        rows = json.loads(args.results.read_text(encoding="utf-8"))
        # one evaluate_run row (experiment_xl_cycle.sh's OUT/<lane>/results.json), or an
        # `ume experiment` results.json ({"runs": {run: row}})
        row = rows if "test_mer" in rows else rows.get("runs", rows)[args.run]
        card["scores_attention_rescoring_fp32"] = {
            k: row[k] for k in (*SCORES, *SCORES_EXTRA) if k in row
        }
        card["scored_by"] = str(args.results)
    (out / "scores.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    print(f"kept {args.exp} -> {out} ({(out / MODEL_FILE).stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
