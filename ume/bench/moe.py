"""MoE dispatch micro-benchmark (`ume bench moe`; training throughput is ume/bench/train_speed.py).

`ume bench moe` times one `MoEFeedForward` layer ("ours") at realistic shapes, forward
(inference mode, eval) and forward+backward (train mode, gradient w.r.t. input and all
parameters), against three references measured in the same run, interleaved round by round so
that background load hits every method alike:

    grouped the same layer with DispatchOptions(path="grouped"): the expert GEMMs as
            torch._grouped_mm calls (ratio_grouped = grouped / ours; the loop where it does
            not qualify); auto: path="auto", and the path its measurement chose (auto_path)
    bound   k x a dense FeedForward(D, H) on the same N tokens: the FLOPs an MoE layer must do
            (ratio_bound = ours / bound; goal <= 1.15 forward at >= 2048 tokens)
    loop    the WeNet/Mixtral-style per-expert Python loop written below (torch.where over the
            top-k indices, one nn.Linear pair per expert, index_add of gated outputs)
            (ratio_loop = ours / loop; goal <= 0.8 at E >= 8)
    wenet   WeNet's own MoEFFNLayer (unmodified source via ../shared/third_party), our
            router and experts copied in (ratio_wenet = ours / wenet); null without ../shared
    hf      transformers' MixtralSparseMoeBlock with our router copied in, SwiGLU experts of
            2H/3 (same parameters and FLOPs per expert), once per experts implementation
            (eager, batched_mm, grouped_mm: hf_<impl>_ms); ratio_hf = ours / the fastest of
            them (hf_best names it); null without transformers (ume/bench/peers.py)
    ort     with --onnx (and --peers), forward only: the same layer as onnxruntime runs the
            graphs `ume export` writes, portable and fused (ort_portable_ms, ort_fused_ms),
            and k x the dense FFN in onnxruntime (ort_bound_ms); ratio_ort = ours / the
            faster onnxruntime MoE graph (ume/bench/ort_layer.py)

Each row also gives tokens/s per method (`<method>_tok_s` = tokens / median seconds of one
call; in "fwd_bwd" rows that is training throughput of the layer), and two of them as ratios:
tok_s_vs_dense = ours / the dense FFN the MoE layer replaces (the cost of upcycling one FFN:
below 1, about 1/k at large N) and tok_s_vs_wenet = ours / WeNet's layer (> 1: ours faster).

Device and dtype (`--device {cpu,cuda,auto}`, `--dtype {float32,bfloat16}`; ume/bench/run_on.py):
every layer, input and peer runs there; each timed call sits between two device
synchronisations (CUDA), and every row names "device", "gpu", "dtype" and "autocast".
bfloat16 is float32 weights under torch.autocast, as `ume train` runs train.precision=bf16.
The onnxruntime columns are CPU float32 only (with --peers elsewhere they stay null).

The router is normal-initialised (std 1/sqrt(D), so routing is varied but not uniform), or with
--router zeros as right after upcycling (MoEConfig's default: every token picks the same k
experts, the most skewed load). Every method routes identically (the same router; checked:
ours == loop == wenet outputs, hf's top-k choices == ours).

Examples:
    ume bench moe --json
    ume bench moe --quick
    ume bench moe --peers --router zeros --threads 1   # <= 512 tokens vs WeNet, HF, onnxruntime
    ume bench moe --shape 2048,144,8,2 --shape 37,144,8,2 --threads 1
    ume bench moe --device cuda --dtype bfloat16 --peers --json   # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from ume.bench.peers import PeerWrap, hf_blocks, hf_routing, wenet_layer
from ume.bench.run_on import DTYPES, RunOn
from ume.config import MoEConfig
from ume.device import DEVICE_CHOICES
from ume.errors import UmeError
from ume.machine import machine_info
from ume.model.dispatch_tuner import clear_chosen_paths, lookup, round_order
from ume.model.ffn import FeedForward
from ume.model.moe import MoEFeedForward
from ume.model.moe_dispatch import DispatchOptions, shape_key

log = logging.getLogger(__name__)

# (tokens, d_model, experts, top_k); d_ff = 4·d_model
FULL_GRID = [
    (n, d, e, k)
    for d in (144, 256, 512)
    for n in (256, 2048, 8192)
    for e in (4, 8, 16)
    for k in (1, 2)
]
QUICK_GRID = [(256, 144, 4, 1), (256, 144, 8, 2)]
# side by side with WeNet and HF at decoding-sized inputs (one utterance .. a small batch)
PEER_GRID = [(n, d, 8, 2) for d in (144, 256) for n in (37, 128, 512)]


# ---- references ---------------------------------------------------------------------------
class LoopMoE(nn.Module):
    """WeNet/Mixtral-style reference: per expert, torch.where over the top-k indices, run the
    expert's Linear layers on its tokens, index_add the gate-weighted outputs."""

    def __init__(self, moe: MoEFeedForward) -> None:
        super().__init__()
        d, h, e = moe.d_model, moe.d_ff, moe.num_experts
        self.top_k = moe.top_k
        self.gate = nn.Linear(d, e, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d, h), nn.SiLU(), nn.Linear(h, d)) for _ in range(e)
        )
        with torch.no_grad():
            self.gate.weight.copy_(moe.router.weight)
            for i, ex in enumerate(self.experts):
                ex[0].weight.copy_(moe.experts.w_1[i].t())
                ex[0].bias.copy_(moe.experts.b_1[i])
                ex[2].weight.copy_(moe.experts.w_2[i].t())
                ex[2].bias.copy_(moe.experts.b_2[i])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = self.gate(x).float().softmax(-1)
        weights, selected = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            tok, slot = torch.where(selected == i)
            if tok.numel() == 0:
                continue
            out.index_add_(0, tok, expert(x[tok]) * weights[tok, slot, None])
        return out.view(shape)


# ---- timing -------------------------------------------------------------------------------
def _interleaved_medians(
    fns: dict[str, Callable[[], None]],
    repeats: int,
    budget_s: float,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Median ms of each fn; rounds interleave the fns, in an order rotated every round
    (`round_order`). One warm-up call each; the number of rounds is cut to fit budget_s (but
    at least 3). `sync` runs right before and right after every call (`RunOn.sync`: on CUDA a
    call's time is then its kernels' time, not their launch)."""
    t_round = 0.0
    for fn in fns.values():  # warm-up (also sizes the budget)
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        t_round += time.perf_counter() - t0
    rounds = max(3, min(repeats, int(budget_s / max(t_round, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name in round_order(list(fns), r):
            sync()
            t0 = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) * 1000 for name, ts in times.items()}


def _fwd(module: nn.Module, x: torch.Tensor, on: RunOn) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode(), on.autocast():
            module(x)

    return run


def _fwd_bwd(
    module: nn.Module, x: torch.Tensor, grad: torch.Tensor, on: RunOn
) -> Callable[[], None]:
    params = [p for p in module.parameters() if p.requires_grad]

    def run() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        with on.autocast():  # the forward under autocast, the backward outside, as in training
            y = module(x)
        y.backward(grad.to(y.dtype))

    return run


def _runs_here(module: nn.Module, d: int, on: RunOn) -> bool:
    """Whether a peer's forward and backward run on this device and dtype (2 tokens)."""
    x = torch.randn(1, 2, d, device=on.device, requires_grad=True)
    try:
        with on.autocast():
            y = module(x)
        y.float().sum().backward()
    except (RuntimeError, NotImplementedError, TypeError) as e:
        log.warning("peer %s does not run on %s here: %s", type(module).__name__, on.device, e)
        return False
    finally:
        module.zero_grad(set_to_none=True)
    return True


def tokens_per_s(tokens: int, ms: float | None) -> float | None:
    """Throughput of one layer call: tokens / (median ms / 1000); None without a time."""
    return tokens / (ms / 1000.0) if ms else None


def build_layer(d: int, e: int, k: int, seed: int = 0, router: str = "normal") -> MoEFeedForward:
    """An MoE layer with H = 4·D, random experts and a normal router (std 1/sqrt(D): logits of
    unit scale on unit-variance inputs, so routing is varied but uneven, as in training), or
    router="zeros" (every token to the same k experts, as right after upcycling)."""
    if router not in ("normal", "zeros"):
        raise ValueError(f"router {router!r}: use 'normal' or 'zeros'")
    torch.manual_seed(seed)
    cfg = MoEConfig(num_experts=e, top_k=k, router_init=router, router_init_std=d**-0.5)
    return MoEFeedForward(d, 4 * d, "swish", 0.0, cfg)


def _check_same_math(
    moe: MoEFeedForward,
    mods: dict[str, nn.Module],
    hf: nn.Module | None,
    x: torch.Tensor,
    on: RunOn,
) -> None:
    """Before timing: in float32, ours == loop == grouped == auto (== WeNet's layer), and HF's
    block picks our experts; under bf16 autocast also ours == grouped == auto within bf16
    rounding (one float32 router, so the same experts; the peers' gates run in bf16 there
    and may flip near-ties, so they are compared in float32 only). Raises RuntimeError."""
    d = moe.d_model
    with torch.inference_mode():
        ref = moe(x)
        others = [mods[n] for n in ("loop", "grouped", "auto", "wenet") if n in mods]
        diff = max((ref - m(x)).abs().max().item() for m in others)
    if diff > 1e-4 * max(1.0, ref.abs().max().item()):
        raise RuntimeError(f"MoE layer and loop/grouped/WeNet references disagree by {diff:.2e}")
    if on.autocast_on:
        with torch.inference_mode(), on.autocast():
            ref = moe(x).float()
            diff = max((ref - mods[n](x).float()).abs().max().item() for n in ("grouped", "auto"))
        if diff > 2e-2 * max(1.0, ref.abs().max().item()):
            raise RuntimeError(
                f"under {on.dtype} autocast the grouped/auto paths differ from ours by {diff:.2e}"
            )
    if hf is not None:
        ours_e = moe.route(x.reshape(-1, d))[1].sort(-1).values
        if not torch.equal(hf_routing(hf, x.reshape(-1, d)), ours_e):
            raise RuntimeError("HF block routes differently from ours despite the copied router")


def bench_shape(
    tokens: int,
    d: int,
    e: int,
    k: int,
    repeats: int = 10,
    budget_s: float = 6.0,
    router: str = "normal",
    peers: bool = True,
    onnx: bool = False,
    on: RunOn | None = None,
) -> list[dict]:
    """Rows for one shape: pass "fwd" and "fwd_bwd" (peers: also WeNet's and HF's layers;
    onnx: the forward also in onnxruntime, CPU float32 only). Everything runs on `on`'s
    device and dtype (default: CPU float32), named in each row. The auto path's table is
    cleared first, so its choice for this shape is measured in this run."""
    on = on or RunOn(torch.device("cpu"))
    if onnx and (on.device.type != "cpu" or on.autocast_on):
        raise UmeError(
            f"onnxruntime columns run on the CPU in float32, not {on.device} {on.dtype}: drop "
            "--onnx, or use --device cpu --dtype float32"
        )
    moe = build_layer(d, e, k, router=router)
    dense = FeedForward(d, 4 * d, "swish")
    loop = LoopMoE(moe)
    grouped, auto = copy.deepcopy(moe), copy.deepcopy(moe)
    grouped.dispatch_options = DispatchOptions(path="grouped")
    auto.dispatch_options = DispatchOptions(path="auto")
    clear_chosen_paths()
    mods: dict[str, nn.Module] = {
        "ours": moe,
        "grouped": grouped,
        "auto": auto,
        "dense": dense,
        "loop": loop,
    }
    # transformers first: the WeNet oracle stubs torchaudio, which transformers' import probes
    hfs = hf_blocks(moe, tokens) if peers else {}
    wenet = wenet_layer(moe) if peers else None
    if wenet is not None:
        mods["wenet"] = wenet
    for m in mods.values():
        m.to(on.device)
    for impl, block in hfs.items():
        wrapped = PeerWrap(block).to(on.device)
        if _runs_here(wrapped, d, on):
            mods[f"hf_{impl}"] = wrapped
    hf = next((m.block for n, m in mods.items() if n.startswith("hf_")), None)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, tokens, d, generator=g).to(on.device)  # (1, N, D)
    grad = torch.randn(1, tokens, d, generator=g).to(on.device)  # (1, N, D)

    for m in mods.values():
        m.eval()
    _check_same_math(moe, mods, hf, x, on)

    rows = []
    for pass_ in ("fwd", "fwd_bwd"):
        for m in mods.values():
            m.train(pass_ == "fwd_bwd")
        if pass_ == "fwd":
            fns = {name: _fwd(m, x, on) for name, m in mods.items()}
            if onnx:
                from ume.bench.ort_layer import ort_layer_fns

                fns.update(ort_layer_fns(moe, dense, x, torch.get_num_threads()))
        else:
            xg = x.clone().requires_grad_(True)
            fns = {name: _fwd_bwd(m, xg, grad, on) for name, m in mods.items()}
        ms = _interleaved_medians(fns, repeats, budget_s, on.sync)
        bound = k * ms["dense"]
        wenet_ms = ms.get("wenet")
        hf_each = {n.removeprefix("hf_"): v for n, v in ms.items() if n.startswith("hf_")}
        hf_best = min(hf_each, key=hf_each.get) if hf_each else None
        hf_ms = hf_each[hf_best] if hf_best else None
        ort_each = {n: v for n, v in ms.items() if n in ("ort_portable", "ort_fused")}
        ort_ms = min(ort_each.values()) if ort_each else None
        with on.autocast():  # the key names the compute dtype, autocast's where it is on
            key = shape_key(auto, x.reshape(-1, d), graph=pass_ == "fwd_bwd")
        choice = lookup(key)
        tok_s = {
            n: tokens_per_s(tokens, v)
            for n, v in (
                ("ours", ms["ours"]), ("grouped", ms["grouped"]), ("auto", ms["auto"]),
                ("dense", ms["dense"]), ("loop", ms["loop"]), ("wenet", wenet_ms), ("hf", hf_ms),
            )
        }  # fmt: skip
        rows.append(
            {
                **on.fields(),
                "router": router,
                "tokens": tokens,
                "d": d,
                "h": 4 * d,
                "e": e,
                "k": k,
                "pass": pass_,
                "ratio_bound": round(ms["ours"] / bound, 3),
                "ratio_loop": round(ms["ours"] / ms["loop"], 3),
                "ratio_wenet": round(ms["ours"] / wenet_ms, 3) if wenet_ms else None,
                "ratio_hf": round(ms["ours"] / hf_ms, 3) if hf_ms else None,
                "ours_ms": round(ms["ours"], 4),
                "dense_ms": round(ms["dense"], 4),
                "bound_ms": round(bound, 4),
                "loop_ms": round(ms["loop"], 4),
                "grouped_ms": round(ms["grouped"], 4),
                "ratio_grouped": round(ms["grouped"] / ms["ours"], 3),
                "auto_ms": round(ms["auto"], 4),
                "ratio_auto": round(ms["auto"] / ms["ours"], 3),
                "auto_path": choice.path if choice else "loop",
                "wenet_ms": round(wenet_ms, 4) if wenet_ms else None,
                "hf_ms": round(hf_ms, 4) if hf_ms else None,
                "hf_best": hf_best,
                **{f"hf_{i}_ms": round(v, 4) for i, v in hf_each.items()},
                "ratio_ort": round(ms["ours"] / ort_ms, 3) if ort_ms else None,
                **{f"{n}_ms": round(v, 3) for n, v in ort_each.items()},
                "ort_bound_ms": round(k * ms["ort_dense"], 3) if "ort_dense" in ms else None,
                **{f"{n}_tok_s": round(v) if v else None for n, v in tok_s.items()},
                # UME's layer vs the dense FFN it replaces / vs WeNet's MoE layer, tokens/s
                "tok_s_vs_dense": round(tok_s["ours"] / tok_s["dense"], 3),
                "tok_s_vs_wenet": (
                    round(tok_s["ours"] / tok_s["wenet"], 3) if tok_s["wenet"] else None
                ),
            }
        )
    return rows


def bench_moe(
    grid: list[tuple[int, int, int, int]] | None = None,
    quick: bool = False,
    repeats: int = 10,
    budget_s: float = 6.0,
    progress: Callable[[dict], None] | None = None,
    router: str = "normal",
    onnx: bool = False,
    on: RunOn | None = None,
) -> list[dict]:
    """`bench_shape` rows for every shape of `grid` (default: the full or quick grid) on `on`'s
    device and dtype; `progress` sees each row as it is measured."""
    grid = grid if grid is not None else (QUICK_GRID if quick else FULL_GRID)
    rows: list[dict] = []
    for tokens, d, e, k in grid:
        for row in bench_shape(tokens, d, e, k, repeats, budget_s, router, onnx=onnx, on=on):
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Goal checks: fwd ratio_bound at >= 2048 tokens, ratio_loop at E >= 8."""

    def worst(sel: list[dict], key: str) -> float | None:
        return max((r[key] for r in sel), default=None)

    big_fwd = [r for r in rows if r["pass"] == "fwd" and r["tokens"] >= 2048]
    many = [r for r in rows if r["e"] >= 8]
    small = [r for r in rows if r["tokens"] <= 512]

    def peer(key: str) -> dict:
        vals = {p: [r[key] for r in small if r["pass"] == p and r[key]] for p in ("fwd", "fwd_bwd")}
        return {p: (max(v) if v else None) for p, v in vals.items()}

    def spread(key: str) -> dict:
        vals = {
            p: sorted(r[key] for r in rows if r["pass"] == p and r[key] is not None)
            for p in ("fwd", "fwd_bwd")
        }
        return {
            p: {"min": v[0], "median": round(statistics.median(v), 4), "max": v[-1]} if v else None
            for p, v in vals.items()
        }

    picks = {
        p: {path: sum(r["pass"] == p and r["auto_path"] == path for r in rows)
            for path in ("loop", "grouped")}
        for p in ("fwd", "fwd_bwd")
    }  # fmt: skip
    return {
        "tok_s_vs_dense": spread("tok_s_vs_dense"),
        "tok_s_vs_wenet": spread("tok_s_vs_wenet"),
        "ratio_grouped": spread("ratio_grouped"),
        "ratio_auto": spread("ratio_auto"),
        "auto_picks": picks,
        "max_ratio_wenet_le512": peer("ratio_wenet"),
        "max_ratio_hf_le512": peer("ratio_hf"),
        "max_ratio_ort_le512": peer("ratio_ort")["fwd"],
        "max_ratio_bound_fwd_ge2048": worst(big_fwd, "ratio_bound"),
        "median_ratio_bound_fwd_ge2048": (
            statistics.median(r["ratio_bound"] for r in big_fwd) if big_fwd else None
        ),
        "max_ratio_loop_e_ge8": worst(many, "ratio_loop"),
        "median_ratio_loop_e_ge8": (
            statistics.median(r["ratio_loop"] for r in many) if many else None
        ),
    }


_HEADER = (
    f"{'tokens':>6} {'D':>4} {'H':>5} {'E':>3} {'k':>2} {'pass':>8} {'ours ms':>9} "
    f"{'grp ms':>9} {'auto ms':>9} {'auto':>7} "
    f"{'bound ms':>9} {'loop ms':>9} {'wenet ms':>9} {'hf ms (best)':>21} {'ort ms':>8} "
    f"{'ort bnd':>8} {'r_grp':>6} {'r_bound':>8} {'r_loop':>7} {'r_wenet':>7} {'r_hf':>6} "
    f"{'r_ort':>6} {'ours tok/s':>11} {'t/s÷dense':>9} {'t/s÷wenet':>9}"
)


def _fmt_row(r: dict) -> str:
    """One table row: times side by side, then ratios (r_grp = grouped / ours: < 1 = grouped
    faster; the others ours / each: < 1 = ours faster), then ours in tokens/s and its
    tokens/s over the dense FFN's and WeNet's (> 1 = ours faster)."""

    def num(v: float | None, w: int, f: str = ".2f") -> str:
        return f"{'-':>{w}}" if v is None else f"{v:>{w}{f}}"

    hf = "-" if r.get("hf_ms") is None else f"{r['hf_ms']:.2f} ({r['hf_best']})"
    ort = min((r[k] for k in ("ort_portable_ms", "ort_fused_ms") if r.get(k)), default=None)
    return (
        f"{r['tokens']:>6} {r['d']:>4} {r['h']:>5} {r['e']:>3} {r['k']:>2} {r['pass']:>8} "
        f"{r['ours_ms']:>9.2f} {r['grouped_ms']:>9.2f} {r['auto_ms']:>9.2f} {r['auto_path']:>7} "
        f"{r['bound_ms']:>9.2f} {r['loop_ms']:>9.2f} "
        f"{num(r.get('wenet_ms'), 9)} {hf:>21} {num(ort, 8)} {num(r.get('ort_bound_ms'), 8)} "
        f"{r['ratio_grouped']:>6.3f} {r['ratio_bound']:>8.3f} {r['ratio_loop']:>7.3f} {num(r.get('ratio_wenet'), 7)} "
        f"{num(r.get('ratio_hf'), 6)} {num(r.get('ratio_ort'), 6)} "
        f"{num(r['ours_tok_s'], 11, '.4g')} {num(r['tok_s_vs_dense'], 9, '.3f')} "
        f"{num(r.get('tok_s_vs_wenet'), 9, '.3f')}"
    )


# ---- the bias-filled path's crossover -------------------------------------------------------
CROSSOVER_TOKENS = (16, 37, 100, 200, 400, 800, 1600)


def small_crossover(
    d: int = 144, e: int = 8, k: int = 2, repeats: int = 15, budget_s: float = 3.0
) -> list[dict]:
    """Eval forward of one layer per token count, the sorted loop (small_max_bytes 0) against
    the bias-filled path (always), interleaved: what DispatchOptions.small_max_bytes is set
    from. ratio = bias-filled / loop; buffer_mb = its (k·N, H) float32 hidden buffer."""
    moe = build_layer(d, e, k).eval()
    loop, small = DispatchOptions(small_max_bytes=0), DispatchOptions(small_max_bytes=2**62)

    def fwd(opts: DispatchOptions, x: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            moe.dispatch_options = opts
            with torch.inference_mode():
                moe(x)

        return run

    rows = []
    for n in CROSSOVER_TOKENS:
        x = torch.randn(1, n, d, generator=torch.Generator().manual_seed(n))
        ms = _interleaved_medians({"loop": fwd(loop, x), "small": fwd(small, x)}, repeats, budget_s)
        rows.append({
            "tokens": n, "buffer_mb": round(k * n * 4 * d * 4 / 2**20, 3),
            "loop_ms": round(ms["loop"], 3), "small_ms": round(ms["small"], 3),
            "ratio": round(ms["small"] / ms["loop"], 3),
        })  # fmt: skip
    moe.dispatch_options = DispatchOptions()
    return rows


# ---- profiles -------------------------------------------------------------------------------
def _label_modules(model: nn.Module) -> None:
    """Wrap FFN/MoE, attention, conv and stem forwards in profiler ranges ("## ...")."""
    from torch.profiler import record_function

    names = {
        "MoEFeedForward": "## MoE layer",
        "FeedForward": "## FFN layer",
        "RelPositionAttention": "## self-attention",
        "ConvModule": "## conv module",
        "ConvSubsampling": "## subsampling stem",
    }
    for mod in model.modules():
        label = names.get(type(mod).__name__)
        if label is None:
            continue
        fwd = mod.forward

        def wrapped(*a, _fwd=fwd, _label=label, **kw):  # noqa: ANN002, ANN003, ANN202
            with record_function(_label):
                return _fwd(*a, **kw)

        mod.forward = wrapped


def _profile_table(fn: Callable[[], None], iters: int, rows: int, sort: str) -> str:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn()
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def profile_report(rows: int = 14, vocab: int = 1500, preset: str = "paper") -> str:
    """torch.profiler tables: one MoE layer (forward, inference) at 2048 tokens and at 37
    tokens (one 3 s utterance after x8 subsampling), and the whole encoder of a paper-shaped
    dense and UME (8 experts, top-2) model at batch 1 and 16 (3 s utterances)."""
    out = []
    for tokens in (2048, 37):
        moe = build_layer(144, 8, 2).eval()
        x = torch.randn(1, tokens, 144)
        with torch.inference_mode():
            tab = _profile_table(lambda m=moe, x=x: m(x), 20, rows, "self_cpu_time_total")
        out.append(f"### MoE layer forward: {tokens} tokens, D=144 H=576 E=8 k=2\n{tab}")
    from ume.bench.train_speed import paper_models

    _, dense, ume = paper_models(vocab, preset, 8, 2)
    for name, model in (("dense", dense), ("UME", ume)):
        model.eval()
        _label_modules(model)
        for b in (1, 16):
            feats, lens = torch.randn(b, 300, 80), torch.full((b,), 300)
            with torch.inference_mode():
                tab = _profile_table(
                    lambda m=model, f=feats, n=lens: m.encode(f, n), 10, rows, "cpu_time_total"
                )
            out.append(f"### {name} encoder forward: batch {b} x 300 frames (3 s)\n{tab}")
    return "\n\n".join(out)


def main_moe(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if (args.profile or args.small_crossover) and (args.device, args.dtype) != ("cpu", "float32"):
        raise UmeError(
            "--profile and --small-crossover measure the CPU in float32: drop --device/--dtype "
            f"(got --device {args.device} --dtype {args.dtype})"
        )
    if args.profile:
        info = machine_info()
        print(f"machine={info['machine']} threads={info['threads']} torch={info['torch']}")
        print(profile_report())
        return 0
    if args.small_crossover:
        rows = small_crossover(repeats=args.repeats, budget_s=args.budget)
        print(json.dumps({**machine_info(), "d": 144, "e": 8, "k": 2, "rows": rows}, indent=1))
        return 0
    on = RunOn.for_args(args.device, args.dtype)  # a clear error before any work
    cpu_fp32 = on.device.type == "cpu" and not on.autocast_on
    if args.onnx and not cpu_fp32:
        raise UmeError(
            f"--onnx times onnxruntime on the CPU in float32, not --device {args.device} "
            f"--dtype {args.dtype}: drop --onnx (with --peers the ort columns stay null)"
        )
    info = {**machine_info(), **on.fields(), "router": args.router}
    if not args.json:
        print(
            f"machine={info['machine']} threads={info['threads']} torch={info['torch']} "
            f"device={info['device']} gpu={info['gpu']} dtype={info['dtype']} "
            f"autocast={info['autocast']} router={args.router}"
        )
        print(_HEADER)
    rows = bench_moe(
        grid=args.shape or (PEER_GRID if args.peers else None),
        quick=args.quick,
        repeats=args.repeats,
        budget_s=args.budget,
        progress=None if args.json else lambda r: print(_fmt_row(r), flush=True),
        router=args.router,
        onnx=args.onnx or (args.peers and cpu_fp32),  # onnxruntime: the CPU, float32
        on=on,
    )
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(json.dumps({**info, **summarize(rows)}, indent=1))
    return 0


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """'TOKENS,D,E,K' (e.g. '2048,144,8,2') -> (tokens, d_model, experts, top_k)."""
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"--shape {text!r}: give four positive integers TOKENS,D,E,K, e.g. 2048,144,8,2"
        )
    tokens, d, e, k = (int(p) for p in parts)
    if k > e:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: top_k {k} > experts {e}")
    return tokens, d, e, k


def add_moe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="two small shapes (tests, smoke)")
    p.add_argument(
        "--peers", action="store_true", help="37..512 tokens, D 144/256, E 8, k 2 (vs WeNet, HF)"
    )
    p.add_argument(
        "--router",
        choices=("normal", "zeros"),
        default="normal",
        help="normal: varied routing; zeros: every token to the same k experts (after upcycling)",
    )
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also the forward in onnxruntime (portable and fused graphs; on with --peers)",
    )
    p.add_argument(
        "--shape",
        type=parse_shape,
        action="append",
        metavar="TOKENS,D,E,K",
        help="time this shape (repeatable; replaces the grid), e.g. --shape 2048,144,8,2",
    )
    p.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="cpu",
        help="where the layers run (auto: CUDA if available; default cpu, so CPU figures stay "
        "comparable); each call is timed between torch.cuda.synchronize() calls on CUDA",
    )
    p.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float32",
        help="float32, or bfloat16 = float32 weights under torch.autocast(bf16), as "
        "train.precision=bf16 trains",
    )
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds per shape (max)")
    p.add_argument("--budget", type=float, default=6.0, help="seconds per shape and pass")
    p.add_argument(
        "--profile", action="store_true", help="torch.profiler tables (MoE layer, encoders)"
    )
    p.add_argument(
        "--small-crossover",
        action="store_true",
        help="bias-filled path vs sorted loop per token count (D 144, E 8, k 2): sets "
        "DispatchOptions.small_max_bytes",
    )
