"""Verify an upcycled model: on a padded batch, the MoE model right after upcycling must give the
dense model's CTC log-probs and decoder logits (to float rounding) and the same hypotheses in
every decoding mode.

Example:
    >>> res = verify_upcycle(dense_model, moe_model, feats, feat_lens, tokenizer)
    >>> res["identical_decodes"], res["max_abs_diff_ctc"]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ume.model.asr import ASRModel, add_sos_eos, reverse_targets
from ume.upcycle.convert import UpcycleError

VERIFY_TOL = 1e-4  # max |difference| of CTC log-probs / decoder logits that counts as equal


def max_abs_diff(
    a: torch.Tensor | Sequence[torch.Tensor],
    b: torch.Tensor | Sequence[torch.Tensor],
    mask: torch.Tensor | None = None,
) -> float:
    """Largest |a - b| (in float32) over a tensor or paired lists of tensors. With `mask`
    (bool, a leading part of each tensor's shape, e.g. (B, T) valid frames of (B, T, V)
    log-probs) only the positions where it is True count. 0.0 when nothing is compared; inf
    when the two sides differ in the number of tensors or in a shape."""
    xs = [a] if isinstance(a, torch.Tensor) else list(a)
    ys = [b] if isinstance(b, torch.Tensor) else list(b)
    if len(xs) != len(ys) or any(x.shape != y.shape for x, y in zip(xs, ys)):
        return float("inf")
    worst = 0.0
    for x, y in zip(xs, ys):
        d = (x.float() - y.float()).abs()
        if mask is not None:
            d = d[mask]
        if d.numel():
            worst = max(worst, float(d.max()))
    return worst


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
        res: dict = {"max_abs_diff_ctc": max_abs_diff(lp_d, lp_m, valid)}

        lens = valid.sum(1)
        hyps = ctc_greedy(lp_d, lens)
        vocab = dense_model.vocab_size
        seqs = [h if h else [1 + b % max(vocab - 2, 1)] for b, h in enumerate(hyps)]
        ys_lens = torch.tensor([len(s) for s in seqs])
        ys = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(s) for s in seqs], batch_first=True, padding_value=-1
        )
        sos, eos = dense_model.sos, dense_model.eos
        ys_in, _ = add_sos_eos(ys, ys_lens, sos, eos)
        r_ys_in, _ = add_sos_eos(reverse_targets(ys, ys_lens), ys_lens, sos, eos)
        in_lens = ys_lens + 1
        dev = feats.device
        ys_in, r_ys_in, in_lens = ys_in.to(dev), r_ys_in.to(dev), in_lens.to(dev)
        tmask = torch.arange(ys_in.size(1), device=dev).unsqueeze(0) < in_lens.unsqueeze(1)
        l2r_d, r2l_d = dense_model.decoder(enc_d, valid, ys_in, in_lens, r_ys_in)
        l2r_m, r2l_m = moe_model.decoder(enc_m, valid, ys_in, in_lens, r_ys_in)
        dec = max_abs_diff(l2r_d, l2r_m, tmask)
        if r2l_d is not None and r2l_m is not None:
            dec = max(dec, max_abs_diff(r2l_d, r2l_m, tmask))
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
            res["bf16_max_abs_diff_ctc"] = max_abs_diff(
                dense_model.ctc_log_probs(e_d), moe_model.ctc_log_probs(e_m), v
            )
    finally:
        dense_model.train(was[0])
        moe_model.train(was[1])
    return res
