"""Tests for ume.decode.search: CTC greedy / prefix beam, attention rescoring, decode_batch."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ume.config import DecoderConfig, EncoderConfig, ModelConfig, MoEConfig
from ume.decode.search import (
    MODES,
    ctc_greedy,
    ctc_prefix_beam,
    decode_batch,
    log_add,
    rescore,
)
from ume.model.asr import ASRModel

VOCAB = 10


def _posteriors(path: list[int], vocab: int = 4, peak: float = 0.9) -> torch.Tensor:
    """(T, V) log-probs whose per-frame argmax is `path`."""
    probs = torch.full((len(path), vocab), (1 - peak) / (vocab - 1))
    for t, s in enumerate(path):
        probs[t, s] = peak
    return probs.log()


def _collapse(path: tuple[int, ...], blank: int = 0) -> tuple[int, ...]:
    out, prev = [], None
    for s in path:
        if s != prev and s != blank:
            out.append(s)
        prev = s
    return tuple(out)


def _brute_force(probs: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Total probability of every labelling, summing over all T^V paths."""
    t, v = probs.shape
    total: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(v), repeat=t):
        p = math.prod(float(probs[i, s]) for i, s in enumerate(path))
        lab = _collapse(path)
        total[lab] = total.get(lab, 0.0) + p
    return total


def test_log_add() -> None:
    assert log_add(-math.inf, -math.inf) == -math.inf
    assert math.isclose(log_add(math.log(0.2), math.log(0.3)), math.log(0.5))
    assert math.isclose(log_add(math.log(0.5), -math.inf), math.log(0.5))


def test_ctc_greedy_hand_built() -> None:
    a = _posteriors([1, 1, 0, 2, 2, 0, 2])
    b = _posteriors([3, 3, 3, 0, 0, 0, 0])
    lp = torch.stack([a, b])  # (2, 7, 4)
    assert ctc_greedy(lp, torch.tensor([7, 3])) == [[1, 2, 2], [3]]
    # lengths mask the tail: frames beyond the length are ignored
    assert ctc_greedy(lp, torch.tensor([4, 7])) == [[1, 2], [3]]
    assert ctc_greedy(lp, torch.tensor([2, 0])) == [[1], []]
    # leading blanks and blank-separated repeats
    c = _posteriors([0, 2, 0, 2, 2, 1, 1]).unsqueeze(0)
    assert ctc_greedy(c, torch.tensor([7])) == [[2, 2, 1]]


def test_prefix_beam_best_labelling_beats_best_path() -> None:
    # 2 frames, vocab {blank, a}: P(blank)=0.6 per frame
    probs = torch.tensor([[0.6, 0.4], [0.6, 0.4]])
    lp = probs.log()
    assert ctc_greedy(lp.unsqueeze(0), torch.tensor([2])) == [[]]  # best path: 0.36
    nbest = ctc_prefix_beam(lp, beam=4)
    assert nbest[0][0] == (1,)
    assert math.isclose(math.exp(nbest[0][1]), 0.64, rel_tol=1e-6)  # .24 + .24 + .16
    assert nbest[1][0] == ()
    assert math.isclose(math.exp(nbest[1][1]), 0.36, rel_tol=1e-6)


@pytest.mark.parametrize("t,seed", [(3, 0), (3, 1), (4, 2)])
def test_prefix_beam_exact_against_enumeration(t: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(t, 3, generator=g) * 1.5, dim=-1)
    ref = _brute_force(probs)
    assert math.isclose(sum(ref.values()), 1.0, rel_tol=1e-6)
    nbest = ctc_prefix_beam(probs.log(), beam=100)  # beam wide enough: no pruning
    # zero-probability prefixes are covered by test_prefix_beam_has_no_impossible_prefixes
    nbest = [(k, v) for k, v in nbest if v > -math.inf]
    got = {k: math.exp(v) for k, v in nbest}
    assert set(got) == set(ref)
    for lab, p in ref.items():
        assert math.isclose(got[lab], p, rel_tol=1e-5, abs_tol=1e-9), lab
    scores = [s for _, s in nbest]
    assert scores == sorted(scores, reverse=True)
    assert nbest[0][0] == max(ref, key=ref.get)


def test_prefix_beam_repeats_need_blank() -> None:
    # 'a a' path collapses to (a); 'a blank a' gives (a, a)
    probs = torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.1, 0.9]])
    ref = _brute_force(probs)
    got = {k: math.exp(v) for k, v in ctc_prefix_beam(probs.log(), beam=10)}
    assert math.isclose(got[(1, 1)], ref[(1, 1)], rel_tol=1e-6)
    assert math.isclose(ref[(1, 1)], 0.9 * 0.5 * 0.9, rel_tol=1e-6)
    assert math.isclose(got[(1,)], ref[(1,)], rel_tol=1e-6)


def test_prefix_beam_has_no_impossible_prefixes() -> None:
    probs = torch.tensor([[0.6, 0.4], [0.6, 0.4]])
    nbest = ctc_prefix_beam(probs.log(), beam=10)
    assert [k for k, _ in nbest] == [(1,), ()]
    assert all(v > -math.inf for _, v in nbest)


def test_prefix_beam_width_limits_output() -> None:
    g = torch.Generator().manual_seed(3)
    lp = torch.log_softmax(torch.randn(6, 5, generator=g), dim=-1)
    nbest = ctc_prefix_beam(lp, beam=3)
    assert 1 <= len(nbest) <= 3
    assert all(0 not in k for k, _ in nbest)


# ---- model-based search ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def model() -> ASRModel:
    torch.manual_seed(0)
    enc = EncoderConfig(
        input_dim=20,
        d_model=16,
        num_heads=2,
        d_ff=32,
        num_blocks=1,
        subsampling=4,
        subsampling_channels=4,
        conv_kernel=5,
    )
    dec = DecoderConfig(num_blocks=1, r_num_blocks=1, num_heads=2, d_ff=32)
    cfg = ModelConfig(encoder=enc, decoder=dec, moe=MoEConfig(), reverse_weight=0.3)
    m = ASRModel(cfg, VOCAB)
    with torch.no_grad():  # a peakier random decoder makes scores well separated
        m.decoder.left.out.weight.mul_(5.0)
        m.decoder.right.out.weight.mul_(5.0)
    return m.eval()


def _encoded(model: ASRModel) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(1, 60, 20, generator=g)
    with torch.no_grad():
        return model.encode(feats, torch.tensor([60]))


def _seq_logprob(model: ASRModel, enc: torch.Tensor, seq: list[int], right: bool) -> float:
    """Teacher-forced log P(seq <eos>) from one decoder direction, one hypothesis alone."""
    dec = model.decoder.right if right else model.decoder.left
    sos = model.sos
    s = seq[::-1] if right else seq
    ys_in = torch.tensor([[sos] + s])
    with torch.no_grad():
        logits = dec(
            enc, torch.ones(1, enc.size(1), dtype=torch.bool), ys_in, torch.tensor([len(s) + 1])
        )
    lp = torch.log_softmax(logits[0], -1)
    tgt = s + [model.eos]
    return float(sum(lp[i, tok] for i, tok in enumerate(tgt)))


NBEST = [((1, 2), -5.0), ((3,), -1.0), ((2, 2, 1), -3.0), ((4, 5, 6, 7), -4.0)]


def test_rescore_huge_ctc_weight_picks_best_ctc(model: ASRModel) -> None:
    enc, valid = _encoded(model)
    assert rescore(model, enc, valid[0], NBEST, ctc_weight=1e6) == [3]
    shuffled = [NBEST[2], NBEST[0], NBEST[3], NBEST[1]]
    assert rescore(model, enc, valid[0], shuffled, ctc_weight=1e6) == [3]
    assert rescore(model, enc, valid[0], [], ctc_weight=0.5) == []


@pytest.mark.parametrize("rw", [0.0, 0.3, 1.0])
def test_rescore_matches_individual_scores(model: ASRModel, rw: float) -> None:
    enc, valid = _encoded(model)
    seqs = [list(h) for h, _ in NBEST]
    l2r = [_seq_logprob(model, enc, s, right=False) for s in seqs]
    r2l = [_seq_logprob(model, enc, s, right=True) for s in seqs]
    for w in (0.0, 0.5):
        total = [(1 - rw) * a + rw * r + w * c for a, r, (_, c) in zip(l2r, r2l, NBEST)]
        best = seqs[max(range(len(seqs)), key=lambda i: total[i])]
        assert rescore(model, enc, valid[0], NBEST, ctc_weight=w, reverse_weight=rw) == best
    # the attention scores must actually discriminate for this test to mean something
    assert len({round(x, 3) for x in l2r}) == len(l2r)


def test_decode_batch_all_modes(model: ASRModel) -> None:
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 50, 20, generator=g)
    lens = torch.tensor([50, 35])
    results = {}
    for mode in MODES:
        hyps = decode_batch(model, feats, lens, mode=mode, beam=4)
        assert isinstance(hyps, list) and len(hyps) == 2, mode
        for h in hyps:
            assert isinstance(h, list)
            assert all(type(t) is int and 0 <= t < VOCAB for t in h), (mode, h)
        results[mode] = hyps
    for mode in ("ctc_greedy", "ctc_prefix_beam", "attention_rescoring"):
        assert all(0 not in h for h in results[mode]), mode  # no blanks
    assert all(model.eos not in h for h in results["attention"])
    # rescoring with a dominating CTC weight returns the prefix-beam best
    dom = decode_batch(model, feats, lens, mode="attention_rescoring", beam=4, ctc_weight=1e6)
    assert dom == results["ctc_prefix_beam"]
    # batch decoding of utterance 0 alone gives the same greedy result
    alone = decode_batch(model, feats[:1], lens[:1], mode="ctc_greedy")
    assert alone[0] == results["ctc_greedy"][0]


def test_decode_batch_invalid_mode(model: ASRModel) -> None:
    with pytest.raises(ValueError, match="unknown decoding mode"):
        decode_batch(model, torch.randn(1, 30, 20), torch.tensor([30]), mode="beam")
