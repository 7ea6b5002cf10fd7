"""Package a trained run (dense or MoE) as a bundled model (ume/models/NAME): weights (fp16 by
default) + config + tokenizer + CMVN, scored on dev/test/held-out, with a model card
(MODEL_CARD.md + card.json). The model's name is the output directory's.

Example:
    python -m ume.experiment.bundle --exp work/paper_dense --data work/paper_data \\
        --out ume/models/dense_paper --command "bash scripts/train_bundled.sh"
    python -m ume.experiment.bundle --exp work_small_6k/runs/dense_continued \\
        --data work_small/data --out models/small/dense_small --dtype float32 \\
        --command "bash scripts/train_bundled_small.sh" --history "8,000 steps from scratch ..."

--unseen DIR (scripts/unseen_subset.py's output) also scores the shipped model's hypotheses on
DIR/<split>/text only: the utterances whose sentence the model never trained on, for a model
whose earlier training used another build of the corpus (docs/data.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from ume.data.manifest import read_text_file
from ume.data.synth import synthesize_slice
from ume.decode.score import score
from ume.errors import UmeError
from ume.expdir import (
    MODEL_FILE,
    atomic_write_json,
    copy_experiment_assets,
    load_experiment,
    save_weights,
)
from ume.experiment.evaluate import GENERALISATION_SPLITS, evaluate_run, score_split
from ume.machine import cpu_model

SLICE_UTTS = 60


def card_check(model_dir: Path, work: Path | None = None) -> dict:
    """Decode the first SLICE_UTTS paper-test utterances (re-synthesised, byte-identical) with
    the shipped weights; the card stores the result and tests/test_bundled.py recomputes it."""
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="ume_card_"))
    slice_dir = synthesize_slice("paper", "test", SLICE_UTTS, work)
    cfg, tok, model = load_experiment(model_dir)
    res = score_split(model, tok, cfg, slice_dir, CHECK_MODE, work / "hyp.txt")
    return {
        "data": f"paper test, first {SLICE_UTTS} utterances (ume.data.synth.synthesize_slice)",
        "mode": CHECK_MODE,
        "num_utts": res["num_utts"],
        "mer": round(res["mer"], 2),
        "cer_zh": round(res["cer_zh"], 2),
        "wer_en": round(res["wer_en"], 2),
    }


def unseen_scores(out: Path, unseen: Path) -> dict[str, dict]:
    """MER of the hypotheses in `out` (hyp_<split>.txt, written by evaluate_run) on the subsets
    `unseen`/<split>/text: {split: {"mer", "num_utts"}}, for every split both have."""
    res = {}
    for split, suffix in (("dev", "_dev"), ("test", "_test"), *GENERALISATION_SPLITS):
        ref, hyp = unseen / split / "text", out / f"hyp{suffix}.txt"
        if ref.is_file() and hyp.is_file():
            refs = read_text_file(ref)
            hyps = {k: v for k, v in read_text_file(hyp).items() if k in refs}
            r = score(refs, hyps)
            res[split] = {"mer": round(r["mer"], 2), "num_utts": r["num_utts"]}
    if not res:
        raise UmeError(f"--unseen {unseen}: no <split>/text there matches a hypothesis in {out}")
    return res


CHECK_MODE = "attention_rescoring"
DTYPES = ("float16", "float32")  # weights as shipped; float32 is bit-exact


def bundle(
    exp: Path,
    data: Path,
    out: Path,
    command: str,
    dtype: str = "float16",
    history: str = "",
    unseen: Path | None = None,
) -> dict:
    """Write the bundled model `out.name` from run `exp`. dtype "float32" ships the weights
    bit-exact (runs started from the bundle then equal runs started from `exp`); history: how
    the run was trained, when more than one command made it (goes into the card)."""
    if dtype not in DTYPES:
        raise UmeError(f"dtype {dtype!r}: use {' or '.join(DTYPES)}")
    cfg, _, model = load_experiment(exp)
    out.mkdir(parents=True, exist_ok=True)
    copy_experiment_assets(exp, out)
    shutil.copy(exp / "config.yaml", out / "config.yaml")
    save_weights(model, out / MODEL_FILE, dtype=getattr(torch, dtype))
    info = json.loads((exp / "train_info.json").read_text())
    if (exp / "curve.jsonl").is_file():
        shutil.copy(exp / "curve.jsonl", out / "curve.jsonl")
    if info.get("curve"):
        from ume.experiment.report import plot_curves

        plot_curves({"runs": {out.name: {"curve": info["curve"]}}}, out / "curve.png")
    row = evaluate_run(out, data)  # scored from the weights actually shipped
    check = card_check(out)
    summary = (
        json.loads((data / "summary.json").read_text()) if (data / "summary.json").is_file() else {}
    )
    card = {
        "command": command,
        "history": history,
        "dtype": dtype,
        "seed": cfg.train.seed,
        "data_preset": summary.get("preset"),
        "data_seed": summary.get("seed"),
        "train_seconds": info.get("train_seconds"),
        "train_steps": info.get("steps"),
        "threads": info.get("threads"),
        "machine": f"{cpu_model()} ({platform.machine()})",
        "decode_mode": row["decode_mode"],
        "dev_mer": row["dev_mer"],
        "test_mer": row["test_mer"],
        "test_cer_zh": row["test_cer_zh"],
        "test_wer_en": row["test_wer_en"],
        "heldout_mer": row.get("heldout_mer"),
        "heldout_synth_mer": row.get("heldout_synth_mer"),
        "heldout_text_mer": row.get("heldout_text_mer"),
        "rtf_b1": row["rtf_b1"],
        "params_total": row["params_total"],
        "params_active": row["params_active"],
        "weights_bytes": (out / MODEL_FILE).stat().st_size,
        "curve": info.get("curve", []),
        "check": check,
        **({"unseen_refs": str(unseen), "unseen": unseen_scores(out, unseen)} if unseen else {}),
    }
    atomic_write_json(card, out / "card.json")
    kind = "MoE" if card["params_active"] < card["params_total"] else "dense"
    lines = [
        f"# Bundled {kind} model: `{out.name}`",
        "",
        f"A bilingual (Mandarin characters + English BPE) U2++ {kind} Conformer trained by this",
        f"repo's own command on the `{card['data_preset']}` preset of the embedded synthetic corpus.",
        f"{dtype} safetensors; loaded as float32.",
        "",
        f"- command: `{command}`",
        *([f"- history: {history}"] if history else []),
        f"- seed: {card['seed']}; data preset: {card['data_preset']} (synth seed {card['data_seed']})",
        f"- training (last command): {card['train_steps']} steps, {card['train_seconds']} s on {card['threads']} "
        f"threads ({card['machine']})",
        f"- parameters: {card['params_total']:,} ({card['params_active']:,} active per frame);"
        f" weights file {card['weights_bytes'] / 1e6:.1f} MB",
        f"- decoding: {card['decode_mode']}",
        "",
        "| split | MER % |",
        "|---|---|",
        f"| dev | {card['dev_mer']} |",
        f"| test | {card['test_mer']} (CER zh {card['test_cer_zh']}, WER en {card['test_wer_en']}) |",
        f"| test, held-out voices | {card['heldout_mer']} |",
        *(
            f"| test, held-out {name} | {card[key]} |"
            for name, key in (
                ("synthesiser", "heldout_synth_mer"),
                ("text domain", "heldout_text_mer"),
            )
            if card[key] is not None
        ),
        *(
            [
                "",
                "Only the utterances whose sentence this model never trained on"
                f" (refs `{unseen}`, scripts/unseen_subset.py):",
                "",
                "| split | utterances | MER % |",
                "|---|---|---|",
                *(f"| {k} | {v['num_utts']} | {v['mer']} |" for k, v in card["unseen"].items()),
            ]
            if unseen
            else []
        ),
        "",
        f"Check: the first {SLICE_UTTS} paper-test utterances, re-synthesised, decode to MER "
        f"{check['mer']} ({CHECK_MODE}); `pytest tests/test_bundled.py` recomputes it.",
        "Dev curve (ctc greedy, 200-utt dev subset, MER vs training minutes): `curve.jsonl`,"
        " plotted in `curve.png`.",
    ]
    (out / "MODEL_CARD.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return card


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exp", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--command", default="bash scripts/train_bundled.sh")
    ap.add_argument("--dtype", default="float16", choices=DTYPES)
    ap.add_argument("--history", default="", help="how the run was made, if by several commands")
    ap.add_argument(
        "--unseen", type=Path, help="also score on DIR/<split>/text (scripts/unseen_subset.py)"
    )
    args = ap.parse_args()
    card = bundle(
        args.exp, args.data, args.out, args.command, args.dtype, args.history, args.unseen
    )
    print(json.dumps({k: v for k, v in card.items() if k != "curve"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
