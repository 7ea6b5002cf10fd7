"""Integration: a run interrupted at a checkpoint and resumed reproduces the uninterrupted run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from ume.config import load_config, preset_config
from ume.train.checkpoint import average_checkpoints, list_checkpoints, read_state
from ume.train.trainer import Trainer

TEXTS = [
    "你好 HELLO",
    "我们 GO",
    "HELLO 世界",
    "好 OK",
    "GO HOME 你",
    "OK 我",
    "世界 好",
    "HOME 我们",
    "你 OK",
    "HELLO GO",
    "我 HOME",
    "好 世界 OK",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    sr = 16000
    wav_lines, text_lines = [], []
    for i, text in enumerate(TEXTS):
        dur = 0.6 + 0.6 * i / (len(TEXTS) - 1)  # 0.6 .. 1.2 s
        t = np.arange(int(dur * sr)) / sr
        wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.05 * rng.standard_normal(t.size)
        path = root / f"utt{i:02d}.wav"
        sf.write(path, wave.astype(np.float32), sr, subtype="PCM_16")
        wav_lines.append(f"utt{i:02d} {path}")
        text_lines.append(f"utt{i:02d} {text}")
    d = root / "train"
    d.mkdir()
    (d / "wav.scp").write_text("\n".join(wav_lines) + "\n", encoding="utf-8")
    (d / "text").write_text("\n".join(text_lines) + "\n", encoding="utf-8")
    return d


def _cfg(max_steps: int, max_frames: int):
    return load_config(
        preset_config("tiny"),
        [
            f"train.max_steps={max_steps}",
            "train.checkpoint_every=2",
            "train.eval_every=0",
            "train.log_every=1",
            "train.warmup_steps=2",
            f"train.max_frames={max_frames}",
            "train.average_last=2",
            "model.dynamic_chunk=true",
            "model.full_context_prob=0.3",
            "features.spec_augment=true",
        ],
    )


@dataclass
class Runs:
    n_batches: int
    exp_a: Path
    exp_b: Path
    tr_a: Trainer
    tr_b: Trainer
    loss_a: dict[int, float]
    loss_b1: dict[int, float]
    loss_b2: dict[int, float]
    info_a: dict
    info_b: dict
    ck2_state: dict


def _run(
    exp: Path, corpus: Path, max_steps: int, max_frames: int
) -> tuple[Trainer, dict[int, float], dict]:
    losses: dict[int, float] = {}
    orig = Trainer.train_step

    def recording(self: Trainer, batch: list[int]) -> dict[str, float]:
        stats = orig(self, batch)
        losses[self.state.step + 1] = stats["loss"]
        return stats

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "train_step", recording)
        tr = Trainer(_cfg(max_steps, max_frames), exp, str(corpus), progress=False)
        info = tr.run()
    return tr, losses, info


# max_frames -> batches per epoch: 1 (every step sees the same batch, so only model, optimizer,
# lr and RNG state matter), 6 (resume mid-epoch), 2 (the step-2 checkpoint ends epoch 0)
BATCHES = {4000: 1, 250: 6, 700: 2}


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, corpus: Path, tmp_path_factory) -> Runs:
    max_frames = request.param
    root = tmp_path_factory.mktemp(f"runs{max_frames}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tr_a, loss_a, info_a = _run(root / "A", corpus, 4, max_frames)
        _, loss_b1, _ = _run(root / "B", corpus, 2, max_frames)
        ck2_state = read_state(root / "B" / "checkpoints" / "step-00000002")
        tr_b, loss_b2, info_b = _run(root / "B", corpus, 4, max_frames)
    finally:
        torch.set_num_threads(threads)
    return Runs(
        BATCHES[max_frames], root / "A", root / "B", tr_a, tr_b, loss_a, loss_b1, loss_b2,
        info_a, info_b, ck2_state,
    )  # fmt: skip


@pytest.mark.parametrize("runs", list(BATCHES), indirect=True)
def test_resume_bookkeeping(runs: Runs) -> None:
    assert len(runs.tr_a.train_idx) == len(TEXTS)  # every utterance is usable
    assert len(runs.tr_a.sampler) == runs.n_batches
    assert sorted(runs.loss_a) == [1, 2, 3, 4]
    assert sorted(runs.loss_b1) == [1, 2]
    assert sorted(runs.loss_b2) == [3, 4]  # resumed at step 2, did not start over
    for s in (1, 2):  # same seed, same data: the first two steps are identical
        assert runs.loss_b1[s] == pytest.approx(runs.loss_a[s], abs=1e-5), s
    assert runs.ck2_state["step"] == 2
    assert "python" in runs.ck2_state["rng"] and "numpy" in runs.ck2_state["rng"]
    for exp, info in ((runs.exp_a, runs.info_a), (runs.exp_b, runs.info_b)):
        assert (exp / "model.safetensors").is_file()
        assert (exp / "config.yaml").is_file() and (exp / "cmvn.json").is_file()
        saved = json.loads((exp / "train_info.json").read_text(encoding="utf-8"))
        assert saved["steps"] == 4 == info["steps"]
        assert saved["averaged"] == ["step-00000002", "step-00000004"]
        assert [p.name for p in list_checkpoints(exp / "checkpoints")] == saved["averaged"]
    # finish() loaded the average of the two checkpoints into the model
    avg = average_checkpoints(list_checkpoints(runs.exp_b / "checkpoints"))
    for k, v in runs.tr_b.model.state_dict().items():
        assert torch.allclose(v.float(), avg[k].float()), k


@pytest.mark.parametrize(
    "runs",
    [4000, 250, 700],
    indirect=True,
)
def test_resume_reproduces_uninterrupted_run(runs: Runs) -> None:
    for s in (3, 4):
        assert runs.loss_b2[s] == pytest.approx(runs.loss_a[s], abs=1e-5), s
    # the last checkpoints (raw weights, before averaging) agree
    wa = load_file(str(runs.exp_a / "checkpoints" / "step-00000004" / "model.safetensors"))
    wb = load_file(str(runs.exp_b / "checkpoints" / "step-00000004" / "model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


@pytest.mark.parametrize("runs", list(BATCHES), indirect=True)
def test_resume_data_position(runs: Runs) -> None:
    """Even with one batch per epoch (identical losses), the epoch counter must agree."""
    a, b = runs.tr_a.state, runs.tr_b.state
    assert (b.epoch, b.pos) == (a.epoch, a.pos)


@pytest.mark.parametrize("runs", [4000], indirect=True)
def test_resume_keeps_cmvn(runs: Runs) -> None:
    """Resuming used to rewrite cmvn.json with identity statistics (mean 0, istd 1) before
    the checkpoint was loaded; decoding from cmvn.json then normalised wrongly."""
    a = json.loads((runs.exp_a / "cmvn.json").read_text(encoding="utf-8"))
    b = json.loads((runs.exp_b / "cmvn.json").read_text(encoding="utf-8"))
    assert any(abs(m) > 1e-3 for m in b["mean"])  # real statistics, not the identity
    assert a == b
    assert torch.allclose(runs.tr_b.model.cmvn_mean.cpu(), torch.tensor(b["mean"]))


def test_average_by_best_keeps_the_best_checkpoints(corpus: Path, tmp_path: Path) -> None:
    """The best checkpoints by dev MER survive recency pruning (keep 2 newest) and are the
    ones averaged; they used to be deleted, leaving only the newest to choose from."""
    mer_at = {1: 40.0, 2: 10.0, 3: 20.0, 4: 60.0, 5: 70.0, 6: 80.0}  # best: 2, then 3
    cfg = load_config(
        preset_config("tiny"),
        [
            "train.max_steps=6",
            "train.checkpoint_every=1",
            "train.eval_every=1",
            "train.keep_checkpoints=2",
            "train.average_last=2",
            "train.average_by=best",
            "train.warmup_steps=2",
        ],
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "evaluate", lambda self, *a, **k: {"mer": mer_at[self.state.step]})
        tr = Trainer(cfg, tmp_path / "exp", str(corpus), dev_data=str(corpus), progress=False)
        info = tr.run()
    assert info["averaged"] == ["step-00000002", "step-00000003"]
    kept = [p.name for p in list_checkpoints(tmp_path / "exp" / "checkpoints")]
    assert kept == ["step-00000002", "step-00000003", "step-00000005", "step-00000006"]


def test_resume_by_another_number_of_processes(corpus: Path, tmp_path: Path, caplog) -> None:
    """A checkpoint written by 2 DDP processes resumed by 1: weights and step restored, the
    epoch position rescaled to the same number of consumed batches (ceil), the RNG streams
    re-seeded from (seed, step, rank), and a warning that the resume is not bit-exact."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exp = tmp_path / "exp"
        _run(exp, corpus, 3, 250)  # 6 batches per epoch: checkpoint at step 2, mid-epoch
        ck = exp / "checkpoints" / "step-00000002"
        state = json.loads((ck / "state.json").read_text())
        pos = state["pos"]
        state["world_size"] = 2  # as if two ranks had each consumed `pos` batches
        (ck / "state.json").write_text(json.dumps(state))
        tr = Trainer(_cfg(4, 250), exp, str(corpus), progress=False)
        with caplog.at_level("WARNING"):
            tr.resume(ck)
    finally:
        torch.set_num_threads(threads)
    assert tr.state.step == 2 and tr.state.pos == 2 * pos
    assert "not bit-exact" in caplog.text
    g = torch.Generator().manual_seed((tr.cfg.train.seed + 1000003 * 2) * 7)
    assert torch.equal(tr.aug_gen.get_state(), g.get_state())  # re-seeded from (seed, step)


def test_cpu_time_leaves_out_a_pause(corpus: Path, tmp_path: Path) -> None:
    """A run paused mid-step (SIGSTOP, a suspended VM; here a sleep) counts the pause in its
    wall-clock train_seconds but not in train_cpu_seconds, which the checkpoint, the curve and
    train_info.json carry, so a resumed run keeps counting from where it was."""
    import time

    orig = Trainer.train_step

    def paused(self: Trainer, batch: list[int]) -> dict[str, float]:
        if self.state.step == 1:
            time.sleep(0.5)
        return orig(self, batch)

    cfg = load_config(
        preset_config("tiny"),
        ["train.max_steps=3", "train.checkpoint_every=2", "train.eval_every=2",
         "train.warmup_steps=2"],
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "train_step", paused)
        mp.setattr(Trainer, "evaluate", lambda self, *a, **k: {"mer": 50.0})
        info = Trainer(
            cfg, tmp_path / "exp", str(corpus), dev_data=str(corpus), progress=False
        ).run()
    assert 0 < info["train_cpu_seconds"] < info["train_seconds"] - 0.4
    saved = json.loads((tmp_path / "exp" / "train_info.json").read_text())
    assert saved["train_cpu_seconds"] == info["train_cpu_seconds"]
    state = read_state(tmp_path / "exp" / "checkpoints" / "step-00000002")
    # info["train_cpu_seconds"] is rounded to 0.1 s; the checkpoint keeps the raw value
    assert 0 < state["train_cpu_seconds"] <= info["train_cpu_seconds"] + 0.05
    assert info["curve"][0]["cpu_minutes"] == round(state["train_cpu_seconds"] / 60, 3)
