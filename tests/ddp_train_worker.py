"""torchrun worker for tests/test_train_ddp.py (not a test module itself).

Trains the tiny preset with the Trainer on the CPU; with --nan-rank/--nan-step, that rank's loss
is made non-finite at that step (the others stay finite), to check the skip is collective.

Example:
    torchrun --standalone --nproc_per_node 2 tests/ddp_train_worker.py EXP CORPUS 4 \
        --nan-rank 1 --nan-step 1 --set train.max_frames=250
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ume.config import load_config, preset_config
from ume.train.distributed import teardown_distributed
from ume.train.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("exp")
    ap.add_argument("corpus")
    ap.add_argument("max_steps", type=int)
    ap.add_argument("--nan-rank", type=int, default=-1)
    ap.add_argument("--nan-step", type=int, default=-1)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(preset_config("tiny"), [f"train.max_steps={args.max_steps}", *args.set])
    tr = Trainer(cfg, args.exp, args.corpus, progress=False, device="cpu")
    if tr.rank == args.nan_rank:
        forward = tr.model.forward

        def poisoned(*a, **k):
            out = forward(*a, **k)
            if tr.state.step == args.nan_step:
                out = {**out, "loss": out["loss"] * float("nan")}
            return out

        tr.model.forward = poisoned  # DDP calls the module, which calls this
    trained: dict[str, float] = {}
    finish = tr.finish

    def digest_then_finish() -> dict:  # before rank 0 loads the checkpoint average
        trained["digest"] = float(sum(p.detach().double().sum() for p in tr.model.parameters()))
        return finish()

    tr.finish = digest_then_finish
    info = tr.run()
    digest = trained["digest"]
    # one file per rank: two ranks printing to one pipe can interleave their lines
    row = json.dumps({"rank": tr.rank, "digest": digest, "info": info})
    (Path(args.exp) / f"result-rank{tr.rank}.json").write_text(row, encoding="utf-8")
    # as `ume train` does: a rank that exits with the gloo group alive can abort at interpreter
    # shutdown (SIGABRT, "terminate called without an active exception") after its work is done
    teardown_distributed()


if __name__ == "__main__":
    main()
