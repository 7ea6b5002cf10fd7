"""ASRModel: global CMVN + Conformer encoder + CTC head + bidirectional attention decoder.

loss = ctc_weight·CTC + (1 - ctc_weight)·[(1 - reverse_weight)·L2R + reverse_weight·R2L]
       + Σ MoE auxiliary terms (balance, z-loss) when MoE layers are present.

Example:
    >>> model = ASRModel(ModelConfig(), vocab_size=500)
    >>> out = model(feats, feat_lens, ys, ys_lens)   # feats (B, T, 80), ys (B, L) padded with -1
    >>> out["loss"].backward()
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from ume.config import ModelConfig
from ume.model.conformer import ConformerEncoder
from ume.model.decoder import BiTransformerDecoder
from ume.model.frozen import hold_frozen_norms

IGNORE_ID = -1


def pad_list(seqs: list[torch.Tensor], pad: int) -> torch.Tensor:
    return nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad)


def add_sos_eos(
    ys: torch.Tensor, ys_lens: torch.Tensor, sos: int, eos: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """ys (B, L) padded with IGNORE_ID -> ys_in (B, L+1) '<sos> y' padded with <eos>,
    ys_out (B, L+1) 'y <eos>' padded with IGNORE_ID. eos defaults to sos (one '<sos/eos>')."""
    eos = sos if eos is None else eos
    seqs = [ys[i, : ys_lens[i]] for i in range(ys.size(0))]
    first, last = ys.new_tensor([sos]), ys.new_tensor([eos])
    ys_in = pad_list([torch.cat([first, s]) for s in seqs], eos)
    ys_out = pad_list([torch.cat([s, last]) for s in seqs], IGNORE_ID)
    return ys_in, ys_out


def special_ids(cfg: ModelConfig, vocab_size: int) -> tuple[int, int]:
    """(sos, eos) ids of a model: cfg.sos_id / cfg.eos_id, -1 meaning vocab_size - 1."""
    out = []
    for name in ("sos_id", "eos_id"):
        value = getattr(cfg, name)
        if not -1 <= value < vocab_size:
            raise ValueError(
                f"model.{name}={value} is outside the vocabulary (0..{vocab_size - 1}); use the "
                "id units.txt gives the token, or -1 for the last id"
            )
        out.append(vocab_size - 1 if value == -1 else value)
    return out[0], out[1]


def reverse_targets(ys: torch.Tensor, ys_lens: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence within its length; (B, L) -> (B, L) padded with IGNORE_ID."""
    seqs = [ys[i, : ys_lens[i]].flip(0) for i in range(ys.size(0))]
    return pad_list(seqs, IGNORE_ID)


class ASRModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.sos, self.eos = special_ids(cfg, vocab_size)
        d = cfg.encoder.d_model
        # global CMVN, filled from training statistics and saved with the weights
        self.register_buffer("cmvn_mean", torch.zeros(cfg.encoder.input_dim))
        self.register_buffer("cmvn_istd", torch.ones(cfg.encoder.input_dim))
        self.encoder = ConformerEncoder(cfg.encoder, cfg.moe)
        self.ctc = nn.Linear(d, vocab_size)
        self.decoder = BiTransformerDecoder(vocab_size, d, cfg.decoder, cfg.moe)
        self.chunk_training = True  # the trainer turns dynamic chunks off during a curriculum

    def train(self, mode: bool = True) -> ASRModel:
        """Training mode for every module, except BatchNorms whose parameters are all frozen:
        they stay in eval mode, so a frozen phase leaves their running statistics unchanged."""
        super().train(mode)
        if mode:
            hold_frozen_norms(self)
        return self

    def set_cmvn(self, mean: torch.Tensor, istd: torch.Tensor) -> None:
        self.cmvn_mean.copy_(mean)
        self.cmvn_istd.copy_(istd)

    # ---- encoder side -------------------------------------------------------------------
    def encode(
        self,
        feats: torch.Tensor,
        feat_lens: torch.Tensor,
        chunk_size: int = 0,
        left_chunks: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F) raw fbank -> encoder out (B, T', D), valid (B, T')."""
        x = (feats - self.cmvn_mean) * self.cmvn_istd
        return self.encoder(x, feat_lens, chunk_size, left_chunks)

    def ctc_log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        """(B, T', D) -> (B, T', V) float32 log-probabilities."""
        return F.log_softmax(self.ctc(enc).float(), dim=-1)

    def _train_chunk(self) -> tuple[int, int]:
        """Dynamic-chunk sampling: full context or a random chunk size and left context."""
        c = self.cfg
        dynamic = self.training and c.dynamic_chunk and self.chunk_training
        if not dynamic or random.random() < c.full_context_prob:
            return 0, -1
        chunk = random.randint(1, c.max_chunk)
        left = -1
        if c.dynamic_left_chunks:
            left = random.randint(0, 8)
        return chunk, left

    # ---- losses -------------------------------------------------------------------------
    def ctc_loss(
        self, log_probs: torch.Tensor, lens: torch.Tensor, ys: torch.Tensor, ys_lens: torch.Tensor
    ) -> torch.Tensor:
        targets = torch.cat([ys[i, : ys_lens[i]] for i in range(ys.size(0))])
        reduction = "sum" if self.cfg.ctc_reduction == "sum_over_batch" else "mean"
        loss = F.ctc_loss(
            log_probs.transpose(0, 1),  # (T', B, V)
            targets,
            lens,
            ys_lens,
            blank=0,
            reduction=reduction,
            zero_infinity=True,
        )
        if reduction == "sum":
            loss = loss / ys.size(0)
        return loss

    def attention_loss(
        self, enc: torch.Tensor, valid: torch.Tensor, ys: torch.Tensor, ys_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (combined loss, l2r loss, token accuracy of l2r)."""
        ys_in, ys_out = add_sos_eos(ys, ys_lens, self.sos, self.eos)
        in_lens = ys_lens + 1
        r_ys_in = r_ys_out = None
        if self.decoder.right is not None and self.cfg.reverse_weight > 0:
            r_ys = reverse_targets(ys, ys_lens)
            r_ys_in, r_ys_out = add_sos_eos(r_ys, ys_lens, self.sos, self.eos)
        # the right-to-left decoder runs only when its loss counts (an unused branch would
        # leave DDP waiting for gradients that never come)
        l2r, r2l = self.decoder(enc, valid, ys_in, in_lens, r_ys_in)
        b = ys.size(0)

        def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return (
                F.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)),
                    target.reshape(-1),
                    ignore_index=IGNORE_ID,
                    label_smoothing=self.cfg.lsm_weight,
                    reduction="sum",
                )
                / b
            )

        loss_l2r = ce(l2r, ys_out)
        loss = loss_l2r
        if r2l is not None and r_ys_out is not None:
            rw = self.cfg.reverse_weight
            loss = (1 - rw) * loss_l2r + rw * ce(r2l, r_ys_out)
        mask = ys_out != IGNORE_ID
        acc = (l2r.argmax(-1)[mask] == ys_out[mask]).float().mean()
        return loss, loss_l2r, acc

    def moe_aux_losses(self) -> dict[str, torch.Tensor]:
        """Sum of auxiliary terms recorded by MoE layers during the last forward."""
        total: dict[str, torch.Tensor] = {}
        for m in self.modules():
            aux = getattr(m, "aux_losses", None)
            if aux:
                for k, v in aux.items():
                    total[k] = total.get(k, 0.0) + v
        return total

    def forward(
        self,
        feats: torch.Tensor,
        feat_lens: torch.Tensor,
        ys: torch.Tensor,
        ys_lens: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """feats (B, T, F), feat_lens (B,), ys (B, L) padded with -1, ys_lens (B,)."""
        for m in self.modules():  # a layer that does not run now must add no stale terms
            if getattr(m, "aux_losses", None):
                m.aux_losses = {}
        chunk, left = self._train_chunk()
        enc, valid = self.encode(feats, feat_lens, chunk, left)
        lens = valid.sum(1)
        out: dict[str, torch.Tensor] = {}
        w = self.cfg.ctc_weight
        loss = enc.new_zeros((), dtype=torch.float32)
        if w > 0:
            out["ctc"] = self.ctc_loss(self.ctc_log_probs(enc), lens, ys, ys_lens)
            loss = loss + w * out["ctc"]
        if w < 1:
            out["att"], out["att_l2r"], out["acc"] = self.attention_loss(enc, valid, ys, ys_lens)
            loss = loss + (1 - w) * out["att"]
        for k, v in self.moe_aux_losses().items():
            out[k] = v
            loss = loss + v
        out["loss"] = loss
        return out
