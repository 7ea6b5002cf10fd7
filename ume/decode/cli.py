"""`ume decode`: any Kaldi dir or data.list -> Kaldi-style hypothesis file.

Example:
    ume decode --model runs/dense --data data/quick/test --mode attention_rescoring \\
        --out runs/dense/hyp_test.txt [--chunk-size 16 --left-chunks -1] [--device cuda]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from ume.data.loader import FeatureStore
from ume.data.manifest import load_manifest, write_text_file
from ume.decode.runner import decode_store
from ume.device import resolve_device
from ume.expdir import load_experiment

log = logging.getLogger(__name__)


def run_decode(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(getattr(args, "device", "cpu"))  # a clear error before any work
    cfg, tok, model = load_experiment(args.model)
    model.to(device)
    utts, skipped = load_manifest(args.data, require_text=False)
    store = FeatureStore.build(utts, cfg.features, progress=False)
    for msg in skipped + store.skipped:
        log.warning("skipped %s", msg)
    t0 = time.time()
    hyps = decode_store(
        model,
        store,
        tok,
        args.mode,
        args.beam,
        args.chunk_size,
        args.left_chunks,
        max_batch=args.batch_size,
        progress=True,
    )
    write_text_file(hyps, args.out)
    n_skip = len(skipped) + len(store.skipped)
    print(
        f"decoded {len(hyps)} utterances ({args.mode}, chunk {args.chunk_size}) in "
        f"{time.time() - t0:.1f}s -> {args.out}" + (f"; {n_skip} skipped" if n_skip else "")
    )
    return 0
