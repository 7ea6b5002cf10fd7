"""WeNet in and out: `ume import --format wenet` and `ume export --format wenet`.

A WeNet model dir, as WeNet writes it:
    final.pt      plain `torch.save(model.state_dict())` (read with weights_only=True)
    train.yaml    the model, tokenizer, CMVN and feature configuration
    global_cmvn   JSON {"mean_stat", "var_stat", "frame_num"} (WeNet's `is_json_cmvn: true`)
    units.txt     "token id" per line (+ the sentencepiece model train.yaml names for `bpe`)

Import writes a complete ume experiment dir (config.yaml, tokenizer/, cmvn.json,
model.safetensors, wenet_import.json) that `ume decode`, `ume train --init`, `ume upcycle`,
`ume export` and `ume inspect` accept. The model config says what WeNet's conformer computes:
encoder.pos_enc "wenet" (absolute sinusoid positions, no rel_shift), encoder.conv_context
"wenet", encoder.final_norm "both" (or "block" for final_norm: false), encoder.conv_norm as
cnn_module_norm; features are WeNet's fbank (scaled to the int16 range, dither 0 at decode).
The mapping is strict (ume/interop/wenet_keys.py): a WeNet tensor with no place in the ume model,
or a ume tensor no WeNet tensor fills, fails the import naming the keys.

Export writes final.pt, train.yaml, global_cmvn and units.txt (+ bpe.model) for a dense or an
upcycled model. WeNet's MoE (`mlp_type: moe`, MoEFFNLayer) routes top-k on the gate logits,
then softmax over those k: the same gates as ume's softmax over all E, top-k, renormalised
(softmax is monotonic and the common normaliser cancels); it has no router bias and sits in
every encoder FFN of every block, so other MoE shapes are refused, naming why.

Example:
    $ ume import --format wenet exp/aishell_u2pp --out runs/wenet_dense
    $ ume upcycle --dense runs/wenet_dense --out runs/wenet_moe --experts 8 --top-k 2 --verify
    $ ume export --model runs/wenet_moe --format wenet --out exp/aishell_u2pp_moe
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import torch
import yaml

from ume.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from ume.config import ExperimentConfig
from ume.errors import name_list
from ume.interop.wenet_config import (
    WeNetError,
    check_exportable,
    config_from_wenet,
    wenet_yaml_from_config,
)
from ume.interop.wenet_keys import MOE_EXPERT, STACKED, KeyTable
from ume.model.attention import sinusoid

log = logging.getLogger(__name__)
PE_MAX_LEN = 5000  # length of WeNet's stored sinusoid tables
PE_TOL = 1e-4


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain state dict saved by torch.save, read without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeNetError(f"checkpoint {path} does not exist (pass --checkpoint FILE)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for bad files
        raise WeNetError(
            f"{path}: not a torch state dict readable with weights_only=True ({e})"
        ) from e
    if not isinstance(sd, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise WeNetError(
            f"{path}: expected a plain state dict (name -> tensor), as WeNet's final.pt is; "
            "got a container with other entries"
        )
    return sd


# ---- state dicts -----------------------------------------------------------------------------
def wenet_to_ume(
    sd: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    cfg: ExperimentConfig,
    info: dict,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """WeNet state dict -> ume state dict shaped like `own` (the ume model's state dict).

    Returns (ume state dict, WeNet keys that WeNet's own forward does not use and that were
    therefore dropped: encoder.after_norm.* under final_norm: false). Raises WeNetError naming
    unplaced WeNet keys, unfilled ume keys and shape mismatches."""
    table = KeyTable(cfg.model.encoder.subsampling, cfg.model.decoder.r_num_blocks > 0)
    out: dict[str, torch.Tensor] = {}
    filled: dict[str, set[int]] = {}
    unplaced, dropped, bad_shape = [], [], []
    for key, value in sd.items():
        if key in table.pe_keys:
            _check_pe(key, value)
            continue
        ukey = table.to_ume(key)
        if ukey is not None and ukey.startswith("encoder.after_norm.") and not info["final_norm"]:
            dropped.append(key)  # WeNet builds it but skips it with final_norm: false
            continue
        if ukey is None:
            unplaced.append(key)
            continue
        if ukey.endswith(".gate.weight") and ukey.replace(".gate.", ".router.") in own:
            ukey = ukey.replace(".gate.", ".router.")
        m = MOE_EXPERT.match(ukey)
        if m is not None:
            name, transpose = STACKED[(m["w"], m["p"])]
            skey, e = f"{m['ffn']}.experts.{name}", int(m["e"])
            if skey not in own or e >= own[skey].shape[0]:
                unplaced.append(key)
                continue
            v = value.t() if transpose else value
            if v.shape != own[skey].shape[1:]:
                bad_shape.append(f"{key} {tuple(value.shape)}")
                continue
            if skey not in out:
                out[skey] = torch.empty_like(own[skey])
            out[skey][e].copy_(v)
            filled.setdefault(skey, set()).add(e)
            continue
        if ukey not in own:
            unplaced.append(key)
        elif value.shape != own[ukey].shape:
            bad_shape.append(f"{key} {tuple(value.shape)} (ume {ukey} {tuple(own[ukey].shape)})")
        else:
            out[ukey] = value.to(own[ukey].dtype).clone()
    if info["cmvn"] is None:  # no CMVN in WeNet: identity normalisation
        for k, v in (("cmvn_mean", 0.0), ("cmvn_istd", 1.0)):
            if k not in out:
                out[k] = torch.full_like(own[k], v)
    missing = [k for k in own if k not in out]
    missing += [
        f"{k}[{e}]" for k, got in filled.items() for e in range(own[k].shape[0]) if e not in got
    ]
    problems = []
    if unplaced:
        problems.append(f"checkpoint tensors with no place in the model: {name_list(unplaced)}")
    if missing:
        problems.append(f"model tensors the checkpoint does not provide: {name_list(missing)}")
    if bad_shape:
        problems.append(f"shape mismatches: {name_list(bad_shape)}")
    if problems:
        raise WeNetError(
            "the checkpoint does not match its train.yaml:\n  " + "\n  ".join(problems)
        )
    return out, dropped


def _check_pe(key: str, value: torch.Tensor) -> None:
    """WeNet stores its sinusoid table; ume computes the same one: make sure they agree."""
    if value.dim() != 3 or value.shape[0] != 1:
        raise WeNetError(
            f"{key}: expected a (1, max_len, D) sinusoid table, got {tuple(value.shape)}"
        )
    ref = sinusoid(torch.arange(value.shape[1]), value.shape[2]).unsqueeze(0)
    diff = float((value.float() - ref).abs().max())
    if diff > PE_TOL:
        raise WeNetError(
            f"{key}: positional table differs from the standard sinusoids by {diff:.2e}; "
            "this model uses positions ume does not implement"
        )


_UNSTACK = {
    "w_1": ("w_1", "weight"),
    "b_1": ("w_1", "bias"),
    "w_2": ("w_2", "weight"),
    "b_2": ("w_2", "bias"),
}


def ume_to_wenet(sd: dict[str, torch.Tensor], cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """ume state dict -> the state dict WeNet's ASRModel for `wenet_yaml_from_config` loads
    with strict=True (call check_exportable(cfg) first)."""
    e = cfg.model.encoder
    table = KeyTable(e.subsampling, cfg.model.decoder.r_num_blocks > 0)
    out: dict[str, torch.Tensor] = {}
    unplaced = []
    for key, value in sd.items():
        value = value.detach().cpu()
        parts = key.rsplit(".", 2)
        if len(parts) == 3 and parts[1] == "experts" and parts[2] in ("w_1", "b_1", "w_2", "b_2"):
            prefix = table.to_wenet(parts[0] + ".w_1.weight")  # the FFN's WeNet name
            if prefix is None:
                unplaced.append(key)
                continue
            ffn = prefix[: -len(".w_1.weight")]
            w, p = _UNSTACK[parts[2]]
            for j in range(value.shape[0]):
                v = value[j].t() if p == "weight" else value[j]
                out[f"{ffn}.experts.{j}.{w}.{p}"] = v.contiguous().clone()
            continue
        if key.endswith(".router.weight"):
            wkey = table.to_wenet(key.replace(".router.weight", ".w_1.weight"))
            if wkey is None:
                unplaced.append(key)
                continue
            out[wkey.replace(".w_1.weight", ".gate.weight")] = value.clone()
            continue
        wkey = table.to_wenet(key)
        if wkey is None:
            unplaced.append(key)
        else:
            out[wkey] = value.clone()
    if unplaced:
        raise WeNetError(f"model tensors with no WeNet name: {name_list(unplaced)}")
    d = e.d_model
    for key in table.pe_keys:
        out[key] = sinusoid(torch.arange(PE_MAX_LEN), d).unsqueeze(0)  # (1, 5000, D)
    if e.final_norm == "block":  # WeNet builds after_norm even with final_norm: false
        out["encoder.after_norm.weight"] = torch.ones(d)
        out["encoder.after_norm.bias"] = torch.zeros(d)
    return out


# ---- files -----------------------------------------------------------------------------------
def _find(wdir: Path, named: str | None, fallback: str) -> Path | None:
    """A file train.yaml names, looked up in the WeNet model dir only: by the named path's base
    name, then by the named path under the dir, then by `fallback`; last, the named path itself
    when it is absolute. A relative path is never resolved against the current directory (a
    recipe dir's data/dict/lang_char.txt must not replace the model's own units.txt)."""
    cands = []
    if named:
        cands += [wdir / Path(named).name]
        if not Path(named).is_absolute():
            cands.append(wdir / named)
    cands.append(wdir / fallback)
    if named and Path(named).is_absolute():
        cands.append(Path(named))
    return next((c for c in cands if c.is_file()), None)


def read_json_cmvn(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """WeNet's JSON global_cmvn (sums over frames) -> (mean (F,), istd (F,))."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        n = float(obj["frame_num"])
        s = torch.tensor(obj["mean_stat"], dtype=torch.float64)
        sq = torch.tensor(obj["var_stat"], dtype=torch.float64)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise WeNetError(
            f"{path}: not a JSON global_cmvn ({e}); expected mean_stat, var_stat, frame_num"
        ) from e
    mean = s / n
    var = (sq / n - mean * mean).clamp(min=1e-20)
    return mean.float(), (1.0 / var.sqrt()).float()


def write_json_cmvn(mean: torch.Tensor, istd: torch.Tensor, path: Path) -> None:
    """(mean, istd) -> WeNet's JSON stats with frame_num 1 (what WeNet recomputes them from)."""
    m = mean.double()
    var_stat = 1.0 / istd.double() ** 2 + m * m
    obj = {"mean_stat": m.tolist(), "var_stat": var_stat.tolist(), "frame_num": 1}
    atomic_write_text(path, json.dumps(obj))


def _read_tokenizer(wdir: Path, info: dict, files: dict[str, str]):
    """The model's units (+ BPE model, + non-linguistic symbols) from the WeNet dir; `files`
    records which file each came from."""
    from ume.data.units_tokenizer import UnitsTokenizer

    tconf = info["tokenizer_conf"]
    units = _find(wdir, tconf.get("symbol_table_path"), "units.txt")
    if units is None:
        raise WeNetError(f"{wdir}: no units.txt (nor the symbol_table_path train.yaml names)")
    bpe = None
    if info["tokenizer"] == "bpe":
        bpe = _find(wdir, tconf.get("bpe_path"), "bpe.model")
        if bpe is None:
            raise WeNetError(
                f"{wdir}: tokenizer bpe needs the sentencepiece model bpe_path="
                f"{tconf.get('bpe_path')!r}; copy it into the WeNet dir"
            )
    syms = None
    if tconf.get("non_lang_syms_path"):
        syms = _find(wdir, tconf["non_lang_syms_path"], "non_lang_syms.txt")
        if syms is None:
            raise WeNetError(
                f"{wdir}: non_lang_syms_path {tconf['non_lang_syms_path']!r} not found"
            )
    vocab = info["vocab_size"]
    special = {k: v for k, v in info["special"].items() if v != vocab - 1}
    try:
        tok = UnitsTokenizer.from_units_file(
            units, bpe, syms, bool(tconf.get("split_with_space", False)), special
        )
    except ValueError as e:
        raise WeNetError(str(e)) from e
    files["units"] = str(units.resolve())
    if bpe is not None:
        files["bpe_model"] = str(bpe.resolve())
    if syms is not None:
        files["non_lang_syms"] = str(syms.resolve())
    if tok.vocab_size != info["vocab_size"]:
        raise WeNetError(
            f"{units} has {tok.vocab_size} units but train.yaml output_dim is {info['vocab_size']}"
        )
    return tok


def import_wenet(
    wenet_dir: str | os.PathLike, out_dir: str | os.PathLike, checkpoint: str | None = None
) -> dict:
    """Read a WeNet model dir and write a ume experiment dir; returns a report dict."""
    from ume.expdir import MODEL_FILE, atomic_write_json, write_experiment
    from ume.model.asr import ASRModel

    wdir, out = Path(wenet_dir), Path(out_dir)
    ypath = wdir / "train.yaml"
    if not ypath.is_file():
        raise WeNetError(f"{ypath} does not exist: a WeNet model dir holds train.yaml + final.pt")
    if (out / MODEL_FILE).exists():
        raise WeNetError(f"{out / MODEL_FILE} already exists; choose a new --out")
    configs = yaml.safe_load(ypath.read_text(encoding="utf-8")) or {}
    try:
        cfg, info = config_from_wenet(configs)
    except WeNetError as e:
        raise WeNetError(f"{ypath}: {e}") from e
    ckpt = Path(checkpoint) if checkpoint else wdir / "final.pt"
    sd = read_checkpoint(ckpt)
    files: dict[str, str] = {}
    tok = _read_tokenizer(wdir, info, files)
    model = ASRModel(cfg.model, tok.vocab_size)
    try:
        usd, dropped = wenet_to_ume(sd, model.state_dict(), cfg, info)
    except WeNetError as e:
        raise WeNetError(f"{ckpt}: {e}") from e
    model.load_state_dict(usd, strict=True)
    model.eval()
    report = {
        "source": str(wdir.resolve()),
        "checkpoint": str(ckpt.resolve()),
        "tensors": len(sd),
        "dropped_unused": dropped,
        "vocab_size": tok.vocab_size,
        "tokenizer": info["tokenizer"],
        "sos": model.sos,
        "eos": model.eos,
        "files": files,
        "moe_experts": cfg.model.moe.num_experts,
    }
    if info["cmvn"] == "global_cmvn":
        cpath = _find(wdir, info["cmvn_conf"].get("cmvn_file"), "global_cmvn")
        if cpath is not None and info["cmvn_conf"].get("is_json_cmvn", True):
            files["global_cmvn"] = str(cpath.resolve())
            mean, istd = read_json_cmvn(cpath)
            diff = max(
                float((mean - model.cmvn_mean).abs().max()),
                float(((istd - model.cmvn_istd) / model.cmvn_istd).abs().max()),
            )
            report["cmvn_file_vs_checkpoint"] = diff
            if diff > 1e-3:
                log.warning(
                    "%s differs from the checkpoint's CMVN by %.2e; the checkpoint's is used "
                    "(as WeNet does)",
                    cpath,
                    diff,
                )
    write_experiment(out, cfg, tok, model)  # type: ignore[arg-type]
    atomic_write_json(report, out / "wenet_import.json")
    report["out"] = str(out)
    return report


def export_wenet(exp_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Write a ume experiment (dense or upcycled) as a WeNet model dir; returns a report."""
    from ume.expdir import load_experiment

    exp, out = Path(exp_dir), Path(out_dir)
    cfg, tok, model = load_experiment(exp)
    check_exportable(cfg)
    sd = ume_to_wenet(model.state_dict(), cfg)
    out.mkdir(parents=True, exist_ok=True)
    units = list(tok.units)
    special = {"<blank>": 0, "<sos>": model.sos, "<eos>": model.eos}
    if "<unk>" in units:
        special["<unk>"] = units.index("<unk>")
    kind = getattr(tok, "kind", "bpe")  # ume's own tokenizer: CJK chars + English BPE pieces
    tokenizer = {
        "kind": kind,
        "symbol_table_path": str((out / "units.txt").resolve()),
        "split_with_space": getattr(tok, "split_with_space", False),
        "special_tokens": special,
        "non_lang_syms_path": None,
    }
    if getattr(tok, "non_lang_syms", None):
        atomic_write_text(out / "non_lang_syms.txt", "\n".join(tok.non_lang_syms) + "\n")
        tokenizer["non_lang_syms_path"] = str((out / "non_lang_syms.txt").resolve())
    if kind == "bpe":
        atomic_write_bytes(out / "bpe.model", (exp / "tokenizer" / "bpe.model").read_bytes())
        tokenizer["bpe_path"] = str((out / "bpe.model").resolve())
    atomic_write_text(out / "units.txt", "".join(f"{u} {i}\n" for i, u in enumerate(units)))
    write_json_cmvn(model.cmvn_mean, model.cmvn_istd, out / "global_cmvn")
    conf = wenet_yaml_from_config(cfg, len(units), tokenizer, str((out / "global_cmvn").resolve()))
    atomic_write_text(out / "train.yaml", yaml.safe_dump(conf, sort_keys=False, allow_unicode=True))
    with atomic_path(out / "final.pt") as tmp:
        torch.save(sd, tmp)
    return {
        "model": str(exp),
        "out": str(out),
        "tensors": len(sd),
        "mlp_type": conf["encoder_conf"]["mlp_type"],
        "n_expert": cfg.model.moe.num_experts,
        "n_expert_activated": cfg.model.moe.top_k if cfg.model.moe.num_experts else 0,
        "params": int(sum(v.numel() for k, v in sd.items() if not k.endswith(".pe"))),
    }


# ---- command line ----------------------------------------------------------------------------
def add_import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", required=True, choices=["wenet"], help="source toolkit")
    p.add_argument("src", metavar="WENET_DIR", help="WeNet model dir (train.yaml, final.pt, ...)")
    p.add_argument("--out", required=True, help="new ume experiment dir")
    p.add_argument("--checkpoint", help="checkpoint to read instead of WENET_DIR/final.pt")


def main_import(args: argparse.Namespace) -> int:
    """`ume import --format wenet WENET_DIR --out EXPDIR [--checkpoint FILE]`."""
    report = import_wenet(args.src, args.out, args.checkpoint)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def main_export_wenet(args: argparse.Namespace) -> int:
    """`ume export --model EXPDIR --format wenet --out WENET_DIR`."""
    if getattr(args, "check", False):
        raise WeNetError("--check compares ONNX with eager PyTorch; it is for --format onnx")
    report = export_wenet(args.model, args.out)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


__all__ = [
    "WeNetError",
    "export_wenet",
    "import_wenet",
    "read_checkpoint",
    "ume_to_wenet",
    "wenet_to_ume",
]
