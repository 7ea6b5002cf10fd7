"""Training loop: AdamW + warmup, grad clipping/accumulation, dynamic chunks, freezing phases,
atomic checkpoints with exact resume, checkpoint averaging, dev curve, TensorBoard, DDP (NCCL on
GPUs, gloo on CPUs), --device cpu|cuda|auto.

Under DDP every decision that changes control flow is collective (a non-finite loss on any rank
skips the step on all ranks; a time limit stops all ranks), each rank's RNG state is saved and
restored, and only rank 0 trains the tokenizer and writes files.

Example:
    $ ume train --config configs/quick.yaml --train data/quick/train --dev data/quick/dev \\
          --exp runs/dense [--device cuda]
    $ torchrun --nproc_per_node=2 -m ume.cli train --config ... --exp runs/dense_ddp
    $ ume train --init ume/models/dense_paper --train ... --dev ... --exp runs/finetune \\
          --set train.max_steps=200
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ume.config import ExperimentConfig
from ume.data.features import GlobalCMVN
from ume.data.loader import BucketSampler, FeatureStore, collate_tokens, numpy_seed_everything
from ume.data.tokenizer import Tokenizer
from ume.device import autocast, autocast_dtype
from ume.errors import UmeError
from ume.expdir import (
    MODEL_FILE,
    atomic_save_tensors,
    atomic_write_json,
    build_model,
    load_weights,
    write_experiment,
)
from ume.model.asr import ASRModel
from ume.model.params import count_params
from ume.train.checkpoint import (
    average_checkpoints,
    best_checkpoints,
    checkpoints_to_average,
    latest_checkpoint,
    load_optimizer_tensors,
    python_rng_state,
    read_rank_rng,
    read_state,
    reseed_rank,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from ume.train.distributed import (
    barrier,
    gather_rank_rngs,
    ranks_where,
    reduced_moe_stats,
    setup_distributed,
)
from ume.train.monitor import dev_score, log_train_scalars, record_dev_point
from ume.train.schedule import (
    apply_trainable,
    loss_free_prefixes,
    lr_lambda,
    param_groups,
    phase_at,
    set_lr,
)
from ume.train.state import TrainClock, TrainState
from ume.train.targets import ctc_targets

log = logging.getLogger(__name__)


class Trainer:
    """One training run into `exp_dir`: `run()` resumes from the newest complete checkpoint
    there (or starts from `init_dir`'s weights, or from scratch), trains to train.max_steps or
    train.max_minutes, and `finish()` writes the averaged model.safetensors and train_info.json.
    Under torchrun every rank builds one; all collective decisions are taken by every rank."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        exp_dir: str | os.PathLike,
        train_data: str,
        dev_data: str | None = None,
        init_dir: str | None = None,
        cache_dir: str | None = None,
        progress: bool = True,
        device: str = "auto",
    ) -> None:
        self.cfg = cfg
        self.exp = Path(exp_dir)
        self.init_dir = init_dir
        self.rank, self.world, self.device = setup_distributed(device)
        self.main = self.rank == 0
        self.progress = progress and self.main
        tc = cfg.train
        if tc.num_threads > 0:
            torch.set_num_threads(tc.num_threads)
        numpy_seed_everything(tc.seed + self.rank)
        self.exp.mkdir(parents=True, exist_ok=True)
        cache_root = Path(cache_dir) if cache_dir else None

        # data
        feats = cfg.features
        self.train_store = FeatureStore.from_data_dir(train_data, feats, cache_root, self.progress)
        self.dev_store = (
            FeatureStore.from_data_dir(dev_data, feats, cache_root, False) if dev_data else None
        )

        # tokenizer + CMVN: from the init model, from a previous run in exp, or fit on train
        # (rank 0 alone trains and writes the tokenizer; the other ranks wait, then read it).
        # Whether one exists is decided collectively, before rank 0 can write one: a late rank
        # must not see rank 0's fresh file, take the other branch and skip the barrier.
        tok_missing = not (self.exp / "tokenizer" / "tokenizer.json").is_file()
        if init_dir is not None:
            self.tokenizer = Tokenizer.load(Path(init_dir) / "tokenizer")
        elif not ranks_where(tok_missing, self.device):
            self.tokenizer = Tokenizer.load(self.exp / "tokenizer")
        else:
            if self.main:
                texts = [u.text for u in self.train_store.utts]
                tok = Tokenizer.train(texts, cfg.tokenizer.bpe_size, self.exp / "tokenizer")
                tok.save(self.exp / "tokenizer")
            barrier()
            self.tokenizer = tok if self.main else Tokenizer.load(self.exp / "tokenizer")
        self.model: ASRModel = build_model(cfg, self.tokenizer)
        self._resume_ck = latest_checkpoint(self.exp / "checkpoints")
        fresh_cmvn = False  # statistics the model holds now that cmvn.json must record
        if init_dir is not None:
            load_weights(self.model, Path(init_dir) / MODEL_FILE)
            fresh_cmvn = True
        elif self._resume_ck is None:
            cmvn = GlobalCMVN.from_features(f.float().numpy() for f in self.train_store.feats)
            self.model.set_cmvn(*cmvn.as_tensors())
            fresh_cmvn = True
        # on resume the statistics come with the checkpoint's weights (resume() writes
        # cmvn.json only if it is missing): never overwrite them with the identity here
        if self.main:
            write_experiment(self.exp, cfg, self.tokenizer)
            if fresh_cmvn:
                self._write_cmvn()
        self.model.to(self.device)
        self.amp_dtype = autocast_dtype(self.device, tc.precision)

        # targets; drop utterances CTC cannot align (more tokens than encoder frames)
        keep, self.tokens = ctc_targets(
            self.train_store,
            self.tokenizer,
            self.model.encoder.embed,
            cfg.model.encoder.subsampling,
        )
        self.train_idx = keep
        self.sampler = BucketSampler(
            [self.train_store.lengths[i] for i in keep], tc.max_frames, tc.max_batch_size, tc.seed
        )
        self.aug_gen = torch.Generator().manual_seed(tc.seed * 7 + self.rank)
        self.state = TrainState()
        self.writer = None
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.exp / "tensorboard"))
        self.optimizer: torch.optim.Optimizer | None = None
        self.ddp: torch.nn.Module | None = None

    def _write_cmvn(self) -> None:
        m = self.model
        atomic_write_json(
            {"mean": m.cmvn_mean.tolist(), "istd": m.cmvn_istd.tolist()}, self.exp / "cmvn.json"
        )

    # ---- optimiser / phases -------------------------------------------------------------
    def _build_optimizer(self, phase_idx: int) -> None:
        tc = self.cfg.train
        _, phase = phase_at(tc.phases, self.state.step)
        n_train, n_total = apply_trainable(
            self.model,
            phase.trainable,
            self.cfg.model.encoder.num_blocks,
            loss_free_prefixes(self.cfg.model),
        )
        old = self.optimizer
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = param_groups(self.model, tc.weight_decay, phase.moe_lr_scale)
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=tc.lr,
            betas=(0.9, 0.98),
            eps=1e-9,
        )
        if old is not None:  # carry AdamW moments of parameters that keep training
            for p in params:
                if p in old.state:
                    self.optimizer.state[p] = old.state[p]
        self.lr_fn = lr_lambda(tc)
        self.state.phase = phase_idx
        if self.world > 1:
            moe = self.cfg.model.moe.num_experts > 0
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.model, device_ids=ids, find_unused_parameters=moe)
        else:
            self.ddp = self.model
        if self.main:
            log.info(
                "phase %d (trainable=%s): %.2fM of %.2fM parameters train",
                phase_idx,
                phase.trainable,
                n_train / 1e6,
                n_total / 1e6,
            )

    def _set_lr(self) -> float:
        lr = self.cfg.train.lr * self.lr_fn(self.state.step)
        set_lr(self.optimizer, lr)
        return lr

    # ---- checkpoints --------------------------------------------------------------------
    def _best_names(self, writing: str) -> set[str]:
        """Checkpoints `average_by: best` would average now: never pruned for being old."""
        if self.cfg.train.average_by != "best":
            return set()
        n = max(1, self.cfg.train.average_last)
        return best_checkpoints(self.exp / "checkpoints", self.state.ckpt_mer, writing, n)

    def save(self) -> Path | None:
        """Checkpoint (collective under DDP: every rank's RNG state is gathered to rank 0)."""
        rng = rng_state(self.device, self.aug_gen)
        others = gather_rank_rngs(rng, python_rng_state(), self.device)
        if not self.main:
            return None
        st = self.state
        state = {k: getattr(st, k) for k in TrainState.__dataclass_fields__}
        return save_checkpoint(
            self.exp / "checkpoints",
            st.step,
            self.model,
            self.optimizer,
            state,
            rng,
            keep=max(self.cfg.train.keep_checkpoints, self.cfg.train.average_last),
            protect=self._best_names(f"step-{st.step:08d}"),
            rank_rngs=others,
        )

    def resume(self, ck: Path) -> None:
        from safetensors.torch import load_file

        st = read_state(ck)
        st.pop("rng")
        saved_world = int(st.pop("world_size", 1))
        self.state = TrainState(**st)
        load_weights(self.model, ck / "model.safetensors")
        if self.main and not (self.exp / "cmvn.json").is_file():
            self._write_cmvn()  # the statistics the checkpoint carries
        self._build_optimizer(phase_at(self.cfg.train.phases, self.state.step)[0])
        load_optimizer_tensors(self.optimizer, self.model, load_file(str(ck / "optim.safetensors")))
        if saved_world == self.world:
            restore_rng(*read_rank_rng(ck, self.rank), self.device, self.aug_gen)
        else:
            self._reseed_for_new_world(ck, saved_world)
        if self.main:
            log.info("resumed from %s at step %d", ck, self.state.step)

    def _reseed_for_new_world(self, ck: Path, saved_world: int) -> None:
        """World size changed: the epoch position becomes the same number of consumed batches
        and each rank's RNG streams are re-seeded (`reseed_rank`); not bit-exact."""
        consumed = self.state.pos * saved_world
        self.state.pos = -(-consumed // self.world)  # ceil: never repeat a batch
        reseed_rank(self.cfg.train.seed, self.state.step, self.rank, self.device, self.aug_gen)
        if self.main:
            log.warning(
                "%s was written by %d process(es), this run has %d: model, optimizer, step "
                "and epoch restored; RNG streams re-seeded per rank and the epoch position "
                "rescaled (%d batches consumed), so this resume is not bit-exact",
                ck,
                saved_world,
                self.world,
                consumed,
            )

    # ---- evaluation ---------------------------------------------------------------------
    def evaluate(self, max_utts: int = 0, mode: str = "ctc_greedy") -> dict:
        """Dev score (ume.decode.score.score's dict); {} without a dev set."""
        if self.dev_store is None:
            return {}
        return dev_score(self.model, self.dev_store, self.tokenizer, max_utts, mode)

    # ---- main loop ----------------------------------------------------------------------
    def batches(self):
        """Yield (global batch number, index list) from the resume point, epoch after epoch."""
        tc = self.cfg.train
        while True:
            sorted_order = tc.sortagrad and self.state.epoch == 0
            epoch = self.sampler.epoch_batches(
                self.state.epoch, sorted_order, self.rank, self.world
            )
            if not epoch:  # the same on every rank: every rank raises, none waits for the others
                raise UmeError(
                    f"epoch {self.state.epoch} has no training batches for rank {self.rank} "
                    f"of {self.world}: {len(self.sampler)} batch(es) from {len(self.train_idx)} "
                    f"usable utterance(s) ({len(self.train_store.skipped)} skipped, see the "
                    "warnings), and every rank needs at least one. Add data, lower "
                    "train.max_frames / train.max_batch_size, or use fewer processes"
                )
            while self.state.pos < len(epoch):
                batch = epoch[self.state.pos]
                self.state.pos += 1  # before yielding: a checkpoint after this step resumes past it
                yield batch
            self.state.epoch += 1
            self.state.pos = 0

    def train_step(self, batch: list[int]) -> dict[str, float]:
        """One forward/backward on a batch (accumulating); returns float stats."""
        tc = self.cfg.train
        real = [self.train_idx[i] for i in batch]
        warm = self.state.step < tc.curriculum_steps
        self.model.chunk_training = not warm
        augment = None if warm else self.cfg.features
        feats, feat_lens = self.train_store.collate(real, augment, self.aug_gen)
        ys, ys_lens = collate_tokens([self.tokens[i] for i in batch])
        dev = self.device
        with autocast(dev, self.amp_dtype):
            out = self.ddp(feats.to(dev), feat_lens.to(dev), ys.to(dev), ys_lens.to(dev))
        loss = out["loss"] / tc.accum_grad
        # collective: if any rank's loss is not finite, every rank skips this backward (a rank
        # alone skipping it would leave the others waiting in DDP's gradient all-reduce)
        bad = ranks_where(not bool(torch.isfinite(loss)), dev)
        if bad:
            self._skip_step = True
            if self.main:
                log.warning(
                    "non-finite loss at step %d on rank(s) %s; step skipped on all ranks",
                    self.state.step,
                    bad,
                )
            return {}
        loss.backward()
        stats = {k: float(v.detach()) for k, v in out.items()}
        stats["frames"] = float(feat_lens.sum())
        return stats

    def run(self) -> dict:
        tc = self.cfg.train
        if self._resume_ck is not None:
            self.resume(self._resume_ck)
        else:
            self._build_optimizer(0)
        if self.state.step >= tc.max_steps:
            if self.main:
                log.info("already trained to step %d", self.state.step)
            return self.finish()
        if tc.eval_every and self.state.step == 0 and self.init_dir is not None:
            self._eval_point()  # the curve of a continued run starts at its initial model
        self.model.train()
        start_step = self.state.step
        bar = tqdm(
            total=tc.max_steps,
            initial=self.state.step,
            disable=not self.progress,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            mininterval=2,
        )
        clock = TrainClock()
        audio_s = 0.0
        micro = 0
        stop = False
        self._skip_step = False
        for batch in self.batches():
            phase_idx, _ = phase_at(tc.phases, self.state.step)
            if phase_idx != self.state.phase:
                self._build_optimizer(phase_idx)
                self.model.train()
            lr = self._set_lr()
            stats = self.train_step(batch)
            micro += 1
            if stats:
                audio_s += stats["frames"] / 100.0
            if micro % tc.accum_grad:
                continue
            gnorm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], tc.grad_clip
            )
            # gradients are all-reduced, so gnorm (and this decision) is the same on all ranks
            if self._skip_step or not torch.isfinite(gnorm):
                self.state.skipped_batches += 1
            else:
                self.optimizer.step()
            self._skip_step = False
            self.optimizer.zero_grad(set_to_none=True)
            self.state.step += 1
            wall_s, cpu_s = clock.lap()
            self.state.train_seconds += wall_s
            self.state.train_cpu_seconds += cpu_s
            log_now = self.state.step % tc.log_every == 0
            moe_stats = reduced_moe_stats(self.model, self.device) if log_now else {}
            if stats and self.main:
                bar.set_postfix(
                    loss=f"{stats['loss']:.2f}",
                    audio_x=f"{audio_s / max(1e-6, self.state.train_seconds):.0f}",
                    refresh=False,
                )
                if self.state.step % tc.log_every == 0:
                    if not self.progress:
                        log.info(
                            "step %d loss %.3f lr %.2e audio x%.0f",
                            self.state.step,
                            stats["loss"],
                            lr,
                            audio_s / max(1e-6, self.state.train_seconds),
                        )
                    log_train_scalars(
                        self.writer, stats, lr, float(gnorm), moe_stats, self.state.step
                    )
            bar.update(1)
            if tc.max_minutes > 0:  # collective: ranks' clocks differ, all must stop together
                stop = bool(
                    ranks_where(self.state.train_seconds >= tc.max_minutes * 60, self.device)
                )
            done = self.state.step >= tc.max_steps or stop
            if tc.eval_every and (self.state.step % tc.eval_every == 0 or done):
                self._eval_point()
                clock.restart()  # evaluation is not training
            if self.state.step % tc.checkpoint_every == 0 or done:
                self.save()
                clock.restart()
            if done:
                break
        bar.close()
        if self.main:
            log.info("trained %d steps in this run", self.state.step - start_step)
        return self.finish()

    def _eval_point(self) -> None:
        if self.main and self.dev_store is not None:
            res = self.evaluate(self.cfg.train.eval_max_utts)
            point = record_dev_point(
                self.model,
                self.writer,
                self.exp / "curve.jsonl",
                self.state.step,
                self.state.train_seconds,
                res["mer"],
                cpu_seconds=self.state.train_cpu_seconds,
            )
            self.state.curve.append(point)
            self.state.ckpt_mer[f"step-{self.state.step:08d}"] = res["mer"]
            log.info("step %d dev MER %.2f%%", self.state.step, res["mer"])
            self.model.train()
        if self.world > 1:
            dist.barrier()

    def finish(self) -> dict:
        """Average checkpoints into EXPDIR/model.safetensors and write train_info.json."""
        tc = self.cfg.train
        info = {}
        if self.main:
            n = max(1, tc.average_last)
            ckpts = self.exp / "checkpoints"
            chosen = checkpoints_to_average(ckpts, self.state.ckpt_mer, tc.average_by, n)
            if chosen:
                sd = average_checkpoints(chosen)
                atomic_save_tensors(sd, self.exp / MODEL_FILE)
                load_weights(self.model, self.exp / MODEL_FILE)
            self.model.eval()
            info = {
                "steps": self.state.step,
                "train_seconds": round(self.state.train_seconds, 1),
                "train_cpu_seconds": round(self.state.train_cpu_seconds, 1),
                "averaged": [c.name for c in chosen],
                "params_total": count_params(self.model),
                "skipped_utterances": len(self.train_store.skipped),
                "skipped_batches": self.state.skipped_batches,
                "curve": self.state.curve,
                "world_size": self.world,
                "threads": torch.get_num_threads(),
            }
            atomic_write_json(info, self.exp / "train_info.json")
            if self.train_store.skipped:
                (self.exp / "skipped.txt").write_text(
                    "\n".join(self.train_store.skipped) + "\n", encoding="utf-8"
                )
        if self.world > 1:
            dist.barrier()
        return info
