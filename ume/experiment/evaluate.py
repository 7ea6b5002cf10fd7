"""Evaluate a finished run: test CER/WER/MER (+ held-out voices), MER on a fixed subset of the
train split (the generalisation gap: a model that decodes its train set far better than dev is
data-bound, and extra capacity cannot help it), RTF, parameter counts, and merge the row into
WORKDIR/results.json.

Example:
    >>> row = evaluate_run("work/runs/dense", "work/data")
    >>> update_results("work/results.json", "dense", row)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ume.bench.rtf import load_waves, measure_rtf
from ume.data.loader import FeatureStore
from ume.data.manifest import load_manifest, write_text_file
from ume.decode.runner import decode_store, references
from ume.decode.score import score
from ume.expdir import atomic_write_json, load_experiment
from ume.model.params import param_report

log = logging.getLogger(__name__)

TRAIN_SUBSET_UTTS = 400  # every (N // 400)-th train utterance, in manifest order


def score_split(model, tok, cfg, data_dir: Path, mode: str, out_hyp: Path, subset: int = 0) -> dict:
    """Decode and score the Kaldi dir `data_dir` (`subset` > 0: an evenly spaced, fixed subset
    of that many utterances)."""
    utts, skipped = load_manifest(data_dir)
    if subset and len(utts) > subset:
        utts = utts[:: len(utts) // subset][:subset]
    store = FeatureStore.build(utts, cfg.features, progress=False)
    hyps = decode_store(model, store, tok, mode)
    write_text_file(hyps, out_hyp)
    res = score(references(store), hyps)
    res["skipped"] = len(skipped) + len(store.skipped)
    return res


# Test splits beside `test` (seen voices, new sentences): (split dir, suffix of the hypothesis
# file and of the row's key): hyp_heldout.txt -> heldout_mer, and so on. The last two exist in
# the xl corpora only (ume/data/synth_plan_pool.py).
GENERALISATION_SPLITS = (
    ("test_heldout", "_heldout"),
    ("test_heldout_synth", "_heldout_synth"),
    ("test_heldout_text", "_heldout_text"),
)


def evaluate_run(
    run_dir: str | Path,
    data_root: str | Path,
    mode: str = "attention_rescoring",
    rtf_utts: int = 32,
    threads: int | None = None,
) -> dict:
    """Decode test and every generalisation split of `data_root` that exists (held-out voices,
    held-out synthesiser, held-out text domain), measure RTF; returns a results row.
    threads: torch threads (None: keep the process setting, i.e. OMP_NUM_THREADS or all cores);
    the row records it as rtf_threads."""
    run, data = Path(run_dir), Path(data_root)
    if threads:
        torch.set_num_threads(threads)
    cfg, tok, model = load_experiment(run)
    test = score_split(model, tok, cfg, data / "test", mode, run / "hyp_test.txt")
    row = {
        "test_mer": round(test["mer"], 2),
        "test_cer_zh": round(test["cer_zh"], 2),
        "test_wer_en": round(test["wer_en"], 2),
        "decode_mode": mode,
    }
    for split, suffix in GENERALISATION_SPLITS:
        if (data / split / "wav.scp").is_file():
            res = score_split(model, tok, cfg, data / split, mode, run / f"hyp{suffix}.txt")
            row[f"{suffix[1:]}_mer"] = round(res["mer"], 2)
    dev_mer = None
    if (data / "dev" / "wav.scp").is_file():
        dev = score_split(model, tok, cfg, data / "dev", mode, run / "hyp_dev.txt")
        dev_mer = round(dev["mer"], 2)
    row["dev_mer"] = dev_mer
    row["train_subset_mer"] = train_subset_mer(run, data, mode, (cfg, tok, model))
    waves = load_waves(str(data / "test"), rtf_utts)
    row["rtf_b1"] = round(measure_rtf(model, cfg.features, waves, 1), 5)
    row["rtf_b16"] = round(measure_rtf(model, cfg.features, waves, 16), 5)
    row["rtf_threads"] = torch.get_num_threads()
    info_path = run / "train_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    row["train_seconds"] = info.get("train_seconds")
    row["train_cpu_seconds"] = info.get("train_cpu_seconds")  # pauses excluded
    row["train_steps"] = info.get("steps")
    row.update({k: v for k, v in param_report(model).items() if k != "params_expert"})
    return row


def train_subset_mer(
    run_dir: str | Path, data_root: str | Path, mode: str = "attention_rescoring", loaded=None
) -> float | None:
    """MER on :data:`TRAIN_SUBSET_UTTS` fixed train utterances (None without a train split)."""
    run, data = Path(run_dir), Path(data_root)
    if not (data / "train" / "wav.scp").is_file():
        return None
    cfg, tok, model = loaded or load_experiment(run)
    out = run / "hyp_train_subset.txt"
    res = score_split(model, tok, cfg, data / "train", mode, out, subset=TRAIN_SUBSET_UTTS)
    return round(res["mer"], 2)


def update_results(path: str | Path, run: str, row: dict) -> dict:
    """Merge one run's row into results.json ({"runs": {name: row}}) atomically."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    data.setdefault("runs", {})[run] = row
    atomic_write_json(data, path)
    return data


def format_results(data: dict) -> str:
    """Markdown table of results.json rows."""
    cols = [
        "test_mer",
        "test_cer_zh",
        "test_wer_en",
        "heldout_mer",
        "dev_mer",
        "train_subset_mer",
        "rtf_b1",
        "rtf_b16",
        "train_seconds",
        "params_total",
        "params_active",
        "rel_change_vs_dense_pct",
        "rel_ci95_vs_dense_pct",
        "rel_change_vs_dense_continued_pct",
        "rel_ci95_vs_dense_continued_pct",
        "rel_ci95_vs_dense_continued_heldout_pct",
        "minutes_to_dense_dev_mer",
        "minutes_to_ume_dev_mer",
        "minutes_to_scratch_dev_mer",
    ]
    rows = data.get("runs", {})
    for pos, extra in ((4, "heldout_synth_mer"), (5, "heldout_text_mer")):
        if any(extra in r for r in rows.values()):  # xl corpora: two more test splits
            cols.insert(pos, extra)
            cols.append(f"rel_ci95_vs_dense_continued_{extra[:-4]}_pct")
    lines = ["| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in rows.items():
        vals = [row.get(c) for c in cols]
        cells = [
            "-" if v is None else ("..".join(map(str, v)) if isinstance(v, list) else str(v))
            for v in vals
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if data.get("plan_set"):
        lines.append("\nPlan changed from the preset's: --set " + " --set ".join(data["plan_set"]))
    return "\n".join(lines)
