"""Tests for ume.config: strict loading, overrides, round trip, packaged presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ume.config import (
    PRESET_DIR,
    ConfigError,
    ExperimentConfig,
    PhaseConfig,
    apply_override,
    config_from_dict,
    load_config,
    preset_config,
    save_config,
)

REPO = Path(__file__).resolve().parent.parent


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_unknown_top_level_key(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.yaml", {"trian": {"lr": 0.1}})
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert "trian" in msg
    assert "allowed keys" in msg
    for k in ("features", "tokenizer", "model", "train"):
        assert k in msg


def test_unknown_nested_key(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.yaml", {"model": {"encoder": {"d_modle": 32}}})
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert "d_modle" in msg
    assert "model.encoder" in msg  # names the section
    assert "allowed keys" in msg and "'d_model'" in msg and "'num_heads'" in msg
    # same through an override
    with pytest.raises(ConfigError, match="d_modle"):
        load_config(tmp_path / "c.yaml", ["model.encoder.d_modle=3"])


def test_unknown_key_inside_phase_list() -> None:
    with pytest.raises(ConfigError, match=r"train\.phases\[1\].*stpes"):
        config_from_dict({"train": {"phases": [{"steps": 3}, {"stpes": 2}]}})


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("model.encoder.d_model=abc", "expected an integer"),
        ("model.encoder.d_model=1.5", "expected an integer"),
        ("model.encoder.d_model=true", "expected an integer"),
        ("train.lr=fast", "expected a number"),
        ("model.encoder.causal_conv=1", "expected true/false"),
        ("model.ctc_reduction=3", "expected a string"),
        ("features.speed_perturb=0.9", "expected a list"),
        ("model.encoder=5", "expected a mapping"),
    ],
)
def test_wrong_types(tmp_path: Path, override: str, fragment: str) -> None:
    p = _write(tmp_path / "c.yaml", {})
    with pytest.raises(ConfigError, match=fragment) as ei:
        load_config(p, [override])
    key = override.split("=")[0]
    assert key.split(".")[-1] in str(ei.value)


def test_override_sets_values() -> None:
    cfg = load_config(preset_config("tiny"), ["train.lr=0.001", "model.encoder.num_blocks=3"])
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.lr, float)
    assert cfg.model.encoder.num_blocks == 3
    assert cfg.model.encoder.d_model == 32  # untouched value from the file
    cfg = load_config(preset_config("tiny"), ["train.lr=1"])  # int accepted for a float
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    cfg = load_config(
        preset_config("tiny"),
        ["train.phases=[{steps: 5, trainable: moe}, {steps: 0, trainable: [ctc.]}]"],
    )
    assert cfg.train.phases == [PhaseConfig(5, "moe"), PhaseConfig(0, ["ctc."])]
    # value may contain '='
    d: dict = {}
    apply_override(d, "model.ctc_reduction=a=b")
    assert d == {"model": {"ctc_reduction": "a=b"}}


def test_numbers_yaml_reads_as_strings(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 1e-4 (no dot) and 1e3 as strings; numeric fields take them
    assert isinstance(yaml.safe_load("1e-4"), str)  # the cause, so the test stays meaningful
    cfg = load_config(preset_config("tiny"), ["train.lr=1e-4", "train.grad_clip=2E+0"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.grad_clip == 2.0 and isinstance(cfg.train.grad_clip, float)
    cfg = load_config(preset_config("tiny"), ["model.encoder.num_blocks=1e1"])
    assert cfg.model.encoder.num_blocks == 10 and isinstance(cfg.model.encoder.num_blocks, int)
    p = _write(tmp_path / "c.yaml", {"train": {"lr": "3e-4", "weight_decay": " 1e-2 "}})
    cfg = load_config(p)
    assert (cfg.train.lr, cfg.train.weight_decay) == (3e-4, 1e-2)
    for bad, fragment in [
        ("train.lr=1e-4x", "train.lr: expected a number"),
        ("train.lr=nan", "train.lr: expected a number"),
        ("model.encoder.num_blocks=1.5e0", "model.encoder.num_blocks: expected an integer"),
        ("model.encoder.num_blocks=twelve", "model.encoder.num_blocks: expected an integer"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            load_config(preset_config("tiny"), [bad])


def test_bad_overrides() -> None:
    tiny = preset_config("tiny")
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(tiny, ["train.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(tiny, ["train.lr.x=1"])  # lr is a value in tiny.yaml, not a section
    with pytest.raises(ConfigError, match="lrr"):
        load_config(tiny, ["train.lrr=0.1"])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        preset_config("tiny"),
        [
            "train.lr=0.0005",
            "features.speed_perturb=[0.9, 1.0, 1.1]",
            "train.phases=[{steps: 4, trainable: 'top:1'}, {steps: 0, trainable: all}]",
            "model.moe.slots=[encoder_ffn]",
        ],
    )
    out = tmp_path / "saved.yaml"
    save_config(cfg, out)
    assert not (tmp_path / "saved.yaml.tmp").exists()
    back = load_config(out)
    assert back == cfg
    assert back.train.phases[0] == PhaseConfig(4, "top:1")
    assert back.features.speed_perturb == [0.9, 1.0, 1.1]
    # defaults round trip too
    save_config(ExperimentConfig(), out)
    assert load_config(out) == ExperimentConfig()


@pytest.mark.parametrize("name", ["tiny", "quick", "paper"])
def test_presets_load(name: str) -> None:
    path = preset_config(name)
    assert path.parent == PRESET_DIR
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.model.encoder.d_model % cfg.model.encoder.num_heads == 0
    assert cfg.model.encoder.subsampling in (4, 6, 8)
    repo_copy = REPO / "configs" / f"{name}.yaml"
    if repo_copy.is_file():
        assert load_config(repo_copy) == cfg


def test_tiny_preset_is_tiny() -> None:
    cfg = load_config(preset_config("tiny"))
    assert cfg.model.encoder.d_model == 32
    assert cfg.tokenizer.bpe_size == 64


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError) as ei:
        preset_config("huge")
    msg = str(ei.value)
    assert "huge" in msg and "tiny" in msg and "quick" in msg and "paper" in msg


def test_override_into_empty_section(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  encoder:\n", encoding="utf-8")
    assert load_config(p).model.encoder.d_model == 144  # empty section = defaults
    assert load_config(p, ["model.encoder.d_model=32"]).model.encoder.d_model == 32


def test_keys_added_later_are_written_only_when_set(tmp_path) -> None:
    """A config that does not use sos_id/eos_id is written exactly as before they existed (its
    content hash names recorded runs); one that does keeps them through a round trip."""
    import yaml

    from ume.config import ExperimentConfig, load_config, save_config

    cfg = ExperimentConfig()
    save_config(cfg, tmp_path / "a.yaml")
    assert "sos_id" not in yaml.safe_load((tmp_path / "a.yaml").read_text())["model"]
    assert load_config(tmp_path / "a.yaml").model.sos_id == -1
    cfg.model.sos_id = cfg.model.eos_id = 2
    save_config(cfg, tmp_path / "b.yaml")
    back = load_config(tmp_path / "b.yaml")
    assert (back.model.sos_id, back.model.eos_id) == (2, 2)
