"""UME upcycling: turn a trained dense Conformer into an MoE model whose experts start as
copies of the dense FFNs (arXiv 2412.17507), optionally with Drop-Upcycling (Nakamura et al.,
2025: each expert re-initialises a random fraction R of its hidden units).

Mapping (strict): every dense tensor lands in the MoE model unchanged, except the FFNs of
slots that became MoE, where

    <prefix>.w_1.weight (H, D) -> <prefix>.experts.w_1 (E, D, H)   [e] = weight.T for every e
    <prefix>.w_1.bias   (H,)   -> <prefix>.experts.b_1 (E, H)
    <prefix>.w_2.weight (D, H) -> <prefix>.experts.w_2 (E, H, D)   [e] = weight.T
    <prefix>.w_2.bias   (D,)   -> <prefix>.experts.b_2 (E, D)

The routers (<prefix>.router.weight) are the only new tensors: zeros (uniform routing, so the
upcycled model computes exactly what the dense one did) or N(0, router_init_std²).
Anything else left over on either side raises `UpcycleError` naming the keys.

Example:
    >>> report = upcycle_experiment("runs/dense", "runs/moe8", experts=8, top_k=2)
    >>> report["params_total"], report["params_active"]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path

import torch

from ume.config import MoEConfig
from ume.model.asr import ASRModel, add_sos_eos, count_params, reverse_targets
from ume.model.ffn import SLOTS, moe_layer_selected
from ume.model.moe import MoEFeedForward

log = logging.getLogger(__name__)

_FFN_MAP = {  # dense suffix -> (expert tensor, transpose)
    "w_1.weight": ("experts.w_1", True),
    "w_1.bias": ("experts.b_1", False),
    "w_2.weight": ("experts.w_2", True),
    "w_2.bias": ("experts.b_2", False),
}


class UpcycleError(ValueError):
    """Dense weights and the MoE model do not correspond (the message names the keys)."""


def moe_layers(model: torch.nn.Module) -> dict[str, MoEFeedForward]:
    """Module-name prefix -> MoE layer, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MoEFeedForward)}


def _names(keys: list[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _drop_upcycle(
    experts: dict[str, torch.Tensor], ratio: float, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """Re-initialise round(ratio·H) random hidden units of each expert independently: columns
    of w_1 / entries of b_1 / rows of w_2, drawn from N(mean, std²) of the original tensor."""
    w1, b1, w2 = experts["experts.w_1"], experts["experts.b_1"], experts["experts.w_2"]
    e, _, h = w1.shape
    n_drop = int(round(ratio * h))
    if n_drop == 0:
        return experts
    w1, b1, w2 = w1.clone(), b1.clone(), w2.clone()
    stats = {
        name: (t[0].mean().item(), t[0].std().item())
        for name, t in (("w1", w1), ("b1", b1), ("w2", w2))
    }  # all experts equal the dense tensor

    def noise(shape: tuple[int, ...], which: str) -> torch.Tensor:
        mean, std = stats[which]
        return torch.randn(shape, generator=gen, dtype=torch.float64).mul_(std).add_(mean)

    for i in range(e):
        idx = torch.randperm(h, generator=gen)[:n_drop]
        w1[i][:, idx] = noise((w1.shape[1], n_drop), "w1").to(w1.dtype)
        b1[i][idx] = noise((n_drop,), "b1").to(b1.dtype)
        w2[i][idx, :] = noise((n_drop, w2.shape[2]), "w2").to(w2.dtype)
    return {**experts, "experts.w_1": w1, "experts.b_1": b1, "experts.w_2": w2}


def upcycle_state_dict(
    dense_sd: dict[str, torch.Tensor],
    moe_model: torch.nn.Module,
    drop_ratio: float = 0.0,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Map a dense state dict onto `moe_model`'s keys (see module docstring).

    Returns (state_dict for moe_model.load_state_dict(strict=True), report). The report has
    counts "copied" (tensors taken over unchanged), "expanded" (dense FFN tensors copied into
    every expert), "new" (router tensors, initialised per the layer's moe config), the list
    "new_keys", "moe_layers" and "drop_ratio".
    """
    if not 0.0 <= drop_ratio <= 1.0:
        raise UpcycleError(f"drop ratio {drop_ratio} must be in [0, 1]")
    target = moe_model.state_dict()
    layers = moe_layers(moe_model)
    if not layers:
        raise UpcycleError("the target model has no MoE layers (moe.num_experts is 0?)")
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    shape_errors: list[str] = []
    expanded = 0
    per_layer: dict[str, dict[str, torch.Tensor]] = {p: {} for p in layers}

    for key, t in dense_sd.items():
        prefix = next((p for p in layers if key.startswith(p + ".")), None)
        if prefix is not None:
            suffix = key[len(prefix) + 1 :]
            if suffix not in _FFN_MAP:
                unexpected.append(key)
                continue
            name, transpose = _FFN_MAP[suffix]
            tkey = f"{prefix}.{name}"
            src = t.t() if transpose else t
            want = target[tkey].shape
            if tuple(src.shape) != tuple(want[1:]):
                shape_errors.append(
                    f"{key} {tuple(t.shape)} does not fit {tkey} {tuple(want)} (per expert "
                    f"{tuple(want[1:])})"
                )
                continue
            per_layer[prefix][name] = (
                src.unsqueeze(0).expand(want).to(target[tkey].dtype).contiguous()
            )
            expanded += 1
        elif key in target:
            if tuple(t.shape) != tuple(target[key].shape):
                shape_errors.append(
                    f"{key}: dense {tuple(t.shape)} vs MoE model {tuple(target[key].shape)}"
                )
                continue
            out[key] = t.detach().clone()
        else:
            unexpected.append(key)

    new_keys: list[str] = []
    missing: list[str] = []
    for prefix, moe in layers.items():
        got = per_layer[prefix]
        if set(got) == {v for v, _ in _FFN_MAP.values()} and drop_ratio > 0:
            got = _drop_upcycle(got, drop_ratio, gen)
        for name, t in got.items():
            out[f"{prefix}.{name}"] = t
        rkey = f"{prefix}.router.weight"
        moe_cfg = moe.cfg
        if moe_cfg.router_init == "zeros":
            out[rkey] = torch.zeros_like(target[rkey])
        else:
            w = torch.randn(target[rkey].shape, generator=gen) * moe_cfg.router_init_std
            out[rkey] = w.to(target[rkey].dtype)
        new_keys.append(rkey)
    missing = [k for k in target if k not in out]

    if unexpected or missing or shape_errors:
        lines = ["dense weights do not match the MoE model:"]
        if unexpected:
            lines.append(
                f"  dense tensors with no place in the MoE model ({len(unexpected)}): "
                f"{_names(unexpected)}"
            )
        if missing:
            lines.append(
                f"  MoE tensors not provided by the dense model ({len(missing)}): {_names(missing)}"
            )
        lines.extend(f"  shape mismatch: {s}" for s in shape_errors[:12])
        lines.append(
            "Upcycle from the dense experiment this MoE config was derived from "
            "(same encoder/decoder sizes and vocabulary)."
        )
        raise UpcycleError("\n".join(lines))

    report = {
        "copied": len(dense_sd) - expanded,
        "expanded": expanded,
        "new": len(new_keys),
        "new_keys": new_keys,
        "moe_layers": list(layers),
        "drop_ratio": drop_ratio,
    }
    return out, report


def param_report(model: torch.nn.Module) -> dict:
    """Total parameters and parameters active per token (non-expert + k/E of each layer's
    experts)."""
    total = count_params(model)
    expert = active_expert = 0
    for moe in moe_layers(model).values():
        n = sum(p.numel() for p in moe.experts.parameters())
        expert += n
        active_expert += n * moe.top_k / moe.num_experts
    return {
        "params_total": total,
        "params_expert": expert,
        "params_active": int(round(total - expert + active_expert)),
    }


def _moe_config(
    base: MoEConfig,
    experts: int,
    top_k: int,
    slots: list[str] | None,
    layers: str,
    router_init: str,
    balance_coef: float | None,
    z_loss_coef: float | None,
) -> MoEConfig:
    cfg = copy.deepcopy(base)
    cfg.num_experts = int(experts)
    cfg.top_k = int(top_k)
    if slots is not None:
        cfg.slots = list(slots)
    cfg.layers = layers
    cfg.router_init = router_init
    if balance_coef is not None:
        cfg.balance_coef = float(balance_coef)
    if z_loss_coef is not None:
        cfg.z_loss_coef = float(z_loss_coef)
    if cfg.num_experts < 2:
        raise UpcycleError(f"--experts {experts}: upcycling needs at least 2 experts")
    if not 1 <= cfg.top_k <= cfg.num_experts:
        raise UpcycleError(f"--top-k {top_k} must be between 1 and --experts {experts}")
    bad = [s for s in cfg.slots if s not in SLOTS]
    if bad or not cfg.slots:
        raise UpcycleError(f"--slots {cfg.slots}: choose one or more of {list(SLOTS)}")
    if router_init not in ("zeros", "normal"):
        raise UpcycleError(f"--router-init {router_init!r}: use 'zeros' or 'normal'")
    try:
        moe_layer_selected(layers, 0, 1)
    except ValueError as e:
        raise UpcycleError(str(e)) from e
    return cfg


def upcycle_experiment(
    dense_dir: str | Path,
    out_dir: str | Path,
    experts: int,
    top_k: int,
    slots: list[str] | None = None,
    layers: str = "all",
    drop_ratio: float = 0.0,
    router_init: str = "zeros",
    balance_coef: float | None = None,
    z_loss_coef: float | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Write an upcycled MoE experiment dir (config, tokenizer, cmvn, model.safetensors,
    upcycle.json) that `ume decode` and `ume train --init` accept.

    slots=None keeps the dense config's moe.slots (default: both encoder FFNs);
    balance_coef/z_loss_coef=None keep the config's values. Refuses an MoE input and, unless
    overwrite, an out_dir that already holds weights.
    """
    from ume.expdir import MODEL_FILE, load_experiment, write_experiment

    dense_dir, out_dir = Path(dense_dir), Path(out_dir)
    if out_dir.resolve() == dense_dir.resolve():
        raise UpcycleError("--out must differ from --dense (the dense model would be lost)")
    if (out_dir / MODEL_FILE).exists() and not overwrite:
        raise UpcycleError(
            f"{out_dir / MODEL_FILE} already exists; choose a new --out or remove it first"
        )
    cfg, tok, dense = load_experiment(dense_dir)
    if cfg.model.moe.num_experts > 0 or moe_layers(dense):
        raise UpcycleError(
            f"{dense_dir} is already an MoE model (moe.num_experts="
            f"{cfg.model.moe.num_experts}); upcycle from the dense experiment instead"
        )
    new_cfg = copy.deepcopy(cfg)
    new_cfg.model.moe = _moe_config(
        cfg.model.moe, experts, top_k, slots, layers, router_init, balance_coef, z_loss_coef
    )
    moe_model = ASRModel(new_cfg.model, tok.vocab_size)
    if not moe_layers(moe_model):
        raise UpcycleError(
            f"slots {new_cfg.model.moe.slots} with layers={layers!r} select no FFN of this model "
            "(e.g. encoder_macaron with encoder.macaron=false)"
        )
    sd, rep = upcycle_state_dict(dense.state_dict(), moe_model, drop_ratio, seed)
    moe_model.load_state_dict(sd, strict=True)
    moe_model.eval()
    write_experiment(out_dir, new_cfg, tok, moe_model)
    dense_params = count_params(dense)
    report = {
        "dense": str(dense_dir),
        "out": str(out_dir),
        "experts": new_cfg.model.moe.num_experts,
        "top_k": new_cfg.model.moe.top_k,
        "slots": new_cfg.model.moe.slots,
        "layers": layers,
        "router_init": router_init,
        "seed": seed,
        **rep,
        "params_dense": dense_params,
        **param_report(moe_model),
    }
    report["num_moe_layers"] = len(rep["moe_layers"])
    from ume.expdir import atomic_write_json

    atomic_write_json(report, out_dir / "upcycle.json")
    return report


# ---- verification ------------------------------------------------------------------------------
def _max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    if not bool(mask.any()):
        return 0.0
    return float((a.float() - b.float()).abs()[mask].max())


@torch.no_grad()
def verify_upcycle(
    dense_model: ASRModel,
    moe_model: ASRModel,
    feats: torch.Tensor,
    feat_lens: torch.Tensor,
    tokenizer=None,
    beam: int = 4,
    modes: tuple[str, ...] | None = None,
) -> dict:
    """Compare the dense and upcycled models (eval mode) on a padded batch.

    Returns max_abs_diff_ctc (CTC log-probs over valid frames), max_abs_diff_decoder (l2r and
    r2l logits on the dense model's CTC greedy hypotheses, valid positions), identical_decodes
    (ctc_greedy, ctc_prefix_beam, attention, attention_rescoring, or just `modes`, all give
    the same tokens; beam width `beam`),
    per-mode "decodes_equal", and bf16_max_abs_diff_ctc (same CTC comparison under bf16
    autocast, report only). With a tokenizer, "example" holds the first hypothesis as text.
    """
    from ume.decode.search import MODES, ctc_greedy, decode_batch

    was = dense_model.training, moe_model.training
    dense_model.eval()
    moe_model.eval()
    try:
        enc_d, valid = dense_model.encode(feats, feat_lens)
        enc_m, valid_m = moe_model.encode(feats, feat_lens)
        if not torch.equal(valid, valid_m):
            raise UpcycleError("dense and MoE encoders disagree on the output lengths")
        lp_d, lp_m = dense_model.ctc_log_probs(enc_d), moe_model.ctc_log_probs(enc_m)
        res: dict = {"max_abs_diff_ctc": _max_diff(lp_d, lp_m, valid)}

        lens = valid.sum(1)
        hyps = ctc_greedy(lp_d, lens)
        vocab = dense_model.vocab_size
        seqs = [h if h else [1 + b % max(vocab - 2, 1)] for b, h in enumerate(hyps)]
        ys_lens = torch.tensor([len(s) for s in seqs])
        ys = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(s) for s in seqs], batch_first=True, padding_value=-1
        )
        sos = dense_model.sos_eos
        ys_in, _ = add_sos_eos(ys, ys_lens, sos)
        r_ys_in, _ = add_sos_eos(reverse_targets(ys, ys_lens), ys_lens, sos)
        in_lens = ys_lens + 1
        dev = feats.device
        ys_in, r_ys_in, in_lens = ys_in.to(dev), r_ys_in.to(dev), in_lens.to(dev)
        tmask = torch.arange(ys_in.size(1), device=dev).unsqueeze(0) < in_lens.unsqueeze(1)
        l2r_d, r2l_d = dense_model.decoder(enc_d, valid, ys_in, in_lens, r_ys_in)
        l2r_m, r2l_m = moe_model.decoder(enc_m, valid, ys_in, in_lens, r_ys_in)
        dec = _max_diff(l2r_d, l2r_m, tmask)
        if r2l_d is not None and r2l_m is not None:
            dec = max(dec, _max_diff(r2l_d, r2l_m, tmask))
        res["max_abs_diff_decoder"] = dec

        equal = {}
        first = None
        for mode in modes or MODES:
            a = decode_batch(dense_model, feats, feat_lens, mode=mode, beam=beam)
            b = decode_batch(moe_model, feats, feat_lens, mode=mode, beam=beam)
            equal[mode] = a == b
            first = first if first is not None else a
        res["decodes_equal"] = equal
        res["identical_decodes"] = all(equal.values())
        if tokenizer is not None and first:
            res["example"] = tokenizer.decode(first[0])

        with torch.autocast(feats.device.type, dtype=torch.bfloat16):
            e_d, v = dense_model.encode(feats, feat_lens)
            e_m, _ = moe_model.encode(feats, feat_lens)
            res["bf16_max_abs_diff_ctc"] = _max_diff(
                dense_model.ctc_log_probs(e_d), moe_model.ctc_log_probs(e_m), v
            )
    finally:
        dense_model.train(was[0])
        moe_model.train(was[1])
    return res


def load_batch(data: str | Path, features_cfg, max_utts: int) -> tuple[list, list[tuple]]:
    """Up to max_utts utterances of a Kaldi dir / data.list as a list of padded batches
    [(feats (B, T, F), lens (B,), utts)], longest first, ≤ 8 utterances per batch."""
    from ume.data.loader import FeatureStore
    from ume.data.manifest import load_manifest

    utts, _ = load_manifest(data, require_text=False)
    store = FeatureStore.build(utts[:max_utts], features_cfg, progress=False)
    order = sorted(range(len(store)), key=lambda i: -store.lengths[i])
    batches = []
    for s in range(0, len(order), 8):
        idx = order[s : s + 8]
        feats, lens = store.collate(idx)
        batches.append((feats, lens, [store.utts[i] for i in idx]))
    return store.utts, batches


def _random_batch(input_dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([400, 317, 256, 180])
    feats = torch.randn(len(lens), int(lens.max()), input_dim, generator=g) * 3.0 + 8.0
    feats = feats * (torch.arange(feats.size(1)).view(1, -1, 1) < lens.view(-1, 1, 1))
    return feats, lens


# ---- CLI entry points --------------------------------------------------------------------------
VERIFY_TOL = 1e-4


def add_upcycle_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dense", required=True, help="trained dense experiment dir")
    p.add_argument("--out", required=True, help="new MoE experiment dir")
    p.add_argument("--experts", type=int, default=8, help="experts per MoE layer (E)")
    p.add_argument("--top-k", type=int, default=2, help="experts per token (k)")
    p.add_argument(
        "--slots",
        default=None,
        help=f"comma list of FFN slots to upcycle, from {','.join(SLOTS)} "
        "(default: the config's moe.slots, i.e. both encoder FFNs)",
    )
    p.add_argument("--layers", default="all", help="all, every_other, top_half or '0,2,4'")
    p.add_argument(
        "--drop-upcycling",
        type=float,
        default=0.0,
        metavar="R",
        help="Drop-Upcycling: re-initialise this fraction of each expert's hidden units",
    )
    p.add_argument("--router-init", default="zeros", choices=["zeros", "normal"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite weights already in --out")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check that the upcycled model reproduces the dense one",
    )
    p.add_argument(
        "--verify-data",
        default=None,
        help="Kaldi dir or data.list for --verify (default: random features)",
    )


def add_inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("expdir", help="MoE experiment dir")
    p.add_argument("--data", default=None, help="Kaldi dir or data.list to measure expert load")
    p.add_argument("--max-utts", type=int, default=50)
    p.add_argument("--png", default=None, help="write a load / similarity heat-map here")


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def main_upcycle(args: argparse.Namespace) -> int:
    """`ume upcycle`: returns 0 on success, 1 if --verify finds a mismatch, 2 on bad input."""
    from ume.expdir import ExpDirError, load_experiment

    slots = getattr(args, "slots", None)
    if isinstance(slots, str):
        slots = [s.strip() for s in slots.split(",") if s.strip()]
    drop = float(getattr(args, "drop_upcycling", 0.0) or 0.0)
    try:
        report = upcycle_experiment(
            args.dense,
            args.out,
            experts=args.experts,
            top_k=args.top_k,
            slots=slots,
            layers=getattr(args, "layers", "all") or "all",
            drop_ratio=drop,
            router_init=getattr(args, "router_init", "zeros") or "zeros",
            seed=int(getattr(args, "seed", 0) or 0),
            overwrite=bool(getattr(args, "force", False)),
        )
    except (UpcycleError, ExpDirError) as e:
        print(f"ume upcycle: error: {e}")
        return 2
    print(
        f"upcycled {report['dense']} -> {report['out']}: {report['num_moe_layers']} MoE layers "
        f"(slots {','.join(report['slots'])}, layers {report['layers']}), "
        f"E={report['experts']} k={report['top_k']}, router {report['router_init']}"
        + (f", drop-upcycling R={drop}" if drop > 0 else "")
    )
    print(
        f"tensors: {report['copied']} copied, {report['expanded']} FFN tensors expanded into "
        f"experts, {report['new']} new (routers)"
    )
    print(
        f"params: dense {_fmt_params(report['params_dense'])}, MoE total "
        f"{_fmt_params(report['params_total'])}, active per token "
        f"{_fmt_params(report['params_active'])}"
    )
    if not getattr(args, "verify", False):
        return 0
    _, tok, dense = load_experiment(args.dense)
    cfg, _, moe = load_experiment(args.out)
    vdata = getattr(args, "verify_data", None)
    if vdata:
        _, batches = load_batch(vdata, cfg.features, max_utts=8)
        feats, lens, _ = batches[0]
        src = f"{len(lens)} utterances of {vdata}"
    else:
        feats, lens = _random_batch(cfg.model.encoder.input_dim)
        src = "a random padded batch (give --verify-data for real utterances)"
    res = verify_upcycle(dense, moe, feats, lens, tok)
    ok = res["identical_decodes"]
    if drop == 0:
        ok = ok and max(res["max_abs_diff_ctc"], res["max_abs_diff_decoder"]) <= VERIFY_TOL
    print(f"verify on {src}:")
    print(
        f"  max |Δ| CTC log-probs {res['max_abs_diff_ctc']:.2e}, decoder logits "
        f"{res['max_abs_diff_decoder']:.2e}, bf16 CTC {res['bf16_max_abs_diff_ctc']:.2e}"
    )
    print(
        "  decodes identical: "
        + ", ".join(f"{m} {'yes' if v else 'NO'}" for m, v in res["decodes_equal"].items())
    )
    with open(Path(args.out) / "upcycle.json", encoding="utf-8") as f:
        saved = json.load(f)
    saved["verify"] = res
    from ume.expdir import atomic_write_json

    atomic_write_json(saved, Path(args.out) / "upcycle.json")
    if drop > 0:
        print("  (drop-upcycling changes the function by design; differences are expected)")
        return 0
    if not ok:
        print(f"  FAILED: the upcycled model does not reproduce the dense one (tol {VERIFY_TOL})")
        return 1
    print("  OK: the upcycled model reproduces the dense model")
    return 0


def main_inspect(args: argparse.Namespace) -> int:
    """`ume inspect EXPDIR [--data D] [--png P]`: per-layer expert load and similarity."""
    from ume.expdir import ExpDirError
    from ume.inspect import format_report, inspect_experiment

    exp = getattr(args, "expdir", None) or getattr(args, "exp_dir", None)
    try:
        rep = inspect_experiment(
            exp,
            data=getattr(args, "data", None),
            max_utts=int(getattr(args, "max_utts", 50) or 50),
            png=getattr(args, "png", None),
        )
    except (ExpDirError, UpcycleError) as e:
        print(f"ume inspect: error: {e}")
        return 2
    print(format_report(rep))
    return 0


__all__ = [
    "UpcycleError",
    "add_inspect_args",
    "add_upcycle_args",
    "main_inspect",
    "main_upcycle",
    "moe_layers",
    "param_report",
    "upcycle_experiment",
    "upcycle_state_dict",
    "verify_upcycle",
]
