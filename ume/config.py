"""Strict dataclass configs with YAML load/save.

Every section is a dataclass; loading a YAML mapping into it rejects unknown or misspelt keys
with an error that names the key, the section, and the keys that are allowed.

Example:
    >>> cfg = load_config("configs/quick.yaml")
    >>> cfg.model.encoder.d_model
    144
    >>> save_config(cfg, "exp/dense/config.yaml")
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ume.errors import UmeError


class ConfigError(UmeError):
    """A config file or override is malformed (unknown key, wrong type, bad value)."""


@dataclass
class FeatureConfig:
    num_mel_bins: int = 80
    frame_shift_ms: float = 10.0
    frame_length_ms: float = 25.0
    dither: float = 0.0
    spec_augment: bool = True
    num_freq_masks: int = 2
    max_freq_width: int = 10
    num_time_masks: int = 2
    max_time_width: int = 40
    speed_perturb: list[float] = field(default_factory=list)  # e.g. [0.9, 1.0, 1.1]; [] = off


@dataclass
class TokenizerConfig:
    bpe_size: int = 256  # sentencepiece vocabulary for English pieces
    case: str = "upper"  # English case after normalisation


@dataclass
class MoEConfig:
    """Which FFN slots become Mixture-of-Experts, and how they route.

    num_experts == 0 means a dense model (every slot is a plain FeedForward).
    """

    num_experts: int = 0
    top_k: int = 2
    slots: list[str] = field(default_factory=lambda: ["encoder_macaron", "encoder_ffn"])
    layers: str = "all"  # "all", "every_other", "top_half", or comma list "0,2,4"
    router_init: str = "zeros"  # "zeros", "normal" or "kmeans" (from data, at upcycling)
    router_init_std: float = 0.02
    capacity_factor: float = 0.0  # 0 = dropless
    jitter: float = 0.0  # multiplicative router input noise during training
    router_noise: float = 0.0  # std of Gaussian noise on router logits in training (noisy top-k)
    # fine-grained experts: G virtual groups, each of num_experts/G experts holding a 1/G slice
    # of the dense FFN's hidden units; top_k experts are chosen per group (G·top_k active)
    groups: int = 1
    balance_coef: float = 0.01  # Switch load-balancing loss coefficient
    z_loss_coef: float = 0.001  # ST-MoE router z-loss coefficient


@dataclass
class EncoderConfig:
    input_dim: int = 80
    d_model: int = 144
    num_heads: int = 4
    d_ff: int = 576
    num_blocks: int = 6
    subsampling: int = 8  # 4, 6 or 8
    subsampling_channels: int = 0  # conv channels in the subsampling stem; 0 = d_model
    conv_kernel: int = 15
    causal_conv: bool = True
    dropout: float = 0.0
    attn_dropout: float = 0.0
    macaron: bool = True
    # where the LayerNorm after the residual stream sits: "block" (end of every block, as in the
    # Conformer paper), "encoder" (pre-LN blocks, one LayerNorm after the last block) or "both"
    # (every block and once more after the last one: WeNet's conformer)
    final_norm: str = "block"
    # relative positions in self-attention: "rel_shift" (Transformer-XL: scores over distances
    # i-j) or "wenet" (WeNet's rel_pos: sinusoids of absolute positions 0..T-1, no rel_shift)
    pos_enc: str = "rel_shift"
    conv_norm: str = "layer_norm"  # norm in the conv module: "layer_norm" or "batch_norm"
    # what the depthwise conv sees outside the valid frames: "zeros" (padding and causal left
    # context are 0 after the GLU) or "wenet" (causal left context is zero-padded before the
    # first pointwise conv, so it holds GLU(bias); padding is not re-masked after the GLU)
    conv_context: str = "zeros"


@dataclass
class DecoderConfig:
    num_blocks: int = 2  # left-to-right blocks
    r_num_blocks: int = 1  # right-to-left blocks (0 disables the r2l decoder)
    num_heads: int = 4
    d_ff: int = 576
    dropout: float = 0.0


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    ctc_weight: float = 0.3
    reverse_weight: float = 0.3
    lsm_weight: float = 0.1
    ctc_reduction: str = "sum_over_batch"  # "sum_over_batch" or "mean" (PyTorch default)
    # dynamic chunk training: each batch picks full context with prob full_context_prob,
    # otherwise a chunk size uniform in [1, max_chunk] (in subsampled frames)
    dynamic_chunk: bool = True
    max_chunk: int = 25
    full_context_prob: float = 0.5
    dynamic_left_chunks: bool = True
    # ids of <sos> (first decoder input) and <eos> (last decoder target); -1 = the last id
    # (vocab_size - 1, where ume's tokenizer and older WeNet recipes put '<sos/eos>')
    sos_id: int = -1
    eos_id: int = -1


@dataclass
class PhaseConfig:
    """One phase of a freezing schedule.

    trainable: which parameters learn in this phase: "all", "moe" (experts + routers),
    "router" (routers only), "top:N" (MoE + the top N encoder blocks + heads), or a list
    of parameter-name prefixes.
    """

    steps: int = 0  # 0 = until the end of training
    trainable: Any = "all"
    # lr multiplier for experts + routers in this phase (e.g. 5 in the frozen phase, where a
    # fast-moving expert cannot damage the frozen backbone): breaks upcycled experts' symmetry
    moe_lr_scale: float = 1.0


@dataclass
class TrainConfig:
    seed: int = 1234
    max_steps: int = 2000
    max_minutes: float = 0.0  # 0 = no time limit; else stop (and checkpoint) after this
    lr: float = 2e-3
    warmup_steps: int = 300
    lr_schedule: str = "noam"  # after warmup: "noam" (inverse sqrt), "constant", "cosine" (to 0)
    weight_decay: float = 1e-2
    grad_clip: float = 5.0
    accum_grad: int = 1
    max_frames: int = 6000  # batch budget in input (10 ms) frames, padding included
    max_batch_size: int = 64
    sortagrad: bool = False  # first epoch shortest-first (SortaGrad)
    # steps at the start trained without SpecAugment and without dynamic chunks: the encoder
    # first learns to align on clean full-context input
    curriculum_steps: int = 0
    precision: str = "fp32"  # "fp32" or "bf16" (autocast)
    checkpoint_every: int = 200
    keep_checkpoints: int = 5
    average_last: int = 3  # average this many checkpoints into model.safetensors (<=1: none)
    average_by: str = "last"  # "last" checkpoints, or "best" by dev MER at checkpoint time
    log_every: int = 20
    eval_every: int = 0  # steps between dev evaluations (0 = only at the end)
    eval_max_utts: int = 200  # dev subset size for periodic evaluation
    num_threads: int = 0  # 0 = torch default
    phases: list[PhaseConfig] = field(default_factory=list)  # freezing schedule; [] = all


@dataclass
class ExperimentConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


# a decimal number as text; PyYAML (YAML 1.1) leaves 1e-4 and 1e3 (no dot) as strings
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _number(text: str, where: str, expected: str) -> int | float:
    """int or float of a numeric string (a YAML value such as 1e-4), else ConfigError."""
    t = text.strip()
    if not _NUMBER.fullmatch(t):
        raise ConfigError(
            f"{where}: expected {expected}, got the string {text!r}; write a number "
            "such as 0.0001, 1e-4 or 3"
        )
    return int(t) if t.lstrip("+-").isdigit() else float(t)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming `where`."""
    if _is_dataclass_type(tp):
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float:
        if isinstance(value, str):
            value = _number(value, where, "a number")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, str):
            num = _number(value, where, "an integer")
            if isinstance(num, float) and num.is_integer():
                num = int(num)  # 1e3 -> 1000
            value = num if isinstance(num, int) else value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; allowed keys are {names}. "
            "Check the spelling or remove the key."
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML experiment config strictly, then apply `key.sub=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    for ov in overrides or []:
        apply_override(data, ov)
    return from_dict(ExperimentConfig, data, where=str(path))


def apply_override(data: dict, override: str) -> None:
    """Apply one `a.b.c=value` override (value parsed as YAML) to a nested dict in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        node = node[p]
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


# Keys added after configs were first recorded, written only when they differ from their
# default: a config that does not use them keeps the exact content (and content hash) it had
# before they existed, so recorded runs stay reusable (ume.experiment.fingerprint).
_WRITTEN_ONLY_WHEN_SET = {("model", "sos_id"): -1, ("model", "eos_id"): -1}


def save_config(cfg: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write the config as YAML (atomically); see _WRITTEN_ONLY_WHEN_SET."""
    from ume.atomic import atomic_write_text

    data = to_dict(cfg)
    for (section, key), default in _WRITTEN_ONLY_WHEN_SET.items():
        if data[section].get(key) == default:
            del data[section][key]
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def config_from_dict(data: dict) -> ExperimentConfig:
    return from_dict(ExperimentConfig, data)


PRESET_DIR = Path(__file__).resolve().parent / "configs"


def experiment_presets() -> list[str]:
    """Names of the packaged `ume experiment` presets (ume/configs/experiment_NAME.yaml)."""
    return sorted(p.stem.removeprefix("experiment_") for p in PRESET_DIR.glob("experiment_*.yaml"))


def preset_config(name: str) -> Path:
    """Path of a packaged preset config (tiny, quick, paper)."""
    p = PRESET_DIR / f"{name}.yaml"
    if not p.is_file():
        avail = sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset {name!r}; available: {avail}")
    return p
