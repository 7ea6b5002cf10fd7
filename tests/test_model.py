"""Tests for ume.model: masks, relative-position attention, subsampling, Conformer, ASRModel."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from ume.config import DecoderConfig, EncoderConfig, ModelConfig, MoEConfig
from ume.model.asr import IGNORE_ID, ASRModel, add_sos_eos, reverse_targets
from ume.model.attention import RelPositionalEncoding, RelPositionAttention, sinusoid
from ume.model.conformer import ConformerEncoder, ConvSubsampling
from ume.model.mask import (
    causal_mask,
    chunk_attention_mask,
    encoder_attention_mask,
    make_valid_mask,
)


def _enc_cfg(**kw) -> EncoderConfig:
    base = dict(
        input_dim=20,
        d_model=16,
        num_heads=2,
        d_ff=32,
        num_blocks=2,
        subsampling=4,
        subsampling_channels=4,
        conv_kernel=5,
        causal_conv=True,
    )
    base.update(kw)
    return EncoderConfig(**base)


def _model_cfg(**kw) -> ModelConfig:
    enc = kw.pop("encoder", None) or _enc_cfg()
    dec = DecoderConfig(num_blocks=1, r_num_blocks=1, num_heads=2, d_ff=32)
    return ModelConfig(encoder=enc, decoder=dec, moe=MoEConfig(), **kw)


# ---- masks ----------------------------------------------------------------------------------
def test_make_valid_mask() -> None:
    m = make_valid_mask(torch.tensor([2, 3, 0]))
    assert m.dtype == torch.bool
    assert m.tolist() == [[True, True, False], [True, True, True], [False, False, False]]
    m = make_valid_mask(torch.tensor([1, 2]), max_len=4)
    assert m.tolist() == [[True, False, False, False], [True, True, False, False]]


def test_chunk_attention_mask_exact() -> None:
    m = chunk_attention_mask(6, chunk_size=2, left_chunks=1)
    expected = [
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1],
    ]
    assert m.int().tolist() == expected
    # all previous chunks when left_chunks < 0
    full_left = chunk_attention_mask(6, chunk_size=2, left_chunks=-1)
    assert full_left[4].int().tolist() == [1, 1, 1, 1, 1, 1]
    assert full_left[1].int().tolist() == [1, 1, 0, 0, 0, 0]
    # left_chunks = 0: only the own chunk
    own = chunk_attention_mask(5, chunk_size=2, left_chunks=0)
    assert own[4].int().tolist() == [0, 0, 0, 0, 1]
    # chunk_size <= 0: full context
    assert chunk_attention_mask(4, 0).all()


def test_encoder_attention_mask_shape_and_padding() -> None:
    valid = make_valid_mask(torch.tensor([5, 3]), 5)
    m = encoder_attention_mask(valid, chunk_size=2, left_chunks=-1)
    assert m.shape == (2, 5, 5)
    # padded keys are never visible
    assert not m[1, :, 3:].any()
    # utterance 1 rows = chunk mask restricted to its 3 valid keys
    chunk = chunk_attention_mask(5, 2, -1)
    assert torch.equal(m[0], chunk)
    assert torch.equal(m[1, :, :3], chunk[:, :3])
    full = encoder_attention_mask(valid)
    assert full[0].all() and full[1, :, :3].all() and not full[1, :, 3:].any()


def test_causal_mask() -> None:
    assert causal_mask(3).int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


# ---- sinusoidal positions -------------------------------------------------------------------
def test_sinusoid_is_the_formula_and_the_only_one_in_the_model() -> None:
    """Column 2i = sin(p / 10000^(2i/D)), 2i+1 = cos; the streaming encoder uses this very
    function (one sinusoid in ume.model, so the chunked and full encoders cannot drift)."""
    import ume.model.streaming as streaming

    d = 8
    pos = torch.tensor([0.0, 1.0, 5.0, -3.0, 100.0])
    got = sinusoid(pos, d)
    assert got.shape == (5, d) and got.dtype == torch.float32
    for c in range(d):
        freq = 10000.0 ** (-(c - c % 2) / d)
        want = [(math.sin if c % 2 == 0 else math.cos)(p * freq) for p in pos.tolist()]
        assert torch.allclose(got[:, c], torch.tensor(want), atol=1e-5), c
    assert streaming.sinusoid is sinusoid
    assert not [n for n in vars(streaming) if n.startswith("sinusoid") and n != "sinusoid"]


# ---- relative-position attention ------------------------------------------------------------
def _reference_rel_attention(
    att: RelPositionAttention, x: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Direct loops over batch, heads, i, j of the Transformer-XL score."""
    b, t, d = x.shape
    h, dk = att.h, att.d_k
    q = att.linear_q(x).view(b, t, h, dk)
    k = att.linear_k(x).view(b, t, h, dk)
    v = att.linear_v(x).view(b, t, h, dk)
    out = torch.zeros(b, t, h, dk)
    for bi in range(b):
        for hd in range(h):
            u, w = att.pos_bias_u[hd], att.pos_bias_v[hd]
            for i in range(t):
                scores = []
                for j in range(t):
                    r = torch.tensor([float(i - j)])
                    p = att.linear_pos(sinusoid(r, d))[0].view(h, dk)[hd]
                    s = (q[bi, i, hd] + u) @ k[bi, j, hd] + (q[bi, i, hd] + w) @ p
                    scores.append(s / math.sqrt(dk))
                sc = torch.stack(scores)
                vis = mask[bi, i]
                if not vis.any():
                    continue  # fully masked query: zero context
                sc = sc.masked_fill(~vis, float("-inf"))
                a = torch.softmax(sc, dim=0)
                out[bi, i, hd] = (a.unsqueeze(1) * v[bi, :, hd]).sum(0)
    return att.linear_out(out.reshape(b, t, d))


@pytest.mark.parametrize("chunk", [0, 2])
def test_rel_position_attention_matches_direct_computation(chunk: int) -> None:
    torch.manual_seed(0)
    d, h, t = 16, 2, 6
    att = RelPositionAttention(d, h).eval()
    with torch.no_grad():  # make every parameter random (biases included)
        for p in att.parameters():
            p.normal_(0.0, 0.3)
    x = torch.randn(2, t, d)
    valid = make_valid_mask(torch.tensor([6, 4]), t)  # utterance 1 has 2 padded frames
    mask = encoder_attention_mask(valid, chunk_size=chunk, left_chunks=1)
    pos = RelPositionalEncoding(d)(t)
    assert pos.shape == (1, 2 * t - 1, d)
    with torch.no_grad():
        got = att(x, x, x, mask, pos)
        ref = _reference_rel_attention(att, x, mask)
    assert got.shape == (2, t, d)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()


def test_rel_position_attention_fully_masked_query_is_finite() -> None:
    torch.manual_seed(0)
    att = RelPositionAttention(16, 2).eval()
    x = torch.randn(1, 3, 16)
    mask = torch.tensor([[[True, False, False], [False, False, False], [True, True, False]]])
    with torch.no_grad():
        out = att(x, x, x, mask, RelPositionalEncoding(16)(3))
    assert torch.isfinite(out).all()
    # the query with no visible key gets a zero context -> only the output bias
    assert torch.allclose(out[0, 1], att.linear_out.bias)


def test_rel_shift_indexing() -> None:
    t = 4
    dist = torch.arange(t - 1, -t, -1).float()  # column c holds distance (t-1) - c
    x = dist.view(1, 1, 1, -1).expand(1, 1, t, -1)
    shifted = RelPositionAttention.rel_shift(x)[0, 0]
    i = torch.arange(t).unsqueeze(1)
    j = torch.arange(t).unsqueeze(0)
    assert torch.equal(shifted, (i - j).float())


# ---- subsampling ----------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [4, 6, 8])
def test_conv_subsampling_lengths_match_conv_output(rate: int) -> None:
    torch.manual_seed(0)
    sub = ConvSubsampling(input_dim=20, d_model=16, rate=rate, channels=4)
    n_min = sub.min_input_frames()
    assert int(sub.output_lengths(torch.tensor(n_min))) == 1
    assert int(sub.output_lengths(torch.tensor(n_min - 1))) == 0
    for t in [n_min - 1, n_min, n_min + 1, 23, 40, 41, 57, 100]:
        x = torch.randn(1, t, 20)
        if t < n_min:
            assert int(sub.output_lengths(torch.tensor([t]))[0]) == 0
            continue
        y, lens = sub(x, torch.tensor([t]))
        assert y.shape == (1, int(lens[0]), 16), (rate, t)
        # roughly t / rate frames
        assert abs(int(lens[0]) - t / rate) <= 3
    # batch: the padded length gives the conv output size, each length its own
    x = torch.randn(3, 77, 20)
    lens_in = torch.tensor([77, 50, n_min])
    y, lens = sub(x, lens_in)
    assert y.size(1) == int(lens[0])
    assert lens.tolist() == [int(sub.output_lengths(torch.tensor(v))) for v in lens_in.tolist()]


def test_min_input_frames_values() -> None:
    assert ConvSubsampling(20, 16, 4).min_input_frames() == 7
    assert ConvSubsampling(20, 16, 6).min_input_frames() == 11
    assert ConvSubsampling(20, 16, 8).min_input_frames() == 15
    with pytest.raises(ValueError, match="subsampling rate"):
        ConvSubsampling(20, 16, 5)


# ---- Conformer encoder ----------------------------------------------------------------------
def test_encoder_output_shapes() -> None:
    torch.manual_seed(0)
    enc = ConformerEncoder(_enc_cfg(subsampling=8), MoEConfig()).eval()
    with torch.no_grad():
        out, valid = enc(torch.randn(2, 100, 20), torch.tensor([100, 60]))
    sub = enc.embed
    t_out = int(sub.output_lengths(torch.tensor(100)))
    assert out.shape == (2, t_out, 16)
    assert valid.shape == (2, t_out)
    assert valid.sum(1).tolist() == [t_out, int(sub.output_lengths(torch.tensor(60)))]


def test_encoder_final_norm_placement() -> None:
    """ "block": a LayerNorm closes every block; "encoder": pre-LN blocks + one LayerNorm."""
    torch.manual_seed(0)
    per_block = ConformerEncoder(_enc_cfg(final_norm="block"), MoEConfig())
    once = ConformerEncoder(_enc_cfg(final_norm="encoder"), MoEConfig()).eval()
    assert per_block.after_norm is None
    assert all(isinstance(b.norm_final, torch.nn.LayerNorm) for b in per_block.blocks)
    assert all(isinstance(b.norm_final, torch.nn.Identity) for b in once.blocks)
    with torch.no_grad():
        out, valid = once(torch.randn(2, 100, 20), torch.tensor([100, 60]))
    real = out[valid]  # (N, D): the final LayerNorm leaves each frame zero-mean, unit-variance
    assert torch.allclose(real.mean(-1), torch.zeros(len(real)), atol=1e-5)
    with pytest.raises(ValueError, match="final_norm"):
        ConformerEncoder(_enc_cfg(final_norm="layer"), MoEConfig())


@pytest.mark.parametrize("final_norm", ["block", "encoder"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk", [0, 3])
def test_encoder_padding_does_not_leak(causal: bool, chunk: int, final_norm: str) -> None:
    torch.manual_seed(0)
    enc = ConformerEncoder(_enc_cfg(causal_conv=causal, final_norm=final_norm), MoEConfig())
    enc = enc.eval()
    a = torch.randn(1, 90, 20)
    b = torch.randn(1, 55, 20)
    batch = torch.zeros(2, 90, 20)
    batch[0] = a[0]
    batch[1, :55] = b[0]
    batch[1, 55:] = 7.0  # garbage in the padding must not matter
    with torch.no_grad():
        out, valid = enc(batch, torch.tensor([90, 55]), chunk_size=chunk)
        out_a, _ = enc(a, torch.tensor([90]), chunk_size=chunk)
        out_b, valid_b = enc(b, torch.tensor([55]), chunk_size=chunk)
    nb = int(valid_b.sum())
    assert int(valid[1].sum()) == nb
    assert torch.allclose(out[0], out_a[0], atol=1e-5)
    assert torch.allclose(out[1, :nb], out_b[0, :nb], atol=1e-5)


@pytest.mark.parametrize("rate", [4, 8])
def test_encoder_chunk_output_ignores_future(rate: int) -> None:
    torch.manual_seed(0)
    chunk = 3
    enc = ConformerEncoder(_enc_cfg(subsampling=rate), MoEConfig()).eval()
    x = torch.randn(1, 160, 20)
    first = (chunk - 1 + 1) * rate + 8  # first input frame beyond the first chunk + stem lookahead
    y = x.clone()
    y[:, first:] = torch.randn(1, 160 - first, 20) * 3.0
    lens = torch.tensor([160])
    with torch.no_grad():
        out_x, _ = enc(x, lens, chunk_size=chunk, left_chunks=-1)
        out_y, _ = enc(y, lens, chunk_size=chunk, left_chunks=-1)
        full_x, _ = enc(x, lens, chunk_size=0)
        full_y, _ = enc(y, lens, chunk_size=0)
    assert torch.equal(out_x[:, :chunk], out_y[:, :chunk])
    # the change did reach later chunks, and full context lets it leak into the first chunk
    assert not torch.allclose(out_x[:, chunk:], out_y[:, chunk:])
    assert not torch.allclose(full_x[:, :chunk], full_y[:, :chunk])


def test_encoder_noncausal_conv_leaks_across_chunk() -> None:
    """Sanity check for the test above: a non-causal depthwise conv looks right."""
    torch.manual_seed(0)
    chunk, rate = 3, 4
    enc = ConformerEncoder(_enc_cfg(subsampling=rate, causal_conv=False), MoEConfig()).eval()
    x = torch.randn(1, 160, 20)
    y = x.clone()
    first = chunk * rate + 8
    y[:, first:] = torch.randn(1, 160 - first, 20) * 3.0
    lens = torch.tensor([160])
    with torch.no_grad():
        out_x, _ = enc(x, lens, chunk_size=chunk)
        out_y, _ = enc(y, lens, chunk_size=chunk)
    assert not torch.allclose(out_x[:, :chunk], out_y[:, :chunk])


# ---- ASRModel -------------------------------------------------------------------------------
def test_add_sos_eos_and_reverse_targets() -> None:
    ys = torch.tensor([[3, 4, 5], [6, IGNORE_ID, IGNORE_ID]])
    lens = torch.tensor([3, 1])
    ys_in, ys_out = add_sos_eos(ys, lens, 9)
    assert ys_in.tolist() == [[9, 3, 4, 5], [9, 6, 9, 9]]
    assert ys_out.tolist() == [[3, 4, 5, 9], [6, 9, -1, -1]]
    assert reverse_targets(ys, lens).tolist() == [[5, 4, 3], [6, -1, -1]]
    r_in, r_out = add_sos_eos(reverse_targets(ys, lens), lens, 9)
    assert r_in.tolist() == [[9, 5, 4, 3], [9, 6, 9, 9]]
    assert r_out.tolist() == [[5, 4, 3, 9], [6, 9, -1, -1]]


VOCAB = 12


def _batch(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 80, 20, generator=g)
    feat_lens = torch.tensor([80, 60])
    ys = torch.tensor([[3, 4, 5, 4], [7, 2, IGNORE_ID, IGNORE_ID]])
    ys_lens = torch.tensor([4, 2])
    return feats, feat_lens, ys, ys_lens


def test_asr_forward_backward_all_params_get_grads() -> None:
    torch.manual_seed(0)
    random.seed(0)  # dynamic chunk sampling
    model = ASRModel(_model_cfg(ctc_weight=0.3, reverse_weight=0.3), VOCAB).train()
    assert model.sos == model.eos == VOCAB - 1
    out = model(*_batch())
    for k in ("ctc", "att", "att_l2r", "acc", "loss"):
        assert k in out and torch.isfinite(out[k]), k
    expected = 0.3 * out["ctc"] + 0.7 * out["att"]
    assert torch.allclose(out["loss"], expected)
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert zero == []


def test_ctc_reduction_modes() -> None:
    torch.manual_seed(0)
    model = ASRModel(_model_cfg(ctc_weight=1.0), VOCAB).eval()
    feats, feat_lens, ys, ys_lens = _batch()
    with torch.no_grad():
        enc, valid = model.encode(feats, feat_lens)
        lp = model.ctc_log_probs(enc)
        targets = torch.cat([ys[0, :4], ys[1, :2]])
        per = F.ctc_loss(lp.transpose(0, 1), targets, valid.sum(1), ys_lens, reduction="none")
        model.cfg.ctc_reduction = "sum_over_batch"
        out_sum = model(feats, feat_lens, ys, ys_lens)
        model.cfg.ctc_reduction = "mean"
        out_mean = model(feats, feat_lens, ys, ys_lens)
    assert "att" not in out_sum  # ctc_weight 1: no attention branch
    assert torch.allclose(out_sum["ctc"], per.sum() / 2, rtol=1e-5)
    assert torch.allclose(out_mean["ctc"], (per / ys_lens).mean(), rtol=1e-5)
    assert not torch.allclose(out_sum["ctc"], out_mean["ctc"])
    assert torch.allclose(out_sum["loss"], out_sum["ctc"])


def test_reverse_weight() -> None:
    torch.manual_seed(0)
    model = ASRModel(_model_cfg(ctc_weight=0.0, reverse_weight=0.0), VOCAB).eval()
    batch = _batch()
    out0 = model(*batch)
    assert "ctc" not in out0
    assert torch.allclose(out0["att"], out0["att_l2r"])
    assert torch.allclose(out0["loss"], out0["att"])
    out0["loss"].backward()
    assert all(p.grad is None for p in model.decoder.right.parameters())
    assert all(p.grad is not None for p in model.decoder.left.parameters())
    model.zero_grad(set_to_none=True)

    r2l = []
    for rw in (0.3, 0.6):
        model.cfg.reverse_weight = rw
        out = model(*batch)
        assert torch.allclose(out["att_l2r"], out0["att_l2r"])
        assert not torch.allclose(out["att"], out["att_l2r"])
        r2l.append((out["att"] - (1 - rw) * out["att_l2r"]) / rw)
    # att = (1 - rw)·L2R + rw·R2L with the same R2L loss for every rw
    assert torch.allclose(r2l[0], r2l[1], atol=1e-4)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.decoder.right.parameters())
