"""Content-aware router initialisation for upcycling: k-means routers.

Why: right after upcycling all experts are copies, so the task loss gives the router no
gradient and routing is whatever the initial router says. A random router barely separates
speech frames (its entropy is close to the maximum, ln E); a k-means router sends each expert
one cluster of the layer's own inputs from step 0, so routing is content-aware from the start.
It does not make the copies drift apart faster: that is set by how much they train.

How: run a few utterances through the upcycled model (its function is the dense model's),
capture each MoE layer's input frames (valid frames only), cluster them with spherical
k-means (cosine) into E/G clusters, and set router row i = s·c_i (c_i unit-norm). The router
has no bias, so argmax_i c_i·x — nearest centroid by cosine — is exactly what it can express;
s is chosen so the logits' per-frame standard deviation over experts averages `logit_std`.
Any router keeps an upcycled model's function (top-k gates are renormalised over identical
experts), so this initialisation is still function-preserving.

Example:
    >>> batches = load_batch("data/train", cfg.features, 200)[1]
    >>> report = init_routers_kmeans(model, tok, batches, seed=0)
    >>> report["layers"][0]["cluster_share"]  # fraction of frames per cluster
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ume.errors import UmeError
from ume.model.moe import MoEFeedForward
from ume.moe_report import measure_load

KMEANS_ITERS = 30
MAX_FRAMES = 20_000  # per layer; k-means on more frames changes nothing at E <= 64


def spherical_kmeans(
    x: torch.Tensor, k: int, gen: torch.Generator, iters: int = KMEANS_ITERS
) -> torch.Tensor:
    """x (N, D) -> (k, D) unit-norm centroids of cosine k-means (k-means++ seeding).

    An empty cluster is re-seeded with the frame farthest from its centroid, so all k
    centroids are used. Raises ValueError if there are fewer frames than clusters."""
    if x.size(0) < k:
        raise UmeError(f"k-means router init: {x.size(0)} frames for {k} clusters; give more data")
    xn = F.normalize(x.double(), dim=1)  # (N, D)
    first = int(torch.randint(xn.size(0), (1,), generator=gen))
    cent = [xn[first]]
    best = (xn @ xn[first]).clone()  # (N,) highest similarity to a chosen centroid
    for _ in range(1, k):
        w = (1.0 - best).clamp_min(0) + 1e-12  # k-means++ on the cosine distance
        nxt = int(torch.multinomial(w, 1, generator=gen))
        cent.append(xn[nxt])
        best = torch.maximum(best, xn @ xn[nxt])
    c = torch.stack(cent)  # (k, D)
    for _ in range(iters):
        sim = xn @ c.t()  # (N, k)
        assign = sim.argmax(1)
        new = torch.zeros_like(c).index_add_(0, assign, xn)
        counts = torch.bincount(assign, minlength=k)
        for j in (counts == 0).nonzero().flatten().tolist():
            far = int(sim.max(1).values.argmin())  # worst-served frame starts a new cluster
            new[j] = xn[far]
            sim[far] = 1.0  # not picked twice
        c = F.normalize(new, dim=1)
    return c.float()


@torch.no_grad()
def capture_moe_inputs(
    model: torch.nn.Module, tokenizer, batches: list, max_frames: int = MAX_FRAMES, seed: int = 0
) -> dict[str, torch.Tensor]:
    """{MoE layer name: (N, D) input frames} from running batches [(feats, lens, utts)] through
    the model (encoder, and the decoders when they hold MoE layers); at most max_frames per
    layer, sampled uniformly."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, MoEFeedForward)}
    got: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    def hook(name: str):
        def fn(_mod, args):
            x, valid = args[0], args[1] if len(args) > 1 else None
            flat = x.detach().reshape(-1, x.size(-1))  # (B·T, D)
            if valid is not None:
                flat = flat[valid.reshape(-1)]
            got[name].append(flat.float().cpu())

        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        measure_load(model, tokenizer, batches)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        for m in layers.values():
            m.reset_load()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n, parts in got.items():
        x = torch.cat(parts) if parts else torch.zeros(0, layers[n].d_model)
        if x.size(0) > max_frames:
            x = x[torch.randperm(x.size(0), generator=gen)[:max_frames]]
        out[n] = x
    return out


@torch.no_grad()
def init_routers_kmeans(
    model: torch.nn.Module,
    tokenizer,
    batches: list,
    seed: int = 0,
    logit_std: float = 1.0,
    max_frames: int = MAX_FRAMES,
) -> dict:
    """Set every MoE layer's router to k-means centroids of its inputs (module docstring).

    With groups G > 1 each group's E/G experts get their own clustering (different seeds).
    Returns {"router_init": "kmeans", "layers": [{name, frames, cluster_share (E/G,) of the
    first group, logit_std}]}."""
    if logit_std <= 0:
        raise UmeError(f"k-means router init: logit_std {logit_std} must be > 0")
    inputs = capture_moe_inputs(model, tokenizer, batches, max_frames, seed)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, MoEFeedForward)}
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for name, m in layers.items():
        x = inputs[name]  # (N, D)
        per = m.num_experts // m.groups
        cent = torch.cat([spherical_kmeans(x, per, gen) for _ in range(m.groups)])  # (E, D)
        raw = x @ cent.t()  # (N, E) logits at scale 1
        spread = raw.view(x.size(0), m.groups, per).std(-1).mean()
        w = cent * (logit_std / float(spread.clamp_min(1e-8)))
        m.router.weight.copy_(w.to(m.router.weight))
        assign = raw.view(x.size(0), m.groups, per).argmax(-1)[:, 0]
        share = torch.bincount(assign, minlength=per).float() / max(x.size(0), 1)
        rows.append(
            {
                "name": name,
                "frames": int(x.size(0)),
                "cluster_share": [round(float(v), 4) for v in share],
                "logit_std": logit_std,
            }
        )
    return {"router_init": "kmeans", "layers": rows}


__all__ = ["capture_moe_inputs", "init_routers_kmeans", "spherical_kmeans"]
