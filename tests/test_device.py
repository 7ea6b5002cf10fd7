"""Device plumbing on a CPU-only machine: --device resolution, autocast dtype and DDP backend
per device, and a clear error for --device cuda without CUDA."""

from __future__ import annotations

import pytest
import torch

from ume import device as D
from ume.cli import main


def test_resolve_cpu_and_auto_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.resolve_device("cpu") == torch.device("cpu")
    assert D.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(D.DeviceError, match="CUDA is not available.*--device cpu"):
        D.resolve_device("cuda")
    with pytest.raises(D.DeviceError, match="use one of cpu, cuda, auto"):
        D.resolve_device("tpu")


def test_resolve_cuda_takes_the_local_rank_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert D.resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert D.resolve_device("cuda") == torch.device("cuda", 1)
    assert D.resolve_device("cuda:0") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(D.DeviceError, match="only 2 visible"):
        D.resolve_device("cuda")


def test_autocast_dtype_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert D.autocast_dtype(cpu, "fp32") is None and D.autocast_dtype(gpu, "fp32") is None
    monkeypatch.setattr(D, "cpu_supports_bf16", lambda: True)
    assert D.autocast_dtype(cpu, "bf16") is torch.bfloat16
    monkeypatch.setattr(D, "cpu_supports_bf16", lambda: False)
    assert D.autocast_dtype(cpu, "bf16") is None  # fp32 fallback, with a warning
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert D.autocast_dtype(gpu, "bf16") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert D.autocast_dtype(gpu, "bf16") is None
    with pytest.raises(ValueError, match="precision 'fp16'"):
        D.autocast_dtype(cpu, "fp16")


def test_autocast_context_uses_the_device_type() -> None:
    with D.autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        y = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert y.dtype == torch.bfloat16
    with D.autocast(torch.device("cpu"), None):
        assert not torch.is_autocast_enabled("cpu")


def test_ddp_backend_per_device() -> None:
    assert D.ddp_backend(torch.device("cuda", 3)) == "nccl"
    assert D.ddp_backend(torch.device("cpu")) == "gloo"
    assert D.ddp_backend("cpu") == "gloo"


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--preset", "tiny", "--train", "x", "--exp", "y"],
        ["decode", "--model", "x", "--data", "y", "--out", "z"],
        ["bench", "rtf", "--model", "x", "--data", "y"],
    ],
)
def test_device_cuda_without_cuda_is_a_clear_error(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)  # nothing is created or read before the device check
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: CUDA is not available" in err and "--device cpu" in err
    assert not (tmp_path / "y").exists()
