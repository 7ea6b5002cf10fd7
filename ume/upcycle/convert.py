"""UME upcycling: turn a trained dense Conformer into an MoE model whose experts start as
copies of the dense FFNs (arXiv 2412.17507), optionally with Drop-Upcycling (Nakamura et al.,
2025: each expert re-initialises a random fraction R of its hidden units).

Mapping (strict): every dense tensor lands in the MoE model unchanged, except the FFNs of
slots that became MoE, where

    <prefix>.w_1.weight (H, D) -> <prefix>.experts.w_1 (E, D, H)   [e] = weight.T for every e
    <prefix>.w_1.bias   (H,)   -> <prefix>.experts.b_1 (E, H)
    <prefix>.w_2.weight (D, H) -> <prefix>.experts.w_2 (E, H, D)   [e] = weight.T
    <prefix>.w_2.bias   (D,)   -> <prefix>.experts.b_2 (E, D)

The routers (<prefix>.router.weight) are the only new tensors: zeros (uniform routing),
N(0, router_init_std²), or "kmeans" (centroids of each layer's inputs on a few utterances,
ume/upcycle/router_init.py). With copied experts any router keeps the dense function.
Anything else left over on either side raises `UpcycleError` naming the keys.

Example:
    >>> report = upcycle_experiment("runs/dense", "runs/moe8", experts=8, top_k=2)
    >>> report["params_total"], report["params_active"]
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from ume.config import MoEConfig
from ume.errors import UmeError, name_list
from ume.model.asr import ASRModel
from ume.model.moe import ROUTER_INITS, expert_tensors_from_dense
from ume.model.params import count_params, moe_layers, param_report
from ume.model.slots import SLOTS, moe_layer_selected

log = logging.getLogger(__name__)

_FFN_MAP = {  # dense suffix -> (expert tensor, transpose)
    "w_1.weight": ("experts.w_1", True),
    "w_1.bias": ("experts.b_1", False),
    "w_2.weight": ("experts.w_2", True),
    "w_2.bias": ("experts.b_2", False),
}


class UpcycleError(UmeError):
    """Dense weights and the MoE model do not correspond (the message names the keys)."""


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


def _expand_ffn(
    prefix: str,
    ffn: dict[str, torch.Tensor],
    moe: torch.nn.Module,
    target: dict[str, torch.Tensor],
    shape_errors: list[str],
) -> dict[str, torch.Tensor]:
    """A dense FFN's four tensors -> the MoE layer's stacked expert tensors (copies, or 1/G
    slices for fine-grained experts); {} (and a message in shape_errors) if they do not fit."""
    if set(ffn) != set(_FFN_MAP):
        return {}  # reported as missing MoE tensors
    w1, b1, w2, b2 = (ffn[k] for k in ("w_1.weight", "w_1.bias", "w_2.weight", "w_2.bias"))
    try:
        if w1.dim() != 2 or w2.shape != w1.shape[::-1]:
            raise ValueError(f"w_1 {tuple(w1.shape)} and w_2 {tuple(w2.shape)} do not pair up")
        tensors = expert_tensors_from_dense(w1, b1, w2, b2, moe.num_experts, moe.groups)
    except ValueError as e:
        shape_errors.append(f"{prefix}: {e}")
        return {}
    out = {}
    for name, t in tensors.items():
        tkey = f"{prefix}.experts.{name}"
        want = target[tkey].shape
        if tuple(t.shape) != tuple(want):
            shape_errors.append(
                f"{prefix} dense FFN (H={w1.shape[0]}, D={w1.shape[1]}) gives {tkey} "
                f"{tuple(t.shape)}, the MoE model has {tuple(want)}"
            )
            return {}
        out[f"experts.{name}"] = t.to(target[tkey].dtype)
    return out


def _noise_upcycle(
    experts: dict[str, torch.Tensor], std: float, frac: float, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """Noise upcycling: in each expert, a random fraction `frac` of the hidden units gets
    Gaussian noise of std `std` x the tensor's own std added to its w_1 column and w_2 row
    (biases untouched). Experts stay close to the dense FFN but are no longer equal."""
    w1, w2 = experts["experts.w_1"].clone(), experts["experts.w_2"].clone()
    e, _, h = w1.shape
    n = max(1, int(round(frac * h)))
    s1, s2 = w1[0].std().item() * std, w2[0].std().item() * std
    for i in range(e):
        idx = torch.randperm(h, generator=gen)[:n]
        w1[i][:, idx] += torch.randn((w1.shape[1], n), generator=gen).mul_(s1).to(w1.dtype)
        w2[i][idx, :] += torch.randn((n, w2.shape[2]), generator=gen).mul_(s2).to(w2.dtype)
    return {**experts, "experts.w_1": w1, "experts.w_2": w2}


def upcycle_state_dict(
    dense_sd: dict[str, torch.Tensor],
    moe_model: torch.nn.Module,
    drop_ratio: float = 0.0,
    seed: int = 0,
    noise_std: float = 0.0,
    noise_frac: float = 1.0,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Map a dense state dict onto `moe_model`'s keys (see module docstring).

    Returns (state_dict for moe_model.load_state_dict(strict=True), report). The report has
    counts "copied" (tensors taken over unchanged), "expanded" (dense FFN tensors copied into
    every expert), "new" (router tensors, initialised per the layer's moe config), the list
    "new_keys", "moe_layers" and "drop_ratio".
    """
    if not 0.0 <= drop_ratio <= 1.0:
        raise UpcycleError(f"drop ratio {drop_ratio} must be in [0, 1]")
    if noise_std < 0 or not 0.0 < noise_frac <= 1.0:
        raise UpcycleError(
            f"noise upcycling: std {noise_std} must be >= 0 and fraction {noise_frac} in (0, 1]"
        )
    target = moe_model.state_dict()
    layers = moe_layers(moe_model)
    if not layers:
        raise UpcycleError("the target model has no MoE layers (moe.num_experts is 0?)")
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    shape_errors: list[str] = []
    expanded = 0

    dense_ffn: dict[str, dict[str, torch.Tensor]] = {p: {} for p in layers}
    for key, t in dense_sd.items():
        prefix = next((p for p in layers if key.startswith(p + ".")), None)
        if prefix is not None:
            suffix = key[len(prefix) + 1 :]
            if suffix not in _FFN_MAP:
                unexpected.append(key)
                continue
            dense_ffn[prefix][suffix] = t
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
        got = _expand_ffn(prefix, dense_ffn[prefix], moe, target, shape_errors)
        expanded += len(dense_ffn[prefix]) if got else 0
        if got and drop_ratio > 0:
            got = _drop_upcycle(got, drop_ratio, gen)
        if got and noise_std > 0:
            got = _noise_upcycle(got, noise_std, noise_frac, gen)
        for name, t in got.items():
            out[f"{prefix}.{name}"] = t
        rkey = f"{prefix}.router.weight"
        moe_cfg = moe.cfg
        if moe_cfg.router_init in ("zeros", "kmeans"):  # kmeans: set from data afterwards
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
                f"{name_list(unexpected)}"
            )
        if missing:
            lines.append(
                f"  MoE tensors not provided by the dense model ({len(missing)}): {name_list(missing)}"
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
        "noise_std": noise_std,
        "noise_frac": noise_frac,
    }
    return out, report


def _moe_config(
    base: MoEConfig,
    experts: int,
    top_k: int,
    slots: list[str] | None,
    layers: str,
    router_init: str,
    balance_coef: float | None,
    z_loss_coef: float | None,
    groups: int = 1,
    router_noise: float = 0.0,
) -> MoEConfig:
    cfg = copy.deepcopy(base)
    cfg.num_experts = int(experts)
    cfg.top_k = int(top_k)
    cfg.groups = int(groups)
    cfg.router_noise = float(router_noise)
    if cfg.groups < 1 or cfg.num_experts % cfg.groups:
        raise UpcycleError(f"--groups {groups} must be >= 1 and divide --experts {experts}")
    if cfg.router_noise < 0:
        raise UpcycleError(f"--router-noise {router_noise} must be >= 0")
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
    if not 1 <= cfg.top_k <= cfg.num_experts // cfg.groups:
        raise UpcycleError(
            f"--top-k {top_k} must be between 1 and the experts per group "
            f"(--experts {experts} / --groups {groups})"
        )
    bad = [s for s in cfg.slots if s not in SLOTS]
    if bad or not cfg.slots:
        raise UpcycleError(f"--slots {cfg.slots}: choose one or more of {list(SLOTS)}")
    if router_init not in ROUTER_INITS:
        raise UpcycleError(f"--router-init {router_init!r}: use one of {', '.join(ROUTER_INITS)}")
    try:
        moe_layer_selected(layers, 0, 1)
    except ValueError as e:
        raise UpcycleError(str(e)) from e
    return cfg


def _kmeans_routers(model, tok, cfg, data: str | Path, utts: int, seed: int) -> dict:
    from ume.data.loader import load_batch
    from ume.data.manifest import DataError
    from ume.upcycle.router_init import init_routers_kmeans

    try:
        _, batches = load_batch(data, cfg.features, utts)
        return init_routers_kmeans(model, tok, batches, seed=seed)
    except (DataError, ValueError) as e:
        raise UpcycleError(f"--router-init kmeans on {data}: {e}") from e


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
    groups: int = 1,
    noise_std: float = 0.0,
    noise_frac: float = 1.0,
    router_noise: float = 0.0,
    router_data: str | Path | None = None,
    router_utts: int = 200,
) -> dict:
    """Write an upcycled MoE experiment dir (config, tokenizer, cmvn, model.safetensors,
    upcycle.json) that `ume decode` and `ume train --init` accept.

    Symmetry breakers: groups > 1 makes fine-grained experts (1/groups slices of
    the dense FFN, function-preserving); drop_ratio (Drop-Upcycling) and noise_std/noise_frac
    (noise upcycling) perturb the experts (not function-preserving); router_noise adds noise
    to the router logits during training only; router_init="kmeans" sets each router to
    k-means centroids of its layer's inputs on the first router_utts utterances of
    router_data (a Kaldi dir or data.list; function-preserving, content-aware routing).
    slots=None keeps the dense config's moe.slots (default: both encoder FFNs);
    balance_coef/z_loss_coef=None keep the config's values. Refuses an MoE input and, unless
    overwrite, an out_dir that already holds weights.
    """
    from ume.expdir import MODEL_FILE, load_experiment, write_experiment

    dense_dir, out_dir = Path(dense_dir), Path(out_dir)
    if (router_init == "kmeans") != (router_data is not None):
        raise UpcycleError(
            "--router-init kmeans needs --router-data (utterances to cluster the layer inputs "
            "of), and --router-data is only used by --router-init kmeans"
        )
    if router_utts < 1:
        raise UpcycleError(f"--router-utts {router_utts} must be >= 1")
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
        cfg.model.moe,
        experts,
        top_k,
        slots,
        layers,
        router_init,
        balance_coef,
        z_loss_coef,
        groups=groups,
        router_noise=router_noise,
    )
    moe_model = ASRModel(new_cfg.model, tok.vocab_size)
    if not moe_layers(moe_model):
        raise UpcycleError(
            f"slots {new_cfg.model.moe.slots} with layers={layers!r} select no FFN of this model "
            "(e.g. encoder_macaron with encoder.macaron=false)"
        )
    sd, rep = upcycle_state_dict(
        dense.state_dict(), moe_model, drop_ratio, seed, noise_std=noise_std, noise_frac=noise_frac
    )
    moe_model.load_state_dict(sd, strict=True)
    moe_model.eval()
    kmeans = None
    if router_init == "kmeans":
        kmeans = _kmeans_routers(moe_model, tok, new_cfg, router_data, router_utts, seed)
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
        "groups": new_cfg.model.moe.groups,
        "router_noise": new_cfg.model.moe.router_noise,
        "seed": seed,
        **rep,
        "params_dense": dense_params,
        **param_report(moe_model),
    }
    report["num_moe_layers"] = len(rep["moe_layers"])
    if kmeans is not None:
        report["router_data"] = str(router_data)
        report["router_utts"] = router_utts
        report["kmeans"] = kmeans["layers"]
    from ume.expdir import atomic_write_json

    atomic_write_json(report, out_dir / "upcycle.json")
    return report


__all__ = ["UpcycleError", "upcycle_experiment", "upcycle_state_dict"]
