"""`ume demo`: the README's main job, end to end on the embedded corpus.

1. synthesise the preset's corpus into WORKDIR/data (skipped if already there);
2. take the dense model as it is (bundled ume/models/dense_paper by default, --model EXPDIR,
   or train it on the corpus with --from-scratch) -> WORKDIR/runs/dense. It is not fine-tuned
   first (a brief constant-lr fine-tune on the quick corpus makes the bundled model worse), so
   "dense" is the starting model itself;
3. run the preset's UME comparison (dense_continued vs the upcycled MoE, same extra steps);
4. decode and score test (+ held-out voices), measure RTF -> WORKDIR/results.json / .md;
5. the xl regime's trio (ume/experiment/trio.py): a dense start, dense_continued and UME
   trained beforehand by scripts/experiment_xl_pair.sh on 133 h, decoded and scored here on the
   first --trio-utts utterances of each of the four xl test splits -> WORKDIR/trio/trio.json,
   WORKDIR/trio.md. The live runs of steps 2-4 are too short to show UME's effect; this shows
   the long runs' effect with live CIs. Skipped (said so) where models/xl/ is not there (a pip
   install) or with --trio-utts 0.

Example:
    ume demo --preset quick --workdir work
    ume demo --preset quick --workdir work --trio-utts 0     # the live pipeline only
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ume.errors import UmeError
from ume.experiment.evaluate import format_results

log = logging.getLogger(__name__)

TRIO_UTTS = 300  # per test split: 4 splits x 3 models; see docs/RESULTS.md for the time it takes


def run_demo(args: argparse.Namespace) -> int:
    from ume.experiment.runner import run_experiment

    trio_utts = getattr(args, "trio_utts", None)
    trio_utts = TRIO_UTTS if trio_utts is None else trio_utts
    if trio_utts < 0:
        raise UmeError(f"--trio-utts must be >= 0 (0 skips the trio), got {trio_utts}")
    t0 = time.time()
    results = run_experiment(
        args.preset,
        args.workdir,
        dense_dir=Path(args.model) if getattr(args, "model", None) else None,
        from_scratch=bool(getattr(args, "from_scratch", False)),
    )
    print(format_results(results))
    if trio_utts > 0:
        _run_trio(Path(args.workdir), trio_utts)
    print(json.dumps({"workdir": str(args.workdir), "wall_seconds": round(time.time() - t0, 1)}))
    return 0


def _run_trio(workdir: Path, utts: int) -> None:
    from ume.experiment.trio import default_trio, format_trio, missing_models, score_trio

    models = default_trio()
    if missing := missing_models(models):
        print(
            f"[demo] trio skipped: no {', '.join(missing)} model here "
            f"({models[missing[0]].parent}); it ships in a source checkout, not a pip install"
        )
        return
    print(f"[demo] the xl regime's trio on the first {utts} utterances of each test split ...")
    table = format_trio(score_trio(workdir / "trio", utts, models))
    (workdir / "trio.md").write_text(table + "\n", encoding="utf-8")
    print(table)
