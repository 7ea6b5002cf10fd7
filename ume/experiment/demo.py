"""`ume demo`: the README's main job, end to end on the embedded corpus.

1. synthesise the preset's corpus into WORKDIR/data (skipped if already there);
2. take the dense model (bundled ume/models/dense_paper by default, or train it with --from-scratch)
   and fine-tune it briefly on the corpus -> WORKDIR/runs/dense;
3. decode and score test (+ held-out voices), measure RTF -> WORKDIR/results.json;
4. run the UME comparison of the preset (dense-continued vs upcycled MoE) when available.

Example:
    ume demo --preset quick --workdir work
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ume.config import load_config, preset_config
from ume.data.synth import synthesize
from ume.expdir import MODEL_FILE
from ume.experiment.evaluate import format_results
from ume.experiment.plan import BUNDLED

log = logging.getLogger(__name__)


def train_run(
    run_dir: Path,
    data: Path,
    config_path: Path,
    overrides: list[str],
    init_dir: Path | None = None,
    train_section_from: Path | None = None,
) -> None:
    """Train (or resume) one run unless it already finished (model.safetensors present)."""
    from ume.train.trainer import Trainer

    if (run_dir / MODEL_FILE).is_file() and (run_dir / "train_info.json").is_file():
        log.info("%s already finished; skipping", run_dir)
        return
    cfg = load_config(config_path, overrides)
    if train_section_from is not None:
        cfg.train = load_config(train_section_from, overrides).train
    Trainer(
        cfg,
        run_dir,
        str(data / "train"),
        str(data / "dev"),
        init_dir=str(init_dir) if init_dir else None,
        cache_dir=str(data / ".cache"),
    ).run()


def run_demo(args: argparse.Namespace) -> int:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = work / "data"
    synthesize(args.preset, data, seed=0)
    preset = preset_config(args.preset)
    runs = work / "runs"
    if args.from_scratch:
        train_run(runs / "dense", data, preset, [])
    else:
        base = Path(args.model) if args.model else BUNDLED
        if not (base / MODEL_FILE).is_file():
            raise FileNotFoundError(
                f"dense model {base} not found; pass --model EXPDIR or --from-scratch"
            )
        # model shape from the bundled model, training schedule from the preset (brief)
        train_run(runs / "dense", data, base / "config.yaml", [], base, train_section_from=preset)
    from ume.experiment.runner import run_experiment

    results = run_experiment(args.preset, work, dense_dir=runs / "dense")
    print(format_results(results))
    print(json.dumps({"workdir": str(work), "wall_seconds": round(time.time() - t0, 1)}))
    return 0
