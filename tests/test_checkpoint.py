"""Tests for ume.train.checkpoint (atomic checkpoints, optimizer/RNG state, averaging) and
ume.train.schedule (lr schedule, freezing phases)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import ume.train.checkpoint as ckpt
from ume.config import (
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
    MoEConfig,
    PhaseConfig,
    TrainConfig,
)
from ume.expdir import load_weights
from ume.model.asr import ASRModel
from ume.train.checkpoint import (
    average_checkpoints,
    checkpoints_to_average,
    latest_checkpoint,
    list_checkpoints,
    load_optimizer_tensors,
    optimizer_tensors,
    python_rng_state,
    read_state,
    save_checkpoint,
    set_python_rng_state,
)
from ume.train.schedule import apply_trainable, lr_lambda, phase_at


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(3, 2)
        self.register_buffer("count", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def _adamw(model: nn.Module, reverse: bool = False) -> torch.optim.AdamW:
    params = list(model.named_parameters())
    decay = [p for _, p in params if p.dim() > 1]
    no_decay = [p for _, p in params if p.dim() <= 1]
    if reverse:  # different parameter order: state must be matched by name
        decay, no_decay = decay[::-1], no_decay[::-1]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2,
        betas=(0.9, 0.98),
        eps=1e-9,
    )


def _step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 4, generator=g)
    loss = model(x).pow(2).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()


def _rng() -> dict[str, torch.Tensor]:
    return {"torch": torch.get_rng_state(), "augment": torch.Generator().manual_seed(3).get_state()}


def _trained(seed: int = 0) -> tuple[Small, torch.optim.AdamW]:
    torch.manual_seed(seed)
    m = Small()
    opt = _adamw(m)
    _step(m, opt, 100)
    _step(m, opt, 101)
    return m, opt


# ---- atomic writes --------------------------------------------------------------------------
def test_save_and_latest(tmp_path: Path) -> None:
    m, opt = _trained()
    ck = save_checkpoint(tmp_path, 5, m, opt, {"step": 5, "epoch": 1}, _rng())
    assert ck == tmp_path / "step-00000005"
    assert latest_checkpoint(tmp_path) == ck
    for f in ("model.safetensors", "optim.safetensors", "rng.safetensors", "state.json"):
        assert (ck / f).is_file(), f
    st = read_state(ck)
    assert st["step"] == 5 and st["epoch"] == 1 and "python" in st["rng"]
    assert latest_checkpoint(tmp_path / "missing") is None


def test_crash_mid_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, opt = _trained()
    good = {k: v.clone() for k, v in m.state_dict().items()}
    save_checkpoint(tmp_path, 5, m, opt, {"step": 5}, _rng())
    _step(m, opt, 102)  # weights move on

    calls = {"n": 0}
    real = ckpt.save_file

    def flaky(tensors: dict, path: str, *a, **kw) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the optimizer file of the step-10 save
            Path(path).write_bytes(b"torn")
            raise OSError("disk full")
        real(tensors, path, *a, **kw)

    monkeypatch.setattr(ckpt, "save_file", flaky)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 10, m, opt, {"step": 10}, _rng())
    monkeypatch.setattr(ckpt, "save_file", real)

    assert (tmp_path / "step-00000010.tmp").is_dir()  # the torn write is left behind ...
    assert not (tmp_path / "step-00000010").exists()
    latest = latest_checkpoint(tmp_path)
    assert latest == tmp_path / "step-00000005"  # ... and ignored
    fresh = Small()
    load_weights(fresh, latest / "model.safetensors")
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, good[k]), k

    # a hand-made partial temp dir, even with a state.json, and a final dir without state.json
    partial = tmp_path / "step-00000020.tmp"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"xx")
    (partial / "state.json").write_text(json.dumps({"step": 20}))
    (tmp_path / "step-00000030").mkdir()
    assert list_checkpoints(tmp_path) == [tmp_path / "step-00000005"]

    # the retry of step 10 replaces its stale temp dir and completes
    ck = save_checkpoint(tmp_path, 10, m, opt, {"step": 10}, _rng())
    assert not (tmp_path / "step-00000010.tmp").exists()
    assert latest_checkpoint(tmp_path) == ck
    sd = load_file(str(ck / "model.safetensors"))
    assert torch.equal(sd["a.weight"], m.a.weight.detach())


def test_keep_prunes_oldest(tmp_path: Path) -> None:
    m, opt = _trained()
    for s in (2, 4, 6, 8):
        save_checkpoint(tmp_path, s, m, opt, {"step": s}, _rng(), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000006", "step-00000008"]
    # numeric, not lexicographic, ordering of steps
    save_checkpoint(tmp_path, 100, m, opt, {"step": 100}, _rng(), keep=0)
    assert latest_checkpoint(tmp_path).name == "step-00000100"


# ---- optimizer state ------------------------------------------------------------------------
def test_optimizer_state_round_trip_by_name(tmp_path: Path) -> None:
    m, opt = _trained()
    tensors = optimizer_tensors(opt, m)
    assert "a.weight/exp_avg" in tensors and "b.bias/exp_avg_sq" in tensors
    assert float(tensors["a.weight/step"]) == 2.0
    save_file(tensors, str(tmp_path / "optim.safetensors"))
    save_file(dict(m.state_dict()), str(tmp_path / "model.safetensors"))

    m2 = Small()
    load_weights(m2, tmp_path / "model.safetensors")
    opt2 = _adamw(m2, reverse=True)
    load_optimizer_tensors(opt2, m2, load_file(str(tmp_path / "optim.safetensors")))
    for name, p in m2.named_parameters():
        for k, v in opt2.state[p].items():
            assert torch.equal(v, tensors[f"{name}/{k}"]), (name, k)

    _step(m, opt, 7)
    _step(m2, opt2, 7)
    for (n1, p1), (_, p2) in zip(m.named_parameters(), m2.named_parameters()):
        assert torch.equal(p1, p2), n1


def test_optimizer_state_partial_params() -> None:
    """Restoring into an optimizer that holds only some parameters (a frozen phase)."""
    m, opt = _trained()
    tensors = optimizer_tensors(opt, m)
    m2 = Small()
    m2.load_state_dict(m.state_dict())
    opt2 = torch.optim.AdamW(m2.b.parameters(), lr=1e-2)
    load_optimizer_tensors(opt2, m2, tensors)
    assert set(opt2.state) == set(m2.b.parameters())
    assert torch.equal(opt2.state[m2.b.weight]["exp_avg"], tensors["b.weight/exp_avg"])


# ---- averaging ------------------------------------------------------------------------------
def test_average_checkpoints_is_mean(tmp_path: Path) -> None:
    m1, opt1 = _trained(0)
    m2, opt2 = _trained(1)
    m2.count.fill_(7)
    c1 = save_checkpoint(tmp_path, 1, m1, opt1, {"step": 1}, _rng())
    c2 = save_checkpoint(tmp_path, 2, m2, opt2, {"step": 2}, _rng())
    avg = average_checkpoints([c1, c2])
    assert set(avg) == set(m1.state_dict())
    for k, v in m1.state_dict().items():
        if v.is_floating_point():
            expected = (v.double() + m2.state_dict()[k].double()) / 2
            assert torch.allclose(avg[k].double(), expected, atol=1e-7), k
            assert avg[k].dtype == torch.float32
    assert avg["count"].dtype == torch.long and int(avg["count"]) == 7  # from the newest
    single = average_checkpoints([c1])
    assert torch.equal(single["a.weight"], m1.a.weight.detach())
    with pytest.raises(ValueError, match="no checkpoints"):
        average_checkpoints([])


def test_checkpoints_to_average_by_last_and_by_best(tmp_path: Path) -> None:
    m, opt = _trained()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, m, opt, {"step": step}, _rng())
    names = lambda cks: [c.name for c in cks]  # noqa: E731
    assert names(checkpoints_to_average(tmp_path, {}, "last", 2)) == [
        "step-00000003",
        "step-00000004",
    ]
    mer = {
        "step-00000001": 30.0,
        "step-00000003": 10.0,
        "step-00000004": 20.0,
        "step-00000009": 1.0,
    }
    # lowest dev MER first; a score without a checkpoint on disk (step 9) does not count
    assert names(checkpoints_to_average(tmp_path, mer, "best", 2)) == [
        "step-00000003",
        "step-00000004",
    ]
    assert names(checkpoints_to_average(tmp_path, mer, "last", 1)) == ["step-00000004"]
    assert names(checkpoints_to_average(tmp_path, {}, "best", 1)) == ["step-00000004"]  # unscored
    assert checkpoints_to_average(tmp_path / "none", {}, "last", 3) == []


# ---- python / numpy RNG ---------------------------------------------------------------------
def test_python_numpy_rng_round_trip() -> None:
    random.seed(11)
    np.random.seed(12)
    random.gauss(0, 1)  # leaves a cached second gaussian
    np.random.randn()  # leaves numpy's cached gaussian
    state = json.loads(json.dumps(python_rng_state()))  # as stored in state.json
    want = (
        [random.gauss(0, 1), random.random(), random.randint(0, 10**9)],
        [np.random.randn(), *np.random.rand(3).tolist(), int(np.random.randint(0, 10**9))],
    )
    random.seed(99)
    np.random.seed(99)
    set_python_rng_state(state)
    got = (
        [random.gauss(0, 1), random.random(), random.randint(0, 10**9)],
        [np.random.randn(), *np.random.rand(3).tolist(), int(np.random.randint(0, 10**9))],
    )
    assert got == want


def test_checkpoint_rng_file_round_trip(tmp_path: Path) -> None:
    m, opt = _trained()
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(9)
    ck = save_checkpoint(
        tmp_path, 1, m, opt, {}, {"torch": torch.get_rng_state(), "augment": gen.get_state()}
    )
    want = (torch.rand(4), torch.rand(4, generator=gen))
    r = load_file(str(ck / "rng.safetensors"))
    torch.set_rng_state(r["torch"])
    gen2 = torch.Generator()
    gen2.set_state(r["augment"])
    assert torch.equal(torch.rand(4), want[0])
    assert torch.equal(torch.rand(4, generator=gen2), want[1])


# ---- schedule -------------------------------------------------------------------------------
def test_lr_lambda_noam_and_constant() -> None:
    f = lr_lambda(TrainConfig(warmup_steps=4, lr_schedule="noam"))
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(f(15), 0.5)  # sqrt(4 / 16)
    assert math.isclose(f(99), math.sqrt(4 / 100))
    assert f(50) < f(10) < f(3)
    g = lr_lambda(TrainConfig(warmup_steps=4, lr_schedule="constant"))
    assert [g(s) for s in (0, 2, 3, 10, 1000)] == [0.25, 0.75, 1.0, 1.0, 1.0]
    h = lr_lambda(TrainConfig(warmup_steps=0))
    assert h(0) == 1.0 and math.isclose(h(3), 0.5)
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_lambda(TrainConfig(lr_schedule="linear"))


def test_lr_lambda_cosine_anneals_to_zero_at_max_steps() -> None:
    c = lr_lambda(TrainConfig(warmup_steps=4, lr_schedule="cosine", max_steps=104))
    assert [c(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(c(53), 0.5)  # half-way through the decay
    assert math.isclose(c(103), 0.0, abs_tol=1e-12) and c(500) == c(103)
    assert all(c(s) >= c(s + 1) for s in range(3, 120))
    with pytest.raises(ValueError, match="max_steps"):
        lr_lambda(TrainConfig(warmup_steps=50, lr_schedule="cosine", max_steps=50))


def test_phase_at_boundaries() -> None:
    phases = [PhaseConfig(3, "moe"), PhaseConfig(2, "top:1"), PhaseConfig(0, "all")]
    got = [phase_at(phases, s)[0] for s in range(8)]
    assert got == [0, 0, 0, 1, 1, 2, 2, 2]
    assert phase_at(phases, 4)[1].trainable == "top:1"
    assert phase_at([], 10) == (0, PhaseConfig(0, "all"))
    finite = [PhaseConfig(2, "moe"), PhaseConfig(2, "router")]
    assert [phase_at(finite, s)[0] for s in (0, 1, 2, 3, 4, 50)] == [0, 0, 1, 1, 1, 1]


@pytest.fixture(scope="module")
def asr() -> ASRModel:
    enc = EncoderConfig(
        input_dim=20, d_model=16, num_heads=2, d_ff=32, num_blocks=2, subsampling=4,
        subsampling_channels=4, conv_kernel=5,
    )  # fmt: skip
    dec = DecoderConfig(num_blocks=1, r_num_blocks=1, num_heads=2, d_ff=32)
    return ASRModel(ModelConfig(encoder=enc, decoder=dec, moe=MoEConfig()), 12)


def _count(model: nn.Module, pred) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if pred(n))


def test_apply_trainable(asr: ASRModel) -> None:
    total = _count(asr, lambda n: True)
    assert apply_trainable(asr, "all", 2) == (total, total)
    assert all(p.requires_grad for p in asr.parameters())

    top = _count(asr, lambda n: n.startswith(("encoder.blocks.1.", "ctc.", "decoder.")))
    assert apply_trainable(asr, "top:1", 2) == (top, total)
    for n, p in asr.named_parameters():
        assert p.requires_grad == n.startswith(("encoder.blocks.1.", "ctc.", "decoder.")), n
    assert 0 < top < total

    top2 = _count(asr, lambda n: n.startswith(("encoder.blocks.", "ctc.", "decoder.")))
    assert apply_trainable(asr, "top:2", 2) == (top2, total)
    assert not asr.encoder.embed.out.weight.requires_grad

    pre = ["encoder.blocks.0.", "ctc."]
    want = _count(asr, lambda n: n.startswith(tuple(pre)))
    assert apply_trainable(asr, pre, 2) == (want, total)
    assert asr.ctc.weight.requires_grad and not asr.decoder.left.out.weight.requires_grad

    with pytest.raises(ValueError, match="selects no parameters"):
        apply_trainable(asr, "moe", 2)
    with pytest.raises(ValueError, match="selects no parameters"):
        apply_trainable(asr, "router", 2)
    with pytest.raises(ValueError, match="top:N"):
        apply_trainable(asr, "top:x", 2)
    with pytest.raises(ValueError, match="prefixes"):
        apply_trainable(asr, 5, 2)
    apply_trainable(asr, "all", 2)
