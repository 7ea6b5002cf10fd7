"""End to end on the `tiny` preset: synth -> train a few steps -> decode -> score, plus DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ume.cli import main
from ume.data.manifest import read_text_file
from ume.decode.score import score

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "data"
    assert main(["data", "synth", "--preset", "tiny", "--out", str(out)]) == 0
    return out


def test_tiny_end_to_end(tiny_data: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    rc = main(
        [
            "train",
            "--preset",
            "tiny",
            "--train",
            str(tiny_data / "train"),
            "--dev",
            str(tiny_data / "dev"),
            "--exp",
            str(exp),
            "--no-progress",
        ]
    )
    assert rc == 0
    for need in ("config.yaml", "tokenizer/tokenizer.json", "cmvn.json", "model.safetensors"):
        assert (exp / need).exists(), need
    info = json.loads((exp / "train_info.json").read_text())
    assert info["steps"] == 6
    assert len(info["curve"]) == 2  # eval_every=3
    for mode in ("ctc_greedy", "ctc_prefix_beam", "attention_rescoring"):
        hyp = tmp_path / f"hyp_{mode}.txt"
        assert (
            main(
                [
                    "decode",
                    "--model",
                    str(exp),
                    "--data",
                    str(tiny_data / "test"),
                    "--mode",
                    mode,
                    "--out",
                    str(hyp),
                ]
            )
            == 0
        )
        hyps = read_text_file(hyp)
        refs = read_text_file(tiny_data / "test" / "text")
        assert set(hyps) == set(refs)
        res = score(refs, hyps)
        assert res["num_utts"] == len(refs) and res["mer"] >= 0
    # the data.list form of the same split decodes too
    hyp = tmp_path / "hyp_list.txt"
    assert (
        main(
            [
                "decode",
                "--model",
                str(exp),
                "--data",
                str(tiny_data / "test" / "data.list"),
                "--mode",
                "ctc_greedy",
                "--out",
                str(hyp),
                "--chunk-size",
                "4",
            ]
        )
        == 0
    )
    assert len(read_text_file(hyp)) == len(refs)
    assert (
        main(["score", "--ref", str(tiny_data / "test" / "text"), "--hyp", str(hyp), "--json"]) == 0
    )


def test_rerun_resumes_and_skips(tiny_data: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    args = [
        "train",
        "--preset",
        "tiny",
        "--train",
        str(tiny_data / "train"),
        "--exp",
        str(exp),
        "--no-progress",
        "--set",
        "train.eval_every=0",
    ]
    assert main(args + ["--set", "train.max_steps=3"]) == 0
    assert json.loads((exp / "train_info.json").read_text())["steps"] == 3
    assert main(args + ["--set", "train.max_steps=6"]) == 0  # resumes from step 3
    assert json.loads((exp / "train_info.json").read_text())["steps"] == 6


@pytest.mark.slow  # two torchrun processes
@pytest.mark.parametrize("moe", [False, True])
def test_ddp_torchrun_two_processes(tiny_data: Path, tmp_path: Path, moe: bool) -> None:
    """Two gloo processes; with moe, 4-expert top-2 layers whose experts train through
    expert_ffn's hand-written backward (DDP must see every expert gradient)."""
    exp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # rendezvous on a free port: fixed ports collide (TIME_WAIT, other runs)
        "--nproc_per_node=2",
        "-m",
        "ume.cli",
        "train",
        "--preset",
        "tiny",
        "--train",
        str(tiny_data / "train"),
        "--exp",
        str(exp),
        "--no-progress",
        "--set",
        "train.max_steps=4",
        "--set",
        "train.eval_every=0",
        "--set",
        "train.num_threads=1",
    ]
    if moe:
        cmd += ["--set", "model.moe.num_experts=4", "--set", "model.moe.top_k=2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((exp / "train_info.json").read_text())
    assert info["world_size"] == 2 and info["steps"] == 4
    assert (exp / "model.safetensors").is_file()
    if moe:
        from safetensors.torch import load_file

        keys = load_file(exp / "model.safetensors")
        assert any(k.endswith("experts.w_1") for k in keys)


def test_decode_and_score_foreign_kaldi_dir(tiny_data: Path, tmp_path: Path) -> None:
    """A data dir we did not make: 8 kHz stereo, 44.1 kHz, a missing file, an empty line."""
    import numpy as np
    import soundfile as sf

    exp = tmp_path / "exp"
    assert (
        main(
            [
                "train",
                "--preset",
                "tiny",
                "--train",
                str(tiny_data / "train"),
                "--exp",
                str(exp),
                "--no-progress",
                "--set",
                "train.max_steps=2",
                "--set",
                "train.eval_every=0",
            ]
        )
        == 0
    )
    d = tmp_path / "foreign"
    d.mkdir()
    rng = np.random.default_rng(0)
    sf.write(d / "a.wav", rng.normal(0, 0.1, (8000, 2)).astype("float32"), 8000)
    sf.write(d / "b.flac", rng.normal(0, 0.1, 44100).astype("float32"), 44100)
    (d / "wav.scp").write_text(
        f"utt_a {d / 'a.wav'}\nutt_b {d / 'b.flac'}\nutt_c {d / 'missing.wav'}\n"
    )
    (d / "text").write_text("utt_a 你好 world\nutt_b hello\nutt_c 再见\n")
    hyp = tmp_path / "hyp.txt"
    rc = main(
        [
            "decode",
            "--model",
            str(exp),
            "--data",
            str(d),
            "--mode",
            "ctc_prefix_beam",
            "--out",
            str(hyp),
        ]
    )
    assert rc == 0
    hyps = read_text_file(hyp)
    assert set(hyps) == {"utt_a", "utt_b"}  # utt_c skipped (missing file), run not aborted
    assert main(["score", "--ref", str(d / "text"), "--hyp", str(hyp)]) == 0
