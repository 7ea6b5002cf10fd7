"""Inspect the MoE layers of an experiment: expert load, balance, dead experts, and how far the
experts have moved apart from their common upcycled copy.

Per MoE layer:
    experts, groups    E experts in G groups (G > 1: fine-grained experts)
    top_k_per_group    k, the experts each token picks inside each group (moe.top_k)
    slots_per_token    k·G, the experts each token is sent to over all groups
    load        fraction of token-slots each expert received (valid frames only; needs data)
    cv          coefficient of variation of the load (0 = perfectly balanced)
    dead        experts with load < 0.16/E (2% for E = 8), reported as warnings
    sim_mean    mean pairwise cosine similarity of the experts' flattened weights
    sim_min     (1.0 right after upcycling; falls as the experts specialise)
    router_norm Frobenius norm of the router weight (0 right after zero-init upcycling)
    router_entropy  mean router entropy over the data's valid frames (nats; needs data)
    lang_share  per expert, the share of its token-slots from zh / en / mix utterances
    lang_gap    max over experts of |zh share of the expert - zh share overall| (0 = every
                expert sees the same mix; grows when routing depends on content)
With groups > 1 (fine-grained experts), similarity is over pairs inside one group.
`ume inspect EXPDIR --data DIR --json` prints the whole report as JSON.

Example:
    >>> rep = inspect_experiment("runs/moe8", data="data/dev", png="moe8.png")
    >>> print(format_report(rep))
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from ume.data.loader import load_batch
from ume.model.moe import MoEFeedForward
from ume.model.params import param_report

DEAD_FRACTION = 0.16  # an expert is "dead" below DEAD_FRACTION / E of the load


def short_name(prefix: str) -> str:
    """'encoder.blocks.3.ffn_macaron' -> 'enc3.macaron'; 'decoder.left.blocks.0.ffn' -> 'l2r0'."""
    parts = prefix.split(".")
    if parts[0] == "encoder" and len(parts) >= 4:
        return f"enc{parts[2]}.{'macaron' if parts[3] == 'ffn_macaron' else 'ffn'}"
    if parts[0] == "decoder" and len(parts) >= 4:
        return f"{'l2r' if parts[1] == 'left' else 'r2l'}{parts[3]}"
    return prefix


LANGS = ("zh", "en", "mix")


class RoutingByLanguage:
    """Forward hooks that count, per MoE layer, which experts the valid frames of zh / en / mix
    utterances pick, and the router entropy (nats, per group, averaged over frames).

    Example:
        >>> with RoutingByLanguage(model) as rl:
        ...     rl.langs = ["zh", "en"]; model.encode(feats, lens)
        >>> rl.counts["encoder.blocks.0.ffn"]  # (E, 3) token-slot counts per language
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, MoEFeedForward)}
        self.counts = {n: torch.zeros(m.num_experts, len(LANGS)) for n, m in self.layers.items()}
        self.entropy = dict.fromkeys(self.layers, 0.0)
        self.frames = dict.fromkeys(self.layers, 0)
        self.langs: list[str] = []  # language of each utterance of the batch being run
        self._handles: list = []

    def __enter__(self) -> RoutingByLanguage:
        for name, m in self.layers.items():
            self._handles.append(m.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    def _hook(self, name: str):
        def hook(m: MoEFeedForward, args: tuple, out: torch.Tensor) -> None:
            x = args[0]  # (B, T, D)
            b, t, _ = x.shape
            if len(self.langs) != b:  # e.g. the decoder: other batch layout; not counted
                return
            valid = args[1] if len(args) > 1 and args[1] is not None else None
            lang = torch.tensor([LANGS.index(g) if g in LANGS else -1 for g in self.langs])
            lang = lang.view(b, 1).expand(b, t)  # (B, T)
            keep = lang >= 0 if valid is None else (lang >= 0) & valid.bool()
            xt, lt = x[keep], lang[keep]  # (N, D), (N,)
            if xt.numel() == 0:
                return
            logits, top_e, _ = m.route(xt)  # (N, E), (N, k)
            for j in range(top_e.size(1)):
                idx = top_e[:, j] * len(LANGS) + lt
                self.counts[name].view(-1).index_add_(0, idx, torch.ones(idx.numel()))
            p = m._group_probs(logits)
            ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1) / m.groups  # (N,)
            self.entropy[name] += float(ent.sum())
            self.frames[name] += int(ent.numel())

        return hook

    def summary(self, name: str) -> dict:
        """router_entropy, lang_mix (share of zh/en/mix frames over all token-slots), lang_share
        per expert, and lang_gap: the largest |share of zh in an expert - share of zh overall|
        (0 = every expert sees the mix; content-dependent routing makes it grow)."""
        c = self.counts[name]  # (E, L)
        total = c.sum()
        if total == 0:
            return {"router_entropy": None, "lang_mix": None, "lang_share": None, "lang_gap": None}
        mix = c.sum(0) / total  # (L,)
        per = c / c.sum(1, keepdim=True).clamp_min(1)  # (E, L)
        zh = LANGS.index("zh")
        seen = c.sum(1) > 0
        gap = float((per[seen, zh] - mix[zh]).abs().max())
        return {
            "router_entropy": self.entropy[name] / max(self.frames[name], 1),
            "lang_mix": {g: round(float(v), 4) for g, v in zip(LANGS, mix)},
            "lang_share": [
                {g: round(float(v), 4) for g, v in zip(LANGS, row)} for row in per.tolist()
            ],
            "lang_gap": round(gap, 4),
        }


@torch.no_grad()
def measure_load(model, tokenizer, batches: list, by_lang: RoutingByLanguage | None = None) -> None:
    """Run batches [(feats, lens, utts)] through the encoder and (teacher-forced on the
    reference text, else on the CTC greedy output) the decoders, accumulating each MoE layer's
    load_sum over valid frames."""
    from ume.decode.search import ctc_greedy
    from ume.model.asr import add_sos_eos, reverse_targets

    layers = [m for m in model.modules() if isinstance(m, MoEFeedForward)]
    has_dec_moe = any(isinstance(m, MoEFeedForward) for m in model.decoder.modules())
    for m in layers:
        m.reset_load()
        m.track_load = True
    try:
        for feats, lens, utts in batches:
            if by_lang is not None:
                by_lang.langs = [u.lang for u in utts]
            enc, valid = model.encode(feats, lens)
            if by_lang is not None:
                by_lang.langs = []
            if not has_dec_moe:
                continue
            hyps = ctc_greedy(model.ctc_log_probs(enc), valid.sum(1))
            # an utterance with neither text nor hypothesis still feeds the decoder one token;
            # token2id("<unk>") is defined by every tokenizer (its <unk>, else blank)
            filler = tokenizer.token2id("<unk>")
            seqs = []
            for u, h in zip(utts, hyps):
                ids = tokenizer.encode(u.text) if u.text else h
                seqs.append(ids or [filler])
            ys_lens = torch.tensor([len(s) for s in seqs])
            ys = torch.nn.utils.rnn.pad_sequence(
                [torch.tensor(s) for s in seqs], batch_first=True, padding_value=-1
            )
            ys_in, _ = add_sos_eos(ys, ys_lens, model.sos, model.eos)
            r_ys = reverse_targets(ys, ys_lens)
            r_ys_in, _ = add_sos_eos(r_ys, ys_lens, model.sos, model.eos)
            model.decoder(enc, valid, ys_in, ys_lens + 1, r_ys_in)
    finally:
        for m in layers:
            m.track_load = None


def inspect_experiment(
    exp_dir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    max_utts: int = 50,
    png: str | os.PathLike | None = None,
) -> dict:
    """Report per MoE layer (see module docstring); with `data`, up to max_utts utterances
    are run through the model to measure the load. Writes a heat-map PNG if `png`."""
    from ume.expdir import load_experiment

    cfg, tok, model = load_experiment(exp_dir)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, MoEFeedForward)}
    rep: dict = {"exp_dir": str(exp_dir), "moe": bool(layers), "layers": [], "warnings": []}
    rep.update(param_report(model))
    if not layers:
        rep["warnings"].append(f"{exp_dir} is a dense model: no MoE layers to inspect")
        return rep
    n_utts = 0
    if data is not None:
        utts, batches = load_batch(data, cfg.features, max_utts)
        n_utts = len(utts)
        with RoutingByLanguage(model) as by_lang:
            measure_load(model, tok, batches, by_lang)
    rep["data"] = str(data) if data is not None else None
    rep["num_utts"] = n_utts
    for name, m in layers.items():
        e = m.num_experts
        sim_mean, sim_min = m.similarity_summary()
        row = {
            "name": name,
            "short": short_name(name),
            "experts": e,
            "groups": m.groups,
            "top_k_per_group": m.cfg.top_k,
            "slots_per_token": m.slots_per_token,
            "sim_mean": sim_mean,
            "sim_min": sim_min,
            "router_norm": float(m.router.weight.detach().norm()),
            "load": None,
            "cv": None,
            "dead": [],
            "router_entropy": None,
            "lang_mix": None,
            "lang_share": None,
            "lang_gap": None,
        }
        if data is not None:
            row.update(by_lang.summary(name))
        if m.load_sum is not None and float(m.load_sum.sum()) > 0:
            load = (m.load_sum / m.load_sum.sum()).float()
            row["load"] = [round(float(v), 5) for v in load]
            row["cv"] = float(load.std(unbiased=False) / load.mean())
            row["dead"] = [i for i, v in enumerate(load.tolist()) if v < DEAD_FRACTION / e]
            if row["dead"]:
                rep["warnings"].append(
                    f"{name}: dead expert(s) {row['dead']} (load < {DEAD_FRACTION / e:.1%})"
                )
        elif data is not None:
            rep["warnings"].append(f"{name}: no frames reached this layer")
        rep["layers"].append(row)
    if png is not None:
        plot_report(rep, png)
        rep["png"] = str(png)
    return rep


def plot_report(rep: dict, path: str | os.PathLike) -> None:
    """Heat-map of layers × experts load (left) and mean pairwise similarity per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rep["layers"]
    names = [r["short"] for r in rows]
    e = max(r["experts"] for r in rows)
    height = max(3.0, 0.35 * len(rows) + 1.5)
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(4 + 0.6 * e, height), gridspec_kw={"width_ratios": [max(e, 3), 3]}
    )
    if all(r["load"] is not None for r in rows):
        grid = torch.full((len(rows), e), float("nan"))
        for i, r in enumerate(rows):
            grid[i, : len(r["load"])] = torch.tensor(r["load"])
        vmax = float(torch.nan_to_num(grid, nan=0.0).max()) or 1.0
        im = ax1.imshow(grid.numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
        for i in range(len(rows)):
            for j in range(e):
                v = float(grid[i, j])
                if v == v:
                    ax1.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v < 0.5 * vmax else "black",
                    )
        fig.colorbar(im, ax=ax1, fraction=0.046, pad=0.04)
        ax1.set_title(f"expert load ({rep['num_utts']} utts; uniform = {1 / e:.3f})")
    else:
        ax1.text(
            0.5,
            0.5,
            "no load measured\n(run with --data)",
            ha="center",
            va="center",
            transform=ax1.transAxes,
        )
        ax1.set_title("expert load")
    ax1.set_xticks(range(e))
    ax1.set_xlabel("expert")
    ax1.set_yticks(range(len(rows)))
    ax1.set_yticklabels(names, fontsize=8)
    sims = [r["sim_mean"] for r in rows]
    ax2.barh(range(len(rows)), sims, color="tab:orange")
    ax2.set_yticks(range(len(rows)))
    ax2.set_yticklabels(names, fontsize=8)
    ax2.invert_yaxis()
    lo = min(sims)
    ax2.set_xlim(min(0.0, lo) if lo < 0.5 else max(0.0, lo - 0.1 * (1 - lo) - 1e-3), 1.0)
    ax2.set_xlabel("mean pairwise cosine")
    ax2.set_title("expert similarity")
    fig.suptitle(Path(rep["exp_dir"]).name)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_report(rep: dict) -> str:
    """Human-readable table of an inspect_experiment report."""
    lines = [
        f"{rep['exp_dir']}: params total {rep['params_total'] / 1e6:.2f}M, active per token "
        f"{rep['params_active'] / 1e6:.2f}M"
    ]
    if rep["layers"]:
        src = f" over {rep['num_utts']} utts of {rep['data']}" if rep.get("data") else ""
        lines.append(
            f"{'layer':<14} {'E':>2} {'G':>2} {'k':>2} {'cv':>6} {'sim':>6} {'simmin':>6} "
            f"{'router':>7} {'entropy':>7} {'zhgap':>6}  load{src}"
        )
        for r in rep["layers"]:
            cv = f"{r['cv']:.3f}" if r["cv"] is not None else "-"
            load = " ".join(f"{v:.2f}" for v in r["load"]) if r["load"] is not None else "-"
            ent = f"{r['router_entropy']:.3f}" if r.get("router_entropy") is not None else "-"
            gap = f"{r['lang_gap']:.3f}" if r.get("lang_gap") is not None else "-"
            lines.append(
                f"{r['short']:<14} {r['experts']:>2} {r['groups']:>2} {r['top_k_per_group']:>2} "
                f"{cv:>6} {r['sim_mean']:>6.3f} {r['sim_min']:>6.3f} {r['router_norm']:>7.3f} "
                f"{ent:>7} {gap:>6}  {load}"
            )
    lines.extend(f"WARNING: {w}" for w in rep["warnings"])
    if rep.get("png"):
        lines.append(f"wrote {rep['png']}")
    return "\n".join(lines)


# ---- CLI ---------------------------------------------------------------------------------------
def add_inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("expdir", help="MoE experiment dir")
    p.add_argument("--data", default=None, help="Kaldi dir or data.list to measure expert load")
    p.add_argument("--max-utts", type=int, default=50)
    p.add_argument("--png", default=None, help="write a load / similarity heat-map here")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the report as JSON (one record per MoE layer under 'layers')",
    )


def main_inspect(args: argparse.Namespace) -> int:
    """`ume inspect EXPDIR [--data D] [--png P]`: per-layer expert load and similarity."""
    from ume.data.manifest import DataError
    from ume.expdir import ExpDirError

    exp = getattr(args, "expdir", None) or getattr(args, "exp_dir", None)
    try:
        rep = inspect_experiment(
            exp,
            data=getattr(args, "data", None),
            max_utts=int(getattr(args, "max_utts", 50) or 50),
            png=getattr(args, "png", None),
        )
    except (ExpDirError, DataError) as e:
        print(f"ume inspect: error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(rep, indent=1))
    else:
        print(format_report(rep))
    return 0
