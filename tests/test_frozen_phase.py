"""Frozen means unchanged: a freezing phase leaves frozen BatchNorms' running statistics
bit-identical, and branches no loss reaches (reverse_weight 0, ctc_weight 1) are neither run
nor trained (WeNet's behaviour; under DDP an unused branch crashed the gradient reduction, see
tests/test_train_ddp.py for the torchrun check)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ume.config import (
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
    MoEConfig,
    load_config,
    preset_config,
)
from ume.model.asr import ASRModel
from ume.model.frozen import hold_frozen_norms
from ume.train.schedule import apply_trainable, loss_free_prefixes
from ume.train.trainer import Trainer

TEXTS = ["你好 HELLO", "我们 GO", "HELLO 世界", "好 OK", "GO HOME 你", "OK 我"]


def _bn_model(**model) -> ASRModel:
    enc = EncoderConfig(
        input_dim=20, d_model=16, num_heads=2, d_ff=32, num_blocks=2, subsampling=4,
        subsampling_channels=4, conv_kernel=5, conv_norm="batch_norm",
    )  # fmt: skip
    dec = DecoderConfig(num_blocks=1, r_num_blocks=1, num_heads=2, d_ff=32)
    return ASRModel(ModelConfig(encoder=enc, decoder=dec, moe=MoEConfig(), **model), 12)


def _batch(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 60, 20, generator=g) * 2 + 1  # far from BN's initial statistics
    ys = torch.tensor([[3, 4, 5], [6, 7, -1]])
    return feats, torch.tensor([60, 48]), ys, torch.tensor([3, 2])


def _bn_buffers(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith(prefix) and ".conv.norm." in k and ("running" in k or "batches" in k)
    }


def test_frozen_batchnorm_keeps_its_statistics_through_train_calls() -> None:
    model = _bn_model()
    apply_trainable(model, "top:1", 2)  # block 0 frozen, block 1 trains
    model.train()
    assert hold_frozen_norms(model) == 1
    before = _bn_buffers(model, "encoder.blocks.")
    for step in range(3):
        model.train()  # every train() call (the trainer's, a scorer's restore) re-holds it
        model(*_batch(step))["loss"].backward()
    after = _bn_buffers(model, "encoder.blocks.")
    frozen = [k for k in before if k.startswith("encoder.blocks.0.")]
    trained = [k for k in before if k.startswith("encoder.blocks.1.") and "running" in k]
    assert frozen and trained
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    assert all(not torch.equal(before[k], after[k]) for k in trained)  # the check can fail
    assert not model.encoder.blocks[0].conv.norm.training
    assert model.encoder.blocks[1].conv.norm.training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    wavs, texts = [], []
    for i, text in enumerate(TEXTS):
        t = np.arange(int((0.6 + 0.1 * i) * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(root / f"u{i}.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
        wavs.append(f"u{i} {root / f'u{i}.wav'}")
        texts.append(f"u{i} {text}")
    d = root / "train"
    d.mkdir()
    (d / "wav.scp").write_text("\n".join(wavs) + "\n", encoding="utf-8")
    (d / "text").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return d


def test_trainer_frozen_phase_leaves_batchnorm_buffers_bit_identical(
    corpus: Path, tmp_path: Path
) -> None:
    cfg = load_config(
        preset_config("tiny"),
        [
            "model.encoder.conv_norm=batch_norm",
            "train.phases=[{steps: 0, trainable: 'top:1'}]",
            "train.max_steps=3",
            "train.checkpoint_every=3",
            "train.average_last=1",
            "train.eval_every=0",
            "train.warmup_steps=1",
        ],
    )
    tr = Trainer(cfg, tmp_path / "exp", str(corpus), progress=False, device="cpu")
    before = _bn_buffers(tr.model, "encoder.blocks.")
    tr.run()
    after = _bn_buffers(tr.model, "encoder.blocks.")
    frozen = [k for k in before if k.startswith("encoder.blocks.0.")]
    assert len(frozen) == 3  # running_mean, running_var, num_batches_tracked
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    moved = [k for k in before if k.startswith("encoder.blocks.1.") and "running" in k]
    assert moved and all(not torch.equal(before[k], after[k]) for k in moved)


def _calls(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize(
    "weights,idle",
    [
        ({"reverse_weight": 0.0}, ("decoder.right.",)),
        ({"ctc_weight": 1.0}, ("decoder.",)),
        ({"ctc_weight": 0.0, "reverse_weight": 0.0}, ("decoder.right.", "ctc.")),
        ({}, ()),
    ],
)
def test_branches_without_loss_do_not_run_or_train(weights: dict, idle: tuple) -> None:
    model = _bn_model(**weights).train()
    right, left, ctc = _calls(model.decoder.right), _calls(model.decoder.left), _calls(model.ctc)
    model(*_batch())["loss"].backward()
    ran = {"decoder.right.": bool(right), "decoder.": bool(left or right), "ctc.": bool(ctc)}
    want = {
        "decoder.right.": not {"decoder.", "decoder.right."} & set(idle),
        "decoder.": "decoder." not in idle,
        "ctc.": "ctc." not in idle,
    }
    assert ran == want
    assert loss_free_prefixes(model.cfg) == idle
    apply_trainable(model, "all", 2, loss_free_prefixes(model.cfg))
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(idle)), name
