"""Other toolkits' MoE layers as references for `ume bench moe`, built at the shapes of one of
our layers and given ITS router, so every method routes every token to the same experts.

    wenet  WeNet's own `MoEFFNLayer` (top-k on the logits, softmax over the k: equal to our
           softmax-then-top-k-renormalise), loaded from WeNet's unmodified source through
           ../shared/third_party/wenet_oracle.py (or $UME_WENET_ORACLE); experts get our
           experts' weights (Linear with bias, SiLU), so its output must equal ours.
    hf     transformers' `MixtralSparseMoeBlock` (softmax, top-k, renormalise: the same gates).
           Its experts are SwiGLU (three matrices), so it gets intermediate_size 2H/3: the same
           parameters and FLOPs per expert as our (D, H) two-matrix experts. Different expert
           function, so only the routing (not the output) is checked against ours.

           transformers chooses the experts' computation by `experts_implementation`:
           "eager" (a loop over the used experts), "batched_mm" (each token-slot's expert
           weights gathered, one bmm), "grouped_mm" (slots sorted by expert, torch's grouped
           GEMM or its fallback); `hf_blocks` gives one block per implementation this
           transformers has, all with the same weights. batched_mm copies k·N x 3·D·(2H/3)
           weights; above HF_BATCHED_MAX_GATHER_BYTES (8 GiB) for the shape it is left out.

Both are optional: a missing oracle or transformers gives None and the benchmark reports null.

Example:
    >>> wenet = wenet_layer(moe)        # None without ../shared
    >>> hf = hf_block(moe)              # None without transformers
    >>> hf_blocks(moe)                  # {"eager": ..., "batched_mm": ..., "grouped_mm": ...}
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import sys
import types
from pathlib import Path

import torch
from torch import nn

from ume.model.moe import MoEFeedForward

log = logging.getLogger(__name__)

_ORACLE = Path(__file__).resolve().parents[2] / ".." / "shared/third_party/wenet_oracle.py"


def oracle_path() -> Path | None:
    """WeNet oracle script ($UME_WENET_ORACLE or ../shared/third_party), None if absent."""
    p = Path(os.environ.get("UME_WENET_ORACLE", _ORACLE))
    return p if p.is_file() else None


# modules the oracle stubs (without an import spec) while WeNet's files import; left in
# sys.modules they break later find_spec probes (transformers' is_torchaudio_available raises)
_ORACLE_STUBS = ("torchaudio", "torchaudio.functional", "whisper", "whisper.tokenizer")


def load_wenet_oracle(
    path: Path | None = None, also: tuple[str, ...] = ()
) -> types.SimpleNamespace | None:
    """WeNet's model classes through the oracle at `path` (default: oracle_path()), or None
    without one. `also`: more WeNet modules to import while the oracle's stubs are in place,
    set on the namespace under their last name. The stubs are then taken out of sys.modules
    (WeNet's modules keep their references), so a process may load the oracle and
    transformers in either order.

    Example:
        >>> ns = load_wenet_oracle(also=("wenet.models.transformer.search",))
        >>> ns.ConformerEncoder, ns.search
    """
    path = path or oracle_path()
    if path is None:
        return None
    before = {n for n in _ORACLE_STUBS if n in sys.modules}
    spec = importlib.util.spec_from_file_location("wenet_oracle", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # WeNet prints on import; keep --json clean
            spec.loader.exec_module(mod)
            ns = mod.load()
            for name in also:
                setattr(ns, name.rsplit(".", 1)[-1], importlib.import_module(name))
    finally:
        for name in _ORACLE_STUBS:
            stub = sys.modules.get(name)
            if name not in before and stub is not None and stub.__spec__ is None:
                del sys.modules[name]
    return ns


def wenet_layer(moe: MoEFeedForward) -> nn.Module | None:
    """WeNet's MoEFFNLayer with moe's router and experts, or None without the oracle."""
    try:
        ns = load_wenet_oracle()
    except Exception:  # noqa: BLE001 - the oracle failed to import: report no WeNet column
        return None
    if ns is None:
        return None
    layer = ns.MoEFFNLayer(
        moe.d_model,
        moe.d_ff,
        0.0,
        nn.SiLU(),
        bias=True,
        n_expert=moe.num_experts,
        n_expert_activated=moe.top_k,
    )
    with torch.no_grad():
        layer.gate.weight.copy_(moe.router.weight)
        for i, ex in enumerate(layer.experts):
            ex.w_1.weight.copy_(moe.experts.w_1[i].t())
            ex.w_1.bias.copy_(moe.experts.b_1[i])
            ex.w_2.weight.copy_(moe.experts.w_2[i].t())
            ex.w_2.bias.copy_(moe.experts.b_2[i])
    return layer


def hf_block(moe: MoEFeedForward) -> nn.Module | None:
    """transformers' MixtralSparseMoeBlock with moe's router (SwiGLU experts of 2H/3, same
    parameters and FLOPs per expert), or None without transformers."""
    try:
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    except Exception:  # noqa: BLE001 - not installed, or an incompatible version
        return None
    try:
        cfg = MixtralConfig(
            hidden_size=moe.d_model,
            intermediate_size=max(1, round(2 * moe.d_ff / 3)),
            num_local_experts=moe.num_experts,
            num_experts_per_tok=moe.top_k,
            router_jitter_noise=0.0,
        )
        block = MixtralSparseMoeBlock(cfg)
        with torch.no_grad():
            for p in block.parameters():
                if p.dim() > 1 and p is not block.gate.weight:  # transformers leaves them empty
                    nn.init.normal_(p, std=moe.d_model**-0.5)
            block.gate.weight.copy_(moe.router.weight)
        return block
    except Exception:  # noqa: BLE001 - another transformers layout
        return None


HF_IMPLS = ("eager", "batched_mm", "grouped_mm")
# "batched_mm" gathers every token-slot's expert weights: its forward alone holds this many
# bytes, fwd+bwd about three times as much. Above it the implementation is left out.
HF_BATCHED_MAX_GATHER_BYTES = 8 * 2**30


def hf_batched_gather_bytes(moe: MoEFeedForward, tokens: int, itemsize: int = 4) -> int:
    """Bytes of the per-slot weight copies HF's "batched_mm" makes for `tokens` tokens: k·N
    slots x (gate, up, down) x D x 2H/3 elements."""
    h = max(1, round(2 * moe.d_ff / 3))
    return moe.top_k * tokens * 3 * moe.d_model * h * itemsize


def hf_blocks(moe: MoEFeedForward, tokens: int = 0) -> dict[str, nn.Module]:
    """{implementation: MixtralSparseMoeBlock} for each of HF_IMPLS this transformers runs, the
    same weights in each ({} without transformers). With `tokens`, "batched_mm" is left out
    where its weight copies for that many tokens exceed HF_BATCHED_MAX_GATHER_BYTES."""
    base = hf_block(moe)
    if base is None:
        return {}
    out = {}
    x = torch.zeros(1, 2, moe.d_model)
    for impl in HF_IMPLS:
        gather = hf_batched_gather_bytes(moe, tokens)
        if impl == "batched_mm" and gather > HF_BATCHED_MAX_GATHER_BYTES:
            log.warning(
                "HF batched_mm left out at %d tokens: it would copy %.1f GiB of expert weights",
                tokens,
                gather / 2**30,
            )
            continue
        block = copy.deepcopy(base)
        experts = getattr(block, "experts", None)
        cfg = getattr(experts, "config", None)
        if cfg is None:  # an older layout without per-block implementations: eager only
            return {"eager": base}
        cfg._experts_implementation = impl
        try:
            with torch.no_grad():
                block(x)
        except Exception:  # noqa: BLE001 - not registered or not runnable here: no column
            continue
        out[impl] = block
    return out


def hf_routing(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The experts block chooses for x (N, D): (N, k), sorted per row."""
    with torch.no_grad():
        out = block.gate(x)
    return out[-1].sort(-1).values


class PeerWrap(nn.Module):
    """x (B, T, D) -> (B, T, D) for blocks that take/return other shapes or tuples."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x.reshape(1, -1, x.size(-1)))
        out = out[0] if isinstance(out, tuple) else out
        return out.reshape(x.shape)
