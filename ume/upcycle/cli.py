"""`ume upcycle`: dense experiment dir -> MoE experiment dir, optionally verified.

Example:
    $ ume upcycle --dense runs/dense --out runs/moe8 --experts 8 --top-k 2 --verify
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ume.data.loader import load_batch, random_batch
from ume.model.moe import ROUTER_INITS
from ume.model.slots import SLOTS
from ume.upcycle.convert import UpcycleError, upcycle_experiment
from ume.upcycle.verify import VERIFY_TOL, verify_upcycle


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
    p.add_argument(
        "--noise-upcycling",
        type=float,
        default=0.0,
        metavar="STD",
        help="add Gaussian noise (STD x each weight tensor's std) to a fraction --noise-frac "
        "of each expert's hidden units (breaks the experts' symmetry; not function-preserving)",
    )
    p.add_argument("--noise-frac", type=float, default=1.0, metavar="F")
    p.add_argument(
        "--groups",
        type=int,
        default=1,
        metavar="G",
        help="fine-grained experts: each expert is a 1/G slice of the dense FFN, routed top-k "
        "within G virtual groups (function-preserving; G*k experts active per token)",
    )
    p.add_argument(
        "--router-noise",
        type=float,
        default=0.0,
        metavar="STD",
        help="Gaussian noise on the router logits during training (noisy top-k gating)",
    )
    p.add_argument(
        "--router-init",
        default="zeros",
        choices=list(ROUTER_INITS),
        help="zeros: uniform routing; normal: N(0, 0.02²); kmeans: centroids of each layer's "
        "inputs on --router-data (content-aware from step 0; all three keep the dense function)",
    )
    p.add_argument(
        "--router-data",
        default=None,
        help="Kaldi dir or data.list whose utterances --router-init kmeans clusters",
    )
    p.add_argument("--router-utts", type=int, default=200, metavar="N")
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


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def main_upcycle(args: argparse.Namespace) -> int:
    """`ume upcycle`: returns 0 on success, 1 if --verify finds a mismatch, 2 on bad input."""
    from ume.expdir import ExpDirError, load_experiment

    slots = getattr(args, "slots", None)
    if isinstance(slots, str):
        slots = [s.strip() for s in slots.split(",") if s.strip()]
    drop = float(getattr(args, "drop_upcycling", 0.0) or 0.0)
    noise = float(getattr(args, "noise_upcycling", 0.0) or 0.0)
    perturbed = drop > 0 or noise > 0  # the function changes by design
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
            groups=int(getattr(args, "groups", 1) or 1),
            noise_std=noise,
            noise_frac=float(getattr(args, "noise_frac", 1.0) or 1.0),
            router_noise=float(getattr(args, "router_noise", 0.0) or 0.0),
            router_data=getattr(args, "router_data", None),
            router_utts=int(getattr(args, "router_utts", 200) or 200),
        )
    except (UpcycleError, ExpDirError) as e:
        print(f"ume upcycle: error: {e}", file=sys.stderr)
        return 2
    print(
        f"upcycled {report['dense']} -> {report['out']}: {report['num_moe_layers']} MoE layers "
        f"(slots {','.join(report['slots'])}, layers {report['layers']}), "
        f"E={report['experts']} k={report['top_k']}, router {report['router_init']}"
        + (f", groups {report['groups']}" if report["groups"] > 1 else "")
        + (f", drop-upcycling R={drop}" if drop > 0 else "")
        + (f", noise-upcycling std={noise} frac={report['noise_frac']}" if noise > 0 else "")
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
        feats, lens = random_batch(cfg.model.encoder.input_dim)
        src = "a random padded batch (give --verify-data for real utterances)"
    res = verify_upcycle(dense, moe, feats, lens, tok)
    ok = res["identical_decodes"]
    if not perturbed:
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
    if perturbed:
        print("  (drop/noise upcycling change the function by design; differences are expected)")
        return 0
    if not ok:
        print(f"  FAILED: the upcycled model does not reproduce the dense one (tol {VERIFY_TOL})")
        return 1
    print("  OK: the upcycled model reproduces the dense model")
    return 0
