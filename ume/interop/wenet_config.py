"""WeNet train.yaml <-> ume ExperimentConfig, for a U2++ Conformer (`ume import/export --format
wenet`).

What ume can express of a WeNet model (anything else is a `WeNetError` naming the option):
  encoder: conformer; input_layer conv2d | conv2d6 | conv2d8; pos_enc_layer_type rel_pos with
           selfattention_layer_type rel_selfattn (-> encoder.pos_enc "wenet": absolute sinusoid
           positions, no rel_shift); cnn_module_norm layer_norm | batch_norm; causal or not;
           macaron or not; final_norm true (-> final_norm "both") or false ("block"); swish;
           mlp_type position_wise_feed_forward or moe (both encoder FFN slots of every block)
  decoder: bitransformer (r_num_blocks >= 1) or transformer; relu; mlp_type as above
  model:   asr_model, ctc, global_cmvn (or none), blank 0; <sos> and <eos> at any ids
           (tokenizer_conf.special_tokens, each the last id when absent, as WeNet reads them:
           '<sos/eos>' last in older char recipes, at id 2 in BPE recipes)
Options that only shape training (dropout rates, gradient checkpointing, sdpa, dynamic chunks,
loss weights) are carried over where ume has them and otherwise ignored.

Example:
    >>> cfg, info = config_from_wenet(yaml.safe_load(open("wenet_exp/train.yaml")))
    >>> cfg.model.encoder.pos_enc
    'wenet'
"""

from __future__ import annotations

from typing import Any

from ume.config import (
    DecoderConfig,
    EncoderConfig,
    ExperimentConfig,
    FeatureConfig,
    ModelConfig,
    MoEConfig,
)
from ume.errors import UmeError


class WeNetError(UmeError):
    """A WeNet dir, checkpoint or config that ume cannot read or write faithfully."""


SUBSAMPLING = {"conv2d": 4, "conv2d6": 6, "conv2d8": 8}
# WeNet ConformerEncoder / TransformerDecoder defaults for the keys ume maps
# (the layer options both take alike: attention implementation, norms, FFN/MoE type)
_LAYER_DEFAULTS: dict[str, Any] = {
    "use_sdpa": False,
    "layer_norm_type": "layer_norm",
    "norm_eps": 1e-5,
    "n_kv_head": None,
    "head_dim": None,
    "mlp_type": "position_wise_feed_forward",
    "mlp_bias": True,
    "n_expert": 8,
    "n_expert_activated": 2,
}
ENC_DEFAULTS: dict[str, Any] = {
    "output_size": 256,
    "attention_heads": 4,
    "linear_units": 2048,
    "num_blocks": 6,
    "dropout_rate": 0.1,
    "positional_dropout_rate": 0.1,
    "attention_dropout_rate": 0.0,
    "input_layer": "conv2d",
    "pos_enc_layer_type": "rel_pos",
    "normalize_before": True,
    "static_chunk_size": 0,
    "use_dynamic_chunk": False,
    "use_dynamic_left_chunk": False,
    "positionwise_conv_kernel_size": 1,
    "macaron_style": True,
    "selfattention_layer_type": "rel_selfattn",
    "activation_type": "swish",
    "use_cnn_module": True,
    "cnn_module_kernel": 15,
    "causal": False,
    "cnn_module_norm": "batch_norm",
    "query_bias": True,
    "key_bias": True,
    "value_bias": True,
    "conv_bias": True,
    "gradient_checkpointing": False,
    **_LAYER_DEFAULTS,
    "conv_norm_eps": 1e-5,
    "conv_inner_factor": 2,
    "final_norm": True,
}
DEC_DEFAULTS: dict[str, Any] = {
    "attention_heads": 4,
    "linear_units": 2048,
    "num_blocks": 6,
    "r_num_blocks": 0,
    "dropout_rate": 0.1,
    "positional_dropout_rate": 0.1,
    "self_attention_dropout_rate": 0.0,
    "src_attention_dropout_rate": 0.0,
    "input_layer": "embed",
    "use_output_layer": True,
    "normalize_before": True,
    "src_attention": True,
    "query_bias": True,
    "key_bias": True,
    "value_bias": True,
    "src_query_bias": True,
    "src_key_bias": True,
    "src_value_bias": True,
    "activation_type": "relu",
    "gradient_checkpointing": False,
    "tie_word_embedding": False,
    **_LAYER_DEFAULTS,
}
# options that change what the model computes: ume implements only WeNet's default value
ENC_FIXED = (
    "pos_enc_layer_type selfattention_layer_type normalize_before activation_type use_cnn_module "
    "query_bias key_bias value_bias conv_bias layer_norm_type norm_eps n_kv_head head_dim "
    "mlp_bias conv_norm_eps conv_inner_factor static_chunk_size"
).split()
DEC_FIXED = (
    "input_layer use_output_layer normalize_before src_attention query_bias key_bias value_bias "
    "src_query_bias src_key_bias src_value_bias activation_type tie_word_embedding "
    "layer_norm_type norm_eps n_kv_head head_dim mlp_bias"
).split()
MODEL_CONF_KEYS = {
    "ctc_weight": 0.5,
    "lsm_weight": 0.0,
    "length_normalized_loss": False,
    "reverse_weight": 0.0,
    "apply_non_blank_embedding": False,
}
MLP_TYPES = ("position_wise_feed_forward", "moe")


def _section(conf: dict, name: str, defaults: dict, fixed: list[str]) -> dict:
    """conf with defaults filled; unknown keys and unsupported values raise WeNetError."""
    conf = dict(conf or {})
    unknown = sorted(set(conf) - set(defaults))
    if unknown:
        raise WeNetError(
            f"train.yaml {name}: unsupported option(s) {unknown}; ume reads a U2++ Conformer "
            f"with the options {sorted(defaults)}"
        )
    out = {**defaults, **conf}
    for key in fixed:
        want = defaults[key]
        if out[key] != want:
            raise WeNetError(
                f"train.yaml {name}.{key}={out[key]!r} is not supported (ume implements only "
                f"{want!r}); this WeNet model cannot be imported"
            )
    if out["mlp_type"] not in MLP_TYPES:
        raise WeNetError(
            f"train.yaml {name}.mlp_type={out['mlp_type']!r}: ume supports {MLP_TYPES}"
        )
    return out


def _need(configs: dict, key: str, allowed: tuple, default: Any) -> Any:
    value = configs.get(key, default)
    if value not in allowed:
        raise WeNetError(f"train.yaml {key}: {value!r} is not supported; ume reads {allowed}")
    return value


def config_from_wenet(configs: dict) -> tuple[ExperimentConfig, dict]:
    """WeNet train.yaml mapping -> (ume ExperimentConfig, info) where info holds what the
    importer needs beyond the config: vocab size, decoder kind, cmvn, tokenizer options."""
    if not isinstance(configs, dict):
        raise WeNetError("train.yaml must be a mapping")
    _need(configs, "encoder", ("conformer",), "conformer")
    decoder = _need(configs, "decoder", ("bitransformer", "transformer"), "bitransformer")
    _need(configs, "model", ("asr_model",), "asr_model")
    _need(configs, "ctc", ("ctc",), "ctc")
    cmvn = _need(configs, "cmvn", ("global_cmvn", None), None)
    for key in ("input_dim", "output_dim"):
        if not isinstance(configs.get(key), int):
            raise WeNetError(f"train.yaml has no integer {key} (WeNet writes it at training)")
    if int((configs.get("ctc_conf") or {}).get("ctc_blank_id", 0)) != 0:
        raise WeNetError("train.yaml ctc_conf.ctc_blank_id must be 0 (ume's blank id)")
    enc = _section(configs.get("encoder_conf"), "encoder_conf", ENC_DEFAULTS, ENC_FIXED)
    dec = _section(configs.get("decoder_conf"), "decoder_conf", DEC_DEFAULTS, DEC_FIXED)
    if enc["input_layer"] not in SUBSAMPLING:
        raise WeNetError(
            f"train.yaml encoder_conf.input_layer={enc['input_layer']!r}: ume supports "
            f"{sorted(SUBSAMPLING)}"
        )
    if enc["cnn_module_norm"] not in ("layer_norm", "batch_norm"):
        raise WeNetError(f"train.yaml encoder_conf.cnn_module_norm={enc['cnn_module_norm']!r}")
    if decoder == "bitransformer" and dec["r_num_blocks"] < 1:
        raise WeNetError(
            "train.yaml decoder: bitransformer with r_num_blocks 0 (a right-to-left decoder "
            "without blocks) has no ume equivalent; ume reads r_num_blocks >= 1, or transformer"
        )
    mconf = {**MODEL_CONF_KEYS, **(configs.get("model_conf") or {})}
    unknown = sorted(set(mconf) - set(MODEL_CONF_KEYS))
    if unknown:
        raise WeNetError(f"train.yaml model_conf: unsupported option(s) {unknown}")
    if mconf["apply_non_blank_embedding"]:
        raise WeNetError("train.yaml model_conf.apply_non_blank_embedding=true is not supported")
    vocab = int(configs["output_dim"])
    tconf = dict(configs.get("tokenizer_conf") or {})
    sos, eos = special_tokens(tconf.get("special_tokens"), vocab)
    tokenizer = _need(configs, "tokenizer", ("char", "bpe"), "char")

    moe = _moe_from_wenet(enc, dec, decoder)
    rate = SUBSAMPLING[enc["input_layer"]]
    encoder = EncoderConfig(
        input_dim=int(configs["input_dim"]),
        d_model=int(enc["output_size"]),
        num_heads=int(enc["attention_heads"]),
        d_ff=int(enc["linear_units"]),
        num_blocks=int(enc["num_blocks"]),
        subsampling=rate,
        conv_kernel=int(enc["cnn_module_kernel"]),
        causal_conv=bool(enc["causal"]),
        dropout=float(enc["dropout_rate"]),
        attn_dropout=float(enc["attention_dropout_rate"]),
        macaron=bool(enc["macaron_style"]),
        final_norm="both" if enc["final_norm"] else "block",
        pos_enc="wenet",
        conv_norm=enc["cnn_module_norm"],
        conv_context="wenet",
    )
    decoder_cfg = DecoderConfig(
        num_blocks=int(dec["num_blocks"]),
        r_num_blocks=int(dec["r_num_blocks"]) if decoder == "bitransformer" else 0,
        num_heads=int(dec["attention_heads"]),
        d_ff=int(dec["linear_units"]),
        dropout=float(dec["dropout_rate"]),
    )
    model = ModelConfig(
        encoder=encoder,
        decoder=decoder_cfg,
        moe=moe,
        ctc_weight=float(mconf["ctc_weight"]),
        reverse_weight=float(mconf["reverse_weight"]) if decoder == "bitransformer" else 0.0,
        lsm_weight=float(mconf["lsm_weight"]),
        dynamic_chunk=bool(enc["use_dynamic_chunk"]),
        max_chunk=max(1, 100 // rate),  # WeNet: up to 1 s of delay
        dynamic_left_chunks=bool(enc["use_dynamic_left_chunk"]),
        sos_id=-1 if sos == vocab - 1 else sos,
        eos_id=-1 if eos == vocab - 1 else eos,
    )
    cfg = ExperimentConfig(features=_features_from_wenet(configs), model=model)
    if cfg.features.num_mel_bins != encoder.input_dim:
        raise WeNetError(
            f"train.yaml: fbank num_mel_bins {cfg.features.num_mel_bins} != input_dim "
            f"{encoder.input_dim}"
        )
    info = {
        "vocab_size": vocab,
        "decoder": decoder,
        "cmvn": cmvn,
        "cmvn_conf": dict(configs.get("cmvn_conf") or {}),
        "tokenizer": tokenizer,
        "tokenizer_conf": tconf,
        "special": {"sos": sos, "eos": eos},
        "final_norm": bool(enc["final_norm"]),
    }
    return cfg, info


# special_tokens keys that make WeNet's search prepend Whisper-style task prompts
_PROMPT_KEYS = ("sot", "eot", "transcribe", "translate", "no_timestamps")


def special_tokens(special: Any, vocab: int) -> tuple[int, int]:
    """(sos, eos) from train.yaml tokenizer_conf.special_tokens, read as WeNet's ASRModel reads
    it: "<sos>" and "<eos>" default to the last id (vocab - 1), "<blank>" must be the CTC blank
    (0), other entries ("<unk>") name units and change nothing the model computes."""
    where = "train.yaml tokenizer_conf.special_tokens"
    if special is None:
        special = {}
    if not isinstance(special, dict):
        raise WeNetError(f"{where} must be a mapping such as {{<sos>: 2, <eos>: 2}}")
    prompts = sorted(k for k in special if k in _PROMPT_KEYS)
    if prompts:
        raise WeNetError(
            f"{where} has {prompts}: WeNet then decodes with Whisper-style task prompts, which "
            "ume's U2++ search does not add; this model cannot be imported"
        )
    for key, value in special.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < vocab:
            raise WeNetError(
                f"{where} {key}: {value!r} is not an id of the vocabulary (0..{vocab - 1}, "
                "output_dim)"
            )
    if special.get("<blank>", 0) != 0:
        raise WeNetError(
            f"{where} <blank>: {special['<blank>']}: ume's CTC blank is id 0 (ctc_blank_id 0)"
        )
    return int(special.get("<sos>", vocab - 1)), int(special.get("<eos>", vocab - 1))


def _moe_from_wenet(enc: dict, dec: dict, decoder: str) -> MoEConfig:
    enc_moe, dec_moe = enc["mlp_type"] == "moe", dec["mlp_type"] == "moe"
    if not (enc_moe or dec_moe):
        return MoEConfig()
    slots: list[str] = []
    conf = enc if enc_moe else dec
    if enc_moe:
        slots += ["encoder_macaron", "encoder_ffn"] if enc["macaron_style"] else ["encoder_ffn"]
    if dec_moe:
        slots.append("decoder_ffn")
        if enc_moe and (enc["n_expert"], enc["n_expert_activated"]) != (
            dec["n_expert"],
            dec["n_expert_activated"],
        ):
            raise WeNetError(
                "train.yaml: encoder and decoder MoE with different n_expert/n_expert_activated "
                "cannot be expressed (ume has one MoE shape per model)"
            )
    e, k = int(conf["n_expert"]), int(conf["n_expert_activated"])
    if not 1 <= k <= e:
        raise WeNetError(f"train.yaml: n_expert_activated={k} must be in 1..n_expert={e}")
    return MoEConfig(num_experts=e, top_k=k, slots=slots, layers="all")


def _features_from_wenet(configs: dict) -> FeatureConfig:
    ds = configs.get("dataset_conf") or {}
    feats_type = ds.get("feats_type", "fbank")
    if feats_type != "fbank":
        raise WeNetError(
            f"train.yaml dataset_conf.feats_type={feats_type!r}: ume computes Kaldi fbank only"
        )
    rate = (ds.get("resample_conf") or {}).get("resample_rate", 16000)
    if rate != 16000:
        raise WeNetError(
            f"train.yaml dataset_conf.resample_conf.resample_rate={rate}: ume uses 16 kHz"
        )
    fb = ds.get("fbank_conf") or {}
    feats = FeatureConfig(
        num_mel_bins=int(fb.get("num_mel_bins", 80)),
        frame_shift_ms=float(fb.get("frame_shift", 10)),
        frame_length_ms=float(fb.get("frame_length", 25)),
        dither=0.0,  # WeNet decodes without dither (its recognize sets 0.0)
    )
    if ds.get("spec_aug", False):
        sa = ds.get("spec_aug_conf") or {}
        feats.spec_augment = True
        feats.num_time_masks = int(sa.get("num_t_mask", 2))
        feats.num_freq_masks = int(sa.get("num_f_mask", 2))
        feats.max_time_width = int(sa.get("max_t", 50))
        feats.max_freq_width = int(sa.get("max_f", 10))
    else:
        feats.spec_augment = False
    if ds.get("speed_perturb", False):
        feats.speed_perturb = [0.9, 1.0, 1.1]
    return feats


def check_exportable(cfg: ExperimentConfig) -> None:
    """Raise WeNetError naming every part of `cfg` that WeNet's U2++ Conformer cannot run."""
    e, why = cfg.model.encoder, []
    if e.pos_enc != "wenet":
        why.append(
            f"encoder.pos_enc={e.pos_enc!r}: WeNet's rel_pos attention uses absolute positions "
            "without rel_shift (pos_enc 'wenet'); a model trained with rel_shift computes "
            "something else in WeNet"
        )
    if e.conv_context != "wenet":
        why.append(
            f"encoder.conv_context={e.conv_context!r}: WeNet's conv module pads the causal left "
            "context before its first pointwise conv (conv_context 'wenet')"
        )
    if e.final_norm not in ("block", "both"):
        why.append(f"encoder.final_norm={e.final_norm!r}: WeNet's conformer blocks end in a norm")
    if e.subsampling not in SUBSAMPLING.values():
        why.append(f"encoder.subsampling={e.subsampling}: WeNet has {sorted(SUBSAMPLING.values())}")
    if e.subsampling_channels not in (0, e.d_model):
        why.append("encoder.subsampling_channels: WeNet's conv stem has d_model channels")
    if e.conv_norm not in ("layer_norm", "batch_norm"):
        why.append(f"encoder.conv_norm={e.conv_norm!r}")
    why += _moe_exportable(cfg)
    if why:
        raise WeNetError("cannot export as WeNet:\n  " + "\n  ".join(why))


# MoEConfig fields that only shape training (WeNet trains its MoE without them)
_MOE_TRAIN_ONLY = {
    "router_init",
    "router_init_std",
    "jitter",
    "router_noise",
    "balance_coef",
    "z_loss_coef",
}


def _moe_exportable(cfg: ExperimentConfig) -> list[str]:
    moe, why = cfg.model.moe, []
    if moe.num_experts == 0:
        return why
    enc_slots = ["encoder_macaron", "encoder_ffn"] if cfg.model.encoder.macaron else ["encoder_ffn"]
    chosen = set(moe.slots)
    if chosen & set(enc_slots) and not set(enc_slots) <= chosen:
        why.append(
            f"moe.slots={moe.slots}: WeNet's mlp_type moe replaces every encoder FFN of a "
            f"block ({enc_slots}), not some of them"
        )
    if moe.layers != "all":
        why.append(f"moe.layers={moe.layers!r}: WeNet puts MoE in every layer ('all')")
    if moe.capacity_factor > 0:
        why.append(
            f"moe.capacity_factor={moe.capacity_factor}: WeNet's MoE is dropless (no capacity)"
        )
    default = MoEConfig()
    known = {"num_experts", "top_k", "slots", "layers", "capacity_factor"} | _MOE_TRAIN_ONLY
    for name in vars(default):
        if name not in known and getattr(moe, name) != getattr(default, name):
            why.append(
                f"moe.{name}={getattr(moe, name)!r}: WeNet's MoEFFNLayer (linear gate without "
                "bias, top-k then softmax) has no such option"
            )
    return why


def wenet_yaml_from_config(
    cfg: ExperimentConfig, vocab_size: int, tokenizer: dict, cmvn_file: str
) -> dict:
    """The train.yaml WeNet needs to build this model (call `check_exportable` first).

    tokenizer: {"kind": "char"|"bpe", "symbol_table_path", "bpe_path", "split_with_space",
    "non_lang_syms_path", "special_tokens"}."""
    e, d, moe = cfg.model.encoder, cfg.model.decoder, cfg.model.moe
    rate = {v: k for k, v in SUBSAMPLING.items()}[e.subsampling]

    def mlp(slots: list[str]) -> dict:
        if moe.num_experts > 0 and set(slots) & set(moe.slots):
            return {"mlp_type": "moe", "n_expert": moe.num_experts, "n_expert_activated": moe.top_k}
        return {"mlp_type": "position_wise_feed_forward"}

    encoder_conf = {
        "output_size": e.d_model,
        "attention_heads": e.num_heads,
        "linear_units": e.d_ff,
        "num_blocks": e.num_blocks,
        "dropout_rate": e.dropout,
        "positional_dropout_rate": e.dropout,
        "attention_dropout_rate": e.attn_dropout,
        "input_layer": rate,
        "pos_enc_layer_type": "rel_pos",
        "selfattention_layer_type": "rel_selfattn",
        "normalize_before": True,
        "activation_type": "swish",
        "macaron_style": e.macaron,
        "use_cnn_module": True,
        "cnn_module_kernel": e.conv_kernel,
        "causal": e.causal_conv,
        "cnn_module_norm": e.conv_norm,
        "use_dynamic_chunk": cfg.model.dynamic_chunk,
        "use_dynamic_left_chunk": cfg.model.dynamic_left_chunks,
        "static_chunk_size": 0,
        "final_norm": e.final_norm == "both",
        **mlp(["encoder_macaron", "encoder_ffn"]),
    }
    decoder_conf = {
        "attention_heads": d.num_heads,
        "linear_units": d.d_ff,
        "num_blocks": d.num_blocks,
        "dropout_rate": d.dropout,
        "positional_dropout_rate": d.dropout,
        "self_attention_dropout_rate": 0.0,
        "src_attention_dropout_rate": 0.0,
        **mlp(["decoder_ffn"]),
    }
    bidir = d.r_num_blocks > 0
    if bidir:
        decoder_conf["r_num_blocks"] = d.r_num_blocks
    f = cfg.features
    tok_conf = {
        "symbol_table_path": tokenizer["symbol_table_path"],
        "split_with_space": tokenizer.get("split_with_space", False),
        "non_lang_syms_path": tokenizer.get("non_lang_syms_path"),
        "is_multilingual": False,
        "num_languages": 1,
        "special_tokens": tokenizer["special_tokens"],
    }
    if tokenizer["kind"] == "bpe":
        tok_conf["bpe_path"] = tokenizer["bpe_path"]
    return {
        "input_dim": e.input_dim,
        "output_dim": vocab_size,
        "vocab_size": vocab_size,
        "encoder": "conformer",
        "encoder_conf": encoder_conf,
        "decoder": "bitransformer" if bidir else "transformer",
        "decoder_conf": decoder_conf,
        "tokenizer": tokenizer["kind"],
        "tokenizer_conf": tok_conf,
        "ctc": "ctc",
        "ctc_conf": {"ctc_blank_id": 0},
        "cmvn": "global_cmvn",
        "cmvn_conf": {"cmvn_file": cmvn_file, "is_json_cmvn": True},
        "model": "asr_model",
        "model_conf": {
            "ctc_weight": cfg.model.ctc_weight,
            "lsm_weight": cfg.model.lsm_weight,
            "length_normalized_loss": False,
            "reverse_weight": cfg.model.reverse_weight if bidir else 0.0,
        },
        "dataset_conf": {
            "feats_type": "fbank",
            "fbank_conf": {
                "num_mel_bins": f.num_mel_bins,
                "frame_shift": f.frame_shift_ms,
                "frame_length": f.frame_length_ms,
                "dither": f.dither,
            },
            "resample_conf": {"resample_rate": 16000},
            "speed_perturb": bool(f.speed_perturb),
            "spec_aug": f.spec_augment,
            "spec_aug_conf": {
                "num_t_mask": f.num_time_masks,
                "num_f_mask": f.num_freq_masks,
                "max_t": f.max_time_width,
                "max_f": f.max_freq_width,
            },
        },
    }
