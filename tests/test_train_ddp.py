"""DDP under torchrun (2 gloo processes, 1 thread each, tiny model): a non-finite loss on one
rank skips the step on all ranks (it used to hang the others in the gradient all-reduce); a
resumed run with a freezing schedule reproduces the uninterrupted one bit for bit (every rank's
RNG state is saved, not only rank 0's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "ddp_train_worker.py"
TEXTS = ["你好 HELLO", "我们 GO", "HELLO 世界", "好 OK", "GO HOME 你", "OK 我", "世界 好",
         "HOME 我们", "你 OK", "HELLO GO", "我 HOME", "好 世界 OK"]  # fmt: skip
COMMON = [
    "train.max_frames=250",  # 6 batches: 3 per rank and epoch, so runs cross epochs
    "train.checkpoint_every=2",
    "train.eval_every=0",
    "train.log_every=1",
    "train.warmup_steps=2",
    "train.num_threads=1",
    "model.dynamic_chunk=true",
    "model.encoder.dropout=0.1",
    "features.spec_augment=true",
]
pytestmark = pytest.mark.slow


def make_corpus(root: Path) -> Path:
    rng = np.random.default_rng(0)
    sr = 16000
    d = root / "train"
    d.mkdir(parents=True)
    wavs, texts = [], []
    for i, text in enumerate(TEXTS):
        t = np.arange(int((0.6 + 0.6 * i / (len(TEXTS) - 1)) * sr)) / sr
        wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.05 * rng.standard_normal(t.size)
        path = root / f"utt{i:02d}.wav"
        sf.write(path, wave.astype(np.float32), sr, subtype="PCM_16")
        wavs.append(f"utt{i:02d} {path}")
        texts.append(f"utt{i:02d} {text}")
    (d / "wav.scp").write_text("\n".join(wavs) + "\n", encoding="utf-8")
    (d / "text").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return d


def torchrun(exp: Path, corpus: Path, steps: int, *extra: str) -> list[dict]:
    """Run the worker on 2 processes; returns each rank's result row (rank order)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(exp), str(corpus), str(steps), *extra]  # fmt: skip
    for s in COMMON:
        cmd += ["--set", s]
    for old in exp.glob("result-rank*.json"):
        old.unlink()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun hung (ranks waiting on each other): {str(e.stderr)[-2000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(f.read_text()) for f in sorted(exp.glob("result-rank*.json"))]
    assert len(rows) == 2, proc.stdout[-2000:]
    return sorted(rows, key=lambda r: r["rank"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("ddp_corpus"))


def test_nonfinite_loss_on_one_rank_skips_the_step_on_all(corpus: Path, tmp_path: Path) -> None:
    rows = torchrun(tmp_path / "nan", corpus, 3, "--nan-rank", "1", "--nan-step", "1")
    info = rows[0]["info"]
    assert info["steps"] == 3 and info["world_size"] == 2
    assert info["skipped_batches"] == 1  # step 2 skipped, decided together
    assert rows[0]["digest"] == rows[1]["digest"]  # the replicas did not drift apart


def test_ddp_resume_with_freezing_phases_is_bit_exact(corpus: Path, tmp_path: Path) -> None:
    phases = "train.phases=[{steps: 4, trainable: 'top:1'}, {steps: 0, trainable: all}]"
    a, b = tmp_path / "A", tmp_path / "B"
    torchrun(a, corpus, 5, "--set", phases)
    torchrun(b, corpus, 2, "--set", phases)
    ck2 = b / "checkpoints" / "step-00000002"
    assert (ck2 / "rng-rank1.safetensors").is_file() and (ck2 / "rng-rank1.json").is_file()
    assert json.loads((ck2 / "state.json").read_text())["world_size"] == 2
    # rank 1's SpecAugment stream differs from rank 0's: its own state was saved
    r0, r1 = load_file(ck2 / "rng.safetensors"), load_file(ck2 / "rng-rank1.safetensors")
    assert not torch.equal(r0["augment"], r1["augment"])
    rows = torchrun(b, corpus, 5, "--set", phases)  # resumes at step 2; phase 1 from step 4
    assert rows[0]["info"]["steps"] == 5
    assert rows[0]["digest"] == rows[1]["digest"]
    ck = {s: f"step-{s:08d}/model.safetensors" for s in (2, 4, 5)}
    for s in (4, 5):  # raw checkpoints (before averaging) of both runs
        wa, wb = load_file(a / "checkpoints" / ck[s]), load_file(b / "checkpoints" / ck[s])
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (s, k)
    # phase 0 trains only the top block and the heads: block 0 moves once phase 1 starts
    w = {s: load_file(a / "checkpoints" / ck[s]) for s in (2, 4, 5)}
    block0 = [k for k in w[2] if k.startswith("encoder.blocks.0.") and "weight" in k]
    assert block0 and all(torch.equal(w[2][k], w[4][k]) for k in block0)
    assert any(not torch.equal(w[4][k], w[5][k]) for k in block0)
    top = [k for k in w[2] if k.startswith("encoder.blocks.1.") and "weight" in k]
    assert any(not torch.equal(w[2][k], w[4][k]) for k in top)


@pytest.mark.parametrize(
    "weights,idle",
    [(["model.reverse_weight=0"], "decoder.right."), (["model.ctc_weight=1"], "decoder.")],
)
def test_ddp_trains_when_a_decoder_branch_gets_no_loss(
    corpus: Path, tmp_path: Path, weights: list[str], idle: str
) -> None:
    """A branch no loss reaches is not run (as in WeNet) and not trained: DDP used to stop at
    the second step, waiting for gradients of the unused right-to-left decoder."""
    extra = [a for w in weights for a in ("--set", w)]
    rows = torchrun(tmp_path / "exp", corpus, 3, *extra)
    info = rows[0]["info"]
    assert info["steps"] == 3 and info["world_size"] == 2 and info["skipped_batches"] == 0
    assert rows[0]["digest"] == rows[1]["digest"]
    first = load_file(tmp_path / "exp" / "checkpoints" / "step-00000002" / "model.safetensors")
    last = load_file(tmp_path / "exp" / "checkpoints" / "step-00000003" / "model.safetensors")
    frozen = [k for k in first if k.startswith(idle)]
    assert frozen and all(torch.equal(first[k], last[k]) for k in frozen)
    assert any(not torch.equal(first[k], last[k]) for k in first if k.startswith("encoder."))
