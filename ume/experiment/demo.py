"""`ume demo`: the README's main job, end to end on the embedded corpus.

1. synthesise the preset's corpus into WORKDIR/data (skipped if already there);
2. take the dense model as it is (bundled ume/models/dense_paper by default, --model EXPDIR,
   or train it on the corpus with --from-scratch) -> WORKDIR/runs/dense. It is not fine-tuned
   first (a brief constant-lr fine-tune on the quick corpus makes the bundled model worse), so
   "dense" is the starting model itself;
3. run the preset's UME comparison (dense_continued vs the upcycled MoE, same extra steps);
4. decode and score test (+ held-out voices), measure RTF -> WORKDIR/results.json / .md.

Example:
    ume demo --preset quick --workdir work
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ume.experiment.evaluate import format_results

log = logging.getLogger(__name__)


def run_demo(args: argparse.Namespace) -> int:
    from ume.experiment.runner import run_experiment

    t0 = time.time()
    results = run_experiment(
        args.preset,
        args.workdir,
        dense_dir=Path(args.model) if getattr(args, "model", None) else None,
        from_scratch=bool(getattr(args, "from_scratch", False)),
    )
    print(format_results(results))
    print(json.dumps({"workdir": str(args.workdir), "wall_seconds": round(time.time() - t0, 1)}))
    return 0
