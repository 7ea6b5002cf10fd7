"""Experiment directory: everything needed to decode or continue training a model.

Layout:
    EXPDIR/config.yaml            strict ExperimentConfig
    EXPDIR/tokenizer/             tokenizer.json + bpe.model
    EXPDIR/cmvn.json              global CMVN (also stored as model buffers)
    EXPDIR/model.safetensors      weights used by decode (averaged at the end of training)
    EXPDIR/checkpoints/step-N/    resumable training checkpoints
    EXPDIR/curve.jsonl            dev MER vs training minutes
    EXPDIR/train_info.json        wall-clock, steps, params

Example:
    >>> cfg, tok, model = load_experiment("runs/dense")
    >>> model.eval()
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ume.atomic import atomic_path, atomic_write_json  # noqa: F401 (re-exported)
from ume.config import ExperimentConfig, load_config, save_config
from ume.data.tokenizer import Tokenizer
from ume.errors import UmeError
from ume.model.asr import ASRModel

MODEL_FILE = "model.safetensors"


class ExpDirError(UmeError):
    """An experiment dir is incomplete or its weights do not match its config."""


def atomic_save_tensors(
    tensors: dict[str, torch.Tensor], path: Path, meta: dict | None = None
) -> None:
    """Write safetensors atomically (ume.atomic), so a crash never leaves a torn file."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), meta)


def save_weights(model: torch.nn.Module, path: Path, dtype: torch.dtype | None = None) -> None:
    sd = model.state_dict()
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    atomic_save_tensors(sd, path)


def _named(path: Path, what: str, fn, *args):  # noqa: ANN001, ANN202 - any loader
    """Run a loader; any failure becomes one ExpDirError naming the file and what it should be
    (a pickle disguised as model.safetensors, a corrupt YAML, cmvn.json that is not JSON)."""
    try:
        return fn(*args)
    except ExpDirError:
        raise
    except Exception as e:  # noqa: BLE001 - third-party loaders raise anything
        msg = " ".join(str(e).split()) or type(e).__name__
        if str(path) not in msg:
            msg = f"{path}: {msg}"
        raise ExpDirError(f"{msg} (is it really {what}? re-export or re-train it)") from e


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Strict load (float32 regardless of the stored precision); mismatches name the keys."""
    sd = _named(Path(path), "a safetensors file", load_file, str(path))
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ExpDirError(
            f"{path}: weights do not match the model config.\n"
            f"  missing from file ({len(missing)}): {missing[:10]}\n"
            f"  unexpected in file ({len(unexpected)}): {unexpected[:10]}\n"
            "If this is a dense checkpoint and the config is MoE, create the MoE model with "
            "`ume upcycle` instead of loading it directly."
        )
    for k, v in sd.items():
        if v.shape != own[k].shape:
            raise ExpDirError(
                f"{path}: tensor {k} has shape {tuple(v.shape)}, model expects "
                f"{tuple(own[k].shape)}"
            )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def build_model(cfg: ExperimentConfig, tokenizer: Tokenizer) -> ASRModel:
    """The model `cfg` describes, sized for `tokenizer`; its <sos>/<eos> ids must be the
    tokenizer's (a decoder trained to start from id 2 must not be fed the last id)."""
    model = ASRModel(cfg.model, tokenizer.vocab_size)
    want = (getattr(tokenizer, "sos", model.sos), getattr(tokenizer, "eos", model.eos))
    if (model.sos, model.eos) != want:
        raise ExpDirError(
            f"model.sos_id/eos_id give <sos> {model.sos}, <eos> {model.eos} but the tokenizer "
            f"has <sos> {want[0]}, <eos> {want[1]}: set model.sos_id={want[0]} and "
            f"model.eos_id={want[1]} in the config (as the imported model's config.yaml does)"
        )
    return model


def load_experiment(
    exp_dir: str | os.PathLike, weights: str | None = None
) -> tuple[ExperimentConfig, Tokenizer, ASRModel]:
    """Load config, tokenizer and model (eval mode) from an experiment dir."""
    exp = Path(exp_dir)
    for need in ("config.yaml", "tokenizer"):
        if not (exp / need).exists():
            raise ExpDirError(
                f"{exp} is not a complete experiment dir: {need} is missing "
                "(train one with `ume train` or use the bundled model: ume.bundled_model())"
            )
    cfg = _named(exp / "config.yaml", "a strict YAML config", load_config, exp / "config.yaml")
    tok = _named(exp / "tokenizer", "a tokenizer dir", Tokenizer.load, exp / "tokenizer")
    if (exp / "cmvn.json").exists():
        from ume.data.features import GlobalCMVN

        _named(exp / "cmvn.json", "JSON global CMVN", GlobalCMVN.load, exp / "cmvn.json")
    model = build_model(cfg, tok)
    wpath = Path(weights) if weights else exp / MODEL_FILE
    if not wpath.is_file():
        raise ExpDirError(f"{wpath} does not exist; training has not finished in {exp}")
    load_weights(model, wpath)
    model.eval()
    return cfg, tok, model


def write_experiment(
    exp_dir: str | os.PathLike,
    cfg: ExperimentConfig,
    tokenizer: Tokenizer,
    model: torch.nn.Module | None = None,
) -> Path:
    """Write config, tokenizer, CMVN (and weights if a model is given) into exp_dir."""
    exp = Path(exp_dir)
    exp.mkdir(parents=True, exist_ok=True)
    save_config(cfg, exp / "config.yaml")
    tokenizer.save(exp / "tokenizer")
    if model is not None:
        atomic_write_json(
            {"mean": model.cmvn_mean.tolist(), "istd": model.cmvn_istd.tolist()}, exp / "cmvn.json"
        )
        save_weights(model, exp / MODEL_FILE)
    return exp


def copy_experiment_assets(src: Path, dst: Path) -> None:
    """Copy tokenizer and cmvn from one experiment dir to another."""
    dst.mkdir(parents=True, exist_ok=True)
    if (dst / "tokenizer").exists():
        shutil.rmtree(dst / "tokenizer")
    shutil.copytree(src / "tokenizer", dst / "tokenizer")
    if (src / "cmvn.json").exists():
        shutil.copy(src / "cmvn.json", dst / "cmvn.json")
