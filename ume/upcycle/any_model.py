"""Upcycle any PyTorch model: find its feed-forward blocks, turn each into an MoE whose experts
are copies of the block, and check the model still computes the same function.

Discovery (`find_ffns`) reads module structure, not names: a module whose direct children
include one Linear(D, H) and one Linear(H, D) (H != D) and an activation module is an FFN
(`nn.Sequential(Linear, GELU, Dropout, Linear)`, HF's `Wav2Vec2FeedForward` with
intermediate_dense/output_dense, Whisper's encoder layer with fc1/activation_fn/fc2 inline in
its forward; a module holding nothing but the projections may use a functional activation);
two Linear(D, H) and one Linear(H, D) are a gated (GLU/SwiGLU) FFN. When H < D (a bottleneck)
the order is tried both ways on a pure FFN module. ume's own `FeedForward`
becomes `MoEFeedForward` (its fast dispatch paths); every other FFN has its projections
replaced by `MoEEntry`/`MoEExit` (ume/model/moe_split.py), so the model's own forward code,
activation and dropout run unchanged.

`upcycle` then verifies function preservation: each pure FFN module on a random input, and
the whole model on `verify_input` (its FFN outputs hooked, so a mismatch names the first FFN
that differs). The layout (which modules, which projections, the MoE settings) is stored on the
model as `model.ume_moe_layout`, a JSON-able dict, so `apply_layout` can rebuild the same MoE
structure on a fresh copy of the dense architecture before a strict weight load.

Example:
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 32), nn.GELU(),
    ...                                                     nn.Linear(32, 8)))
    >>> report = upcycle(model, 4, 2, verify_input=torch.randn(2, 8)).ume_upcycle_report
    >>> report["ffns"], report["max_abs_diff"] <= 1e-5
    (['1'], True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ume.config import MoEConfig
from ume.errors import UmeError
from ume.model.ffn import FeedForward
from ume.model.moe import MoEFeedForward
from ume.model.moe_split import MoEEntry, MoEExit, MoERouter, split_moe
from ume.model.router import check_moe_config
from ume.upcycle.verify import max_abs_diff

LAYOUT_FORMAT = "ume-moe-layout"
LAYOUT_VERSION = 1
VERIFY_TOL = 1e-5
_ACT_TYPES = (
    nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Mish, nn.LeakyReLU, nn.ELU, nn.Hardswish,
    nn.ReLU6, nn.SELU, nn.CELU, nn.Softplus, nn.Hardtanh,
)  # fmt: skip


class UpcycleAnyError(UmeError):
    """A model or module cannot be upcycled as asked, or lost its function on the way."""


@dataclass
class FFNSpec:
    """One feed-forward block: `module` holds the projections (child names fc_in, fc_out,
    fc_up for a gated block); kind "ume" replaces a ume FeedForward `module` as a whole."""

    module: str
    kind: str = "split"
    fc_in: str | None = None
    fc_out: str | None = None
    fc_up: str | None = None


def _is_activation(m: nn.Module) -> bool:
    if isinstance(m, _ACT_TYPES):
        return True
    cls = type(m)
    return cls.__module__.startswith("transformers.activations") or cls.__name__.endswith(
        ("Activation", "GELU", "SiLU", "Swish")
    )


def _is_moe(m: nn.Module) -> bool:
    return isinstance(m, MoEFeedForward | MoEEntry | MoEExit)


def _match(name: str, mod: nn.Module) -> list[FFNSpec]:
    """FFN specs whose projections are direct children of `mod` (several for a gated block
    of unknown gate: the caller tries them); [] if `mod` has no FFN structure."""
    if isinstance(mod, FeedForward):
        return [FFNSpec(name, "ume")]
    lin = {n: c for n, c in mod.named_children() if type(c) is nn.Linear}
    if len(lin) < 2:
        return []
    specs = _match_linears(name, lin)
    # an activation module among the children, or (functional activation in the forward)
    # a module that holds nothing but the projections
    if specs and (any(_is_activation(c) for c in mod.children()) or _is_pure_ffn(mod, specs[0])):
        return specs
    return []


def _match_linears(name: str, lin: dict[str, nn.Linear]) -> list[FFNSpec]:
    by_shape: dict[tuple[int, int], list[str]] = {}
    for n, c in lin.items():
        if c.out_features != c.in_features:
            by_shape.setdefault((c.in_features, c.out_features), []).append(n)
    for (d, h), firsts in by_shape.items():
        seconds = by_shape.get((h, d), [])
        if len(firsts) == 1 and len(seconds) == 1 and h > d:  # expansion first, then the
            # bottleneck order as a second guess (only tried on a pure FFN module)
            return [FFNSpec(name, "split", firsts[0], seconds[0]),
                    FFNSpec(name, "split", seconds[0], firsts[0])]  # fmt: skip
        if len(firsts) == 2 and len(seconds) == 1:  # gated: which of the two input
            # projections is activated does not matter (each entry replaces its own Linear)
            return [FFNSpec(name, "split", firsts[0], seconds[0], firsts[1])]
    return []


def _is_pure_ffn(mod: nn.Module, spec: FFNSpec) -> bool:
    """True when the module holds nothing with parameters but the FFN's projections."""
    own = {spec.fc_in, spec.fc_out, spec.fc_up}
    return (
        spec.kind == "ume"
        or all(n in own or not any(True for _ in c.parameters()) for n, c in mod.named_children())
        and not any(True for _ in mod.parameters(recurse=False))
    )


def find_ffns(model: nn.Module, names: list[str] | None = None) -> list[list[FFNSpec]]:
    """Candidate specs per FFN block, in module order (`names`: only those modules, each must
    hold an FFN). A block already turned into MoE is an error."""
    mods = dict(model.named_modules())
    if names is not None:
        out = []
        for n in names:
            if n not in mods:
                raise UpcycleAnyError(f"ffn={names!r}: the model has no module named {n!r}")
            cand = _match(n, mods[n])
            if not cand:
                kids = ", ".join(f"{c}: {type(m).__name__}" for c, m in mods[n].named_children())
                raise UpcycleAnyError(
                    f"module {n!r} ({type(mods[n]).__name__}) has no feed-forward structure "
                    f"(one Linear D->H, one Linear H->D and an activation among its children; "
                    f"children: {kids or 'none'}); name the module that holds the projections"
                )
            out.append(cand)
        return out
    out, skip = [], ()
    for n, m in mods.items():
        if skip and n.startswith(skip):
            continue
        if _is_moe(m):
            raise UpcycleAnyError(f"module {n!r} is already an MoE layer: upcycle a dense model")
        cand = _match(n, m)
        if cand:
            out.append(cand)
            if cand[0].kind == "ume":
                skip = (n + ".",) if n else ("",)
    return out


def _cfg(num_experts: int, top_k: int, moe: MoEConfig | None) -> MoEConfig:
    """The MoE settings every replaced FFN gets; a setting these layers cannot honour is an
    error naming it (never written into the layout and then ignored)."""
    cfg = dataclasses.replace(moe) if moe is not None else MoEConfig()
    cfg.num_experts, cfg.top_k = num_experts, top_k
    g = max(cfg.groups, 1)
    if not 1 <= top_k <= num_experts // g:
        raise UpcycleAnyError(
            f"top_k={top_k} must be between 1 and the experts per group "
            f"(num_experts/groups = {num_experts}/{cfg.groups})"
        )
    if cfg.router_init == "kmeans":
        raise UpcycleAnyError(
            "moe.router_init='kmeans' needs the FFN inputs of real data, which ume.upcycle "
            "does not take: use 'zeros' or 'normal' (k-means routers are built by "
            "`ume upcycle --router-init kmeans --router-data DIR` for ume experiment dirs)"
        )
    default = MoEConfig()
    for name in ("slots", "layers"):
        if getattr(cfg, name) != getattr(default, name):
            raise UpcycleAnyError(
                f"moe.{name}={getattr(cfg, name)!r} selects FFNs of ume's own models; "
                "ume.upcycle selects them with ffn='auto' or ffn=[module names]"
            )
    try:
        check_moe_config(cfg, g)
    except ValueError as e:
        raise UpcycleAnyError(str(e)) from e
    return cfg


def _replace(model: nn.Module, spec: FFNSpec, cfg: MoEConfig) -> None:
    mod = model.get_submodule(spec.module)
    if spec.kind == "ume":
        parent_name, _, attr = spec.module.rpartition(".")
        if not attr:
            raise UpcycleAnyError("the model itself is a FeedForward: wrap it in a parent module")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, MoEFeedForward.from_dense(mod, cfg))
        return
    fc_in, fc_out = getattr(mod, spec.fc_in), getattr(mod, spec.fc_out)
    fc_up = getattr(mod, spec.fc_up) if spec.fc_up else None
    parts = split_moe(fc_in, fc_out, cfg.num_experts, cfg.top_k, fc_up, cfg)
    parts[0].to(fc_in.weight.dtype)
    setattr(mod, spec.fc_in, parts[0])
    setattr(mod, spec.fc_out, parts[-1])
    if spec.fc_up:
        setattr(mod, spec.fc_up, parts[1])


def _tensors(out: object) -> list[torch.Tensor]:
    """Every tensor in a model output (tensor, tuple/list, dict or HF ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, list | tuple):
        return [t for v in out for t in _tensors(v)]
    return []


def _call(model: nn.Module, inp: object) -> object:
    if isinstance(inp, dict):
        return model(**inp)
    if isinstance(inp, list | tuple):
        return model(*inp)
    return model(inp)


def _watch(model: nn.Module, specs: list[FFNSpec]) -> tuple[list, Callable[[], None]]:
    """Hook each FFN's output (its output projection, or the ume layer): [(spec index, out)]."""
    seen: list[tuple[int, torch.Tensor]] = []
    handles = []
    for i, s in enumerate(specs):
        path = s.module if s.kind == "ume" else ".".join(p for p in (s.module, s.fc_out) if p)
        mod = model.get_submodule(path)
        handles.append(mod.register_forward_hook(lambda m, a, o, i=i: seen.append((i, o))))
    return seen, lambda: [h.remove() for h in handles]


def _run(model: nn.Module, inp: object, specs: list[FFNSpec]) -> tuple[list, list]:
    seen, remove = _watch(model, specs)
    try:
        with torch.no_grad():
            out = _tensors(_call(model, inp))
    finally:
        remove()
    return out, seen


def _restore(model: nn.Module, spec: FFNSpec, mod: nn.Module, children: dict) -> None:
    """Put back the dense block `mod` (children: its children before the replacement)."""
    if spec.kind == "ume":
        parent, _, attr = spec.module.rpartition(".")
        setattr(model.get_submodule(parent), attr, mod)
    for n, c in children.items():
        setattr(mod, n, c)


def _choose(model: nn.Module, cands: list[FFNSpec], cfg: MoEConfig, tol: float) -> float:
    """Replace one FFN block (the first candidate that reproduces a pure FFN module's output
    on a random input); returns that check's max |diff| (nan when the block is inline)."""
    mod = model.get_submodule(cands[0].module)
    if not _is_pure_ffn(mod, cands[0]):
        _replace(model, cands[0], cfg)
        return float("nan")
    p = next(mod.parameters())
    first = cands[0]
    d = mod.w_1.in_features if first.kind == "ume" else getattr(mod, first.fc_in).in_features
    x = torch.randn(2, 3, d, generator=torch.Generator().manual_seed(0)).to(p)
    with torch.no_grad():
        ref = mod(x)
    worst = float("inf")
    for spec in cands:
        backup = dict(mod.named_children())
        _replace(model, spec, cfg)
        try:
            with torch.no_grad():
                diff = max_abs_diff([ref], [model.get_submodule(spec.module)(x)])
        except RuntimeError:  # e.g. the projections guessed in the wrong order
            diff = float("inf")
        if diff <= tol:
            return diff
        worst = min(worst, diff)
        _restore(model, spec, mod, backup)  # undo; try the next guess or report
    raise UpcycleAnyError(
        f"FFN {cands[0].module!r} ({type(mod).__name__}): the MoE copy differs from the dense "
        f"module by {worst:.3g} (> {tol:g}) on a random input; its forward is not "
        "out(elementwise(in(x))). Leave it out with an explicit ffn=[...] list"
    )


def upcycle(
    model: nn.Module,
    num_experts: int = 8,
    top_k: int = 2,
    ffn: str | list[str] = "auto",
    verify_input: object = None,
    *,
    moe: MoEConfig | None = None,
    perturb: float = 0.0,
    seed: int = 0,
    tol: float = VERIFY_TOL,
) -> nn.Module:
    """Turn the feed-forward blocks of `model` into Mixture-of-Experts layers, in place, with
    every expert a copy of its dense block (so the model computes the same function), and
    return the model (the public `ume.upcycle`; see the module docstring).

    ffn:          "auto" (found by structure: Linear D->H, activation, [dropout], Linear H->D,
                  gated GLU/SwiGLU variants, HF's fc1/fc2 and intermediate/output naming, inline
                  or as a submodule), or a list of module names holding the projections.
    verify_input: a batch for the model (tensor, tuple of positional args, or dict of keyword
                  args); the outputs before and after must agree within `tol`, else
                  UpcycleAnyError names the first FFN that differs. Without it only the FFN
                  modules that can run alone are checked (on a random input).
    moe:          routing and loss settings (MoEConfig: router_init "zeros"/"normal",
                  router_init_std, groups, capacity_factor, jitter, router_noise,
                  balance_coef, z_loss_coef; ume/model/router.py has the contract), the same
                  for every FFN; num_experts/top_k override its fields. router_init "kmeans"
                  and non-default slots/layers (ume-model selectors) are refused by name.
    perturb:      > 0 multiplies each expert weight by (1 + perturb·N(0,1)) after verifying,
                  so the copies differ and the routers learn from the task loss.
    The report ({"ffns": [module names], "max_abs_diff": float|None, "per_ffn": {...}}) is
    `model.ume_upcycle_report`.

    Example:
        >>> enc = transformers.WhisperModel(cfg).encoder
        >>> ume.upcycle(enc, 8, 2, verify_input=feats)  # every encoder layer's fc1/fc2
    """
    cfg = _cfg(num_experts, top_k, moe)
    if ffn == "auto":
        cands = find_ffns(model)
    elif isinstance(ffn, list | tuple) and all(isinstance(n, str) for n in ffn):
        cands = find_ffns(model, list(ffn))
    else:
        raise UpcycleAnyError(f"ffn={ffn!r}: use 'auto' or a list of module names")
    if not cands:
        raise UpcycleAnyError(
            f"no feed-forward block found in {type(model).__name__} (looked for modules with a "
            "Linear D->H, a Linear H->D and an activation as children); pass ffn=[names]"
        )
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        ref = seen_ref = None
        if verify_input is not None:
            ref, seen_ref = _run(model, verify_input, [c[0] for c in cands])
        per_ffn, chosen = {}, []
        dense = [(c[0], model.get_submodule(c[0].module)) for c in cands]
        dense = [(s, m, dict(m.named_children())) for s, m in dense]
        try:
            for c in cands:
                per_ffn[c[0].module] = _choose(model, c, cfg, tol)
                chosen.append(_layout_entry(model, c))
            max_diff = None
            if verify_input is not None:
                out, seen = _run(model, verify_input, [c[0] for c in cands])
                max_diff = max_abs_diff(ref, out)
                _explain(seen_ref, seen, cands, tol, max_diff)
        except Exception:
            for spec, mod, children in reversed(dense):  # leave the model as it was
                _restore(model, spec, mod, children)
            raise
    finally:
        for m, t in was_training.items():
            m.train(t)
    model.ume_moe_layout = {
        "format": LAYOUT_FORMAT,
        "version": LAYOUT_VERSION,
        "moe": dataclasses.asdict(cfg),
        "ffns": chosen,
    }
    if perturb > 0:
        perturb_experts(model, perturb, seed)
    ffns = [c["module"] for c in chosen]
    model.ume_upcycle_report = {"ffns": ffns, "max_abs_diff": max_diff, "per_ffn": per_ffn}
    return model


def _layout_entry(model: nn.Module, cands: list[FFNSpec]) -> dict:
    """The spec that was applied (a gated candidate pair is resolved by what replaced it)."""
    for s in cands:
        if s.kind == "ume":
            return dataclasses.asdict(s)
        mod = model.get_submodule(s.module)
        if (
            isinstance(getattr(mod, s.fc_in), MoEEntry)
            and "router" in getattr(mod, s.fc_in)._modules
        ):
            return dataclasses.asdict(s)
    raise AssertionError("no candidate was applied")


def _explain(seen_ref: list, seen: list, cands: list, tol: float, max_diff: float) -> None:
    if max_diff <= tol:
        return
    for (i, a), (_, b) in zip(seen_ref, seen):
        d = max_abs_diff(_tensors(a), _tensors(b))
        if d > tol:
            raise UpcycleAnyError(
                f"upcycling changed the model's output by {max_diff:.3g} (> {tol:g}); the first "
                f"FFN that differs is {cands[i][0].module!r} (by {d:.3g}): its forward is not "
                "out(elementwise(in(x))); leave it out with an explicit ffn=[...] list"
            )
    raise UpcycleAnyError(
        f"upcycling changed the model's output by {max_diff:.3g} (> {tol:g}) although every "
        "FFN's output matched: the model's forward depends on something the MoE layers changed"
    )


def apply_layout(model: nn.Module, layout: dict) -> Callable[[], None]:
    """Rebuild a saved MoE layout on a dense model of the original architecture (weights are
    then loaded strictly; no verification: the experts are not copies any more). All or
    nothing: if any FFN of the layout does not fit, the model is left as it was. Returns a
    function that puts the dense blocks back (for a caller whose next check fails)."""
    if layout.get("format") != LAYOUT_FORMAT or layout.get("version") != LAYOUT_VERSION:
        raise UpcycleAnyError(
            f"not a {LAYOUT_FORMAT} v{LAYOUT_VERSION} layout: {str(layout)[:120]}"
        )
    try:
        cfg = MoEConfig(**layout["moe"])
        specs = [FFNSpec(**e) for e in layout["ffns"]]
        if cfg.router_init == "kmeans":  # trained router weights come from the file
            cfg = dataclasses.replace(cfg, router_init="zeros")
    except TypeError as e:
        raise UpcycleAnyError(f"malformed MoE layout: {e}") from e
    dense = []
    for s in specs:  # check every FFN before changing any
        try:
            mod = model.get_submodule(s.module)
        except AttributeError as e:
            raise UpcycleAnyError(
                f"the layout names module {s.module!r}, which this model lacks: build the model "
                "with the architecture and config it was saved from"
            ) from e
        if not any(dataclasses.asdict(c) == dataclasses.asdict(s) for c in _match(s.module, mod)):
            raise UpcycleAnyError(
                f"module {s.module!r} ({type(mod).__name__}) does not hold the dense FFN the "
                f"layout expects ({s}); pass a freshly built dense model of the saved architecture"
            )
        dense.append((s, mod, dict(mod.named_children())))
    had_layout = hasattr(model, "ume_moe_layout")
    old_layout = getattr(model, "ume_moe_layout", None)

    def undo() -> None:
        for spec, mod, children in reversed(dense):
            _restore(model, spec, mod, children)
        if had_layout:
            model.ume_moe_layout = old_layout
        elif hasattr(model, "ume_moe_layout"):
            del model.ume_moe_layout

    try:
        for s in specs:
            _replace(model, s, cfg)
    except Exception:
        undo()
        raise
    model.ume_moe_layout = layout
    return undo


def perturb_experts(model: nn.Module, scale: float, seed: int = 0) -> None:
    """Multiply every expert weight by (1 + scale·N(0, 1)), independently per expert."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MoEEntry | MoEExit):
                ws = [m.weight]
            elif isinstance(m, MoEFeedForward):
                ws = [m.experts.w_1, m.experts.w_2]
            else:
                continue
            for w in ws:
                w.mul_(1 + scale * torch.randn(w.shape, generator=g).to(w))


def moe_modules(model: nn.Module) -> list[nn.Module]:
    """Modules that hold MoE parameters: ume MoE layers and split entries/exits."""
    return [m for m in model.modules() if _is_moe(m)]


def routers(model: nn.Module) -> list[nn.Module]:
    """Routers (modules whose forward records `aux_losses`)."""
    return [m for m in model.modules() if isinstance(m, MoEFeedForward | MoERouter)]
