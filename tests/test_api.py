"""The public Python API (ume.upcycle / aux_loss / freeze / save / load) on plain PyTorch
models and on tiny random Hugging Face speech encoders built from configs (no download)."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ume
from ume.model.ffn import FeedForward
from ume.model.moe import MoEFeedForward
from ume.model.moe_split import MoEEntry, MoEExit
from ume.upcycle.any_model import UpcycleAnyError

HAS_HF = importlib.util.find_spec("transformers") is not None
needs_hf = pytest.mark.skipif(
    not HAS_HF, reason="transformers is not installed (pip install 'ume[hf]')"
)


class SwiGLU(nn.Module):
    """LLaMA-style MLP with a functional activation (no activation module)."""

    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d, h, bias=False)
        self.w3 = nn.Linear(d, h, bias=False)
        self.w2 = nn.Linear(h, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Whisper-style: the FFN's projections and activation are attributes of the layer."""

    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1, self.act, self.fc2 = nn.Linear(d, h), nn.GELU(), nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.dropout(self.act(self.fc1(self.norm(x))), 0.1, self.training))


class Toy(nn.Module):
    def __init__(self, d: int = 16, h: int = 48) -> None:
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.seq = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Dropout(0.1), nn.Linear(h, d))
        self.glu = SwiGLU(d, h)
        self.block = Block(d, h)
        self.ume_ffn = FeedForward(d, h, "swish")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        x = x + self.seq(x)
        x = x + self.glu(x)
        x = self.block(x)
        return x + self.ume_ffn(x)


def _out(model: nn.Module, x: object) -> torch.Tensor:
    with torch.no_grad():
        y = model(**x) if isinstance(x, dict) else model(x)
    return y if isinstance(y, torch.Tensor) else y.last_hidden_state


def _train_steps(model: nn.Module, x: object, steps: int = 3) -> list[torch.Tensor]:
    """A few AdamW steps on a toy task with the aux losses; returns the routers' gradients
    from the task loss alone at the first step."""
    model.train()
    ume.freeze(model, "moe")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    router_grads = []
    for step in range(steps):
        y = model(**x) if isinstance(x, dict) else model(x)
        y = y if isinstance(y, torch.Tensor) else y.last_hidden_state
        task = y.pow(2).mean()
        if step == 0:
            rw = [
                m.router.weight if isinstance(m, MoEFeedForward) else m.router.weight
                for m in model.modules()
                if isinstance(m, MoEFeedForward)
                or (isinstance(m, MoEEntry) and "router" in m._modules)
            ]
            router_grads = torch.autograd.grad(task, rw, retain_graph=True)
        loss = task + ume.aux_loss(model)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return list(router_grads)


def test_import_ume_is_light() -> None:
    code = "import sys, ume; assert 'torch' not in sys.modules; print(sorted(ume.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "upcycle" in out.stdout and "aux_loss" in out.stdout


def test_plain_model_upcycle_train_save_load(tmp_path) -> None:
    torch.manual_seed(0)
    model, x = Toy().eval(), torch.randn(3, 7, 16)
    dense = copy.deepcopy(model)
    ref = _out(model, x)
    ume.upcycle(model, num_experts=4, top_k=2, verify_input=x)
    rep = model.ume_upcycle_report
    assert rep["ffns"] == ["seq", "glu", "block", "ume_ffn"]
    assert rep["max_abs_diff"] <= 1e-5
    assert (_out(model, x) - ref).abs().max() <= 1e-5
    assert isinstance(model.seq[0], MoEEntry) and isinstance(model.seq[3], MoEExit)
    assert isinstance(model.block.fc1, MoEEntry) and isinstance(model.block.act, nn.GELU)
    assert isinstance(model.glu.w3, MoEEntry) and "router" not in model.glu.w3._modules
    assert isinstance(model.ume_ffn, MoEFeedForward)  # ume's own layer, fast dispatch
    assert model.seq[0].weight.shape == (4, 16, 48)

    ume.upcycle(copy.deepcopy(dense), 4, 2, verify_input=x)  # a fresh copy upcycles too
    n_train, n_total = ume.freeze(model, "moe")
    assert 0 < n_train < n_total
    assert not model.inp.weight.requires_grad and not model.block.norm.weight.requires_grad
    n_router, _ = ume.freeze(model, "router")
    assert n_router == 4 * 16 * 4  # four routers of (E, D)
    with pytest.raises(ValueError, match="trainable"):
        ume.freeze(model, "experts_only")

    _train_steps(model, x)  # exact copies train too (dropout masks differ per expert slot)
    # perturbed experts: the task loss itself gives every router a gradient
    ume.upcycle(dense, 4, 2, verify_input=x, perturb=0.05)
    grads = _train_steps(dense, x)
    assert all(float(g.abs().max()) > 0 for g in grads)
    with torch.no_grad():
        dense.train()
        dense(x)
    assert float(ume.aux_loss(dense)) > 0  # balance + z-loss recorded in training
    dense.eval()
    dense(x)
    assert float(ume.aux_loss(dense)) == 0.0

    ume.save(dense, tmp_path / "moe")
    assert (tmp_path / "moe" / "moe_layout.json").is_file()
    loaded = ume.load(tmp_path / "moe", Toy())
    assert torch.equal(_out(loaded, x), _out(dense.eval(), x))
    with pytest.raises(UpcycleAnyError, match="lacks|does not hold"):
        ume.load(tmp_path / "moe", nn.Sequential(nn.Linear(16, 16)))
    with pytest.raises(UpcycleAnyError, match="original architecture"):
        ume.load(tmp_path / "moe")


def test_errors_name_the_module() -> None:
    class Rolled(nn.Module):  # not elementwise between the projections
        def __init__(self) -> None:
            super().__init__()
            self.a, self.act, self.b = nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.a(x))
            return self.b(h + 0.1 * h.sum(-1, keepdim=True))  # sums over k·H columns

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ok = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))
            self.norm = nn.LayerNorm(8)
            self.fc1, self.act, self.fc2 = nn.Linear(8, 24), nn.GELU(), nn.Linear(24, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc1(self.norm(self.ok(x)))
            return self.fc2(self.act(h) + 0.1 * h.sum(-1, keepdim=True))  # mixes units

    x = torch.randn(2, 5, 8)
    with pytest.raises(UpcycleAnyError, match="'fc'"):
        ume.upcycle(nn.Sequential(nn.Linear(8, 8)), 4, 2, ffn=["fc"])
    with pytest.raises(UpcycleAnyError, match="no feed-forward structure"):
        ume.upcycle(nn.Sequential(nn.Linear(8, 8)), 4, 2, ffn=["0"])
    with pytest.raises(UpcycleAnyError, match="no feed-forward block"):
        ume.upcycle(nn.Sequential(nn.Linear(8, 8)), 4, 2)
    with pytest.raises(UpcycleAnyError, match="top_k"):
        ume.upcycle(Wrap(), 2, 3)
    with pytest.raises(UpcycleAnyError, match="FFN '0' .*elementwise"):
        ume.upcycle(nn.Sequential(Rolled()), 4, 2, verify_input=x, moe=_normal_router())
    w = Wrap()
    with pytest.raises(UpcycleAnyError, match=r"first FFN that differs is ''.*by"):
        ume.upcycle(w, 4, 2, verify_input=x, moe=_normal_router())
    assert type(w.ok[0]) is nn.Linear and type(w.fc1) is nn.Linear  # left as it was
    m = Wrap()
    ume.upcycle(m, 4, 2, ffn=["ok"], verify_input=x)  # explicit list: only that one
    assert m.ume_upcycle_report["ffns"] == ["ok"] and isinstance(m.fc1, nn.Linear)
    with pytest.raises(UpcycleAnyError, match="already an MoE"):
        ume.upcycle(m, 4, 2)
    with pytest.raises(UpcycleAnyError, match="no MoE layers"):
        ume.aux_loss(nn.Linear(2, 2))


def _normal_router():
    from ume.config import MoEConfig

    return MoEConfig(router_init="normal", router_init_std=1.0)


def test_varied_routing_still_preserves_function() -> None:
    """With a random router (unequal gates, tokens spread over experts) copies still agree."""
    torch.manual_seed(1)
    model, x = Toy().eval(), torch.randn(4, 9, 16)
    ume.upcycle(model, 8, 2, verify_input=x, moe=_normal_router())
    assert model.ume_upcycle_report["max_abs_diff"] <= 1e-5
    load = model.seq[0].router.last_load
    assert int((load > 0).sum()) >= 4  # routing really is varied


# ---- Hugging Face speech encoders (tiny random configs, no download) ------------------------
_W2V = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16),
    conv_stride=(5, 2),
    conv_kernel=(10, 3),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    hidden_dropout=0.0,
    activation_dropout=0.0,
    layerdrop=0.0,
    mask_time_prob=0.0,
)


def _hf(name: str) -> tuple[nn.Module, torch.Tensor]:
    import transformers as tf

    torch.manual_seed(0)
    if name == "whisper":
        cfg = tf.WhisperConfig(
            d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16,
            max_source_positions=8, max_target_positions=16, vocab_size=50, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        )  # fmt: skip
        return tf.WhisperModel(cfg).encoder, torch.randn(2, 16, 16)  # (B, mels, 2·positions)
    if name == "wav2vec2":
        return tf.Wav2Vec2Model(tf.Wav2Vec2Config(**_W2V)), torch.randn(2, 800)
    if name == "hubert":
        return tf.HubertModel(tf.HubertConfig(**_W2V)), torch.randn(2, 800)
    cfg = tf.Wav2Vec2ConformerConfig(**_W2V, position_embeddings_type="relative")
    return tf.Wav2Vec2ConformerModel(cfg), torch.randn(2, 800)


@needs_hf
@pytest.mark.parametrize(
    "name,ffns",
    [
        ("whisper", ["layers.0", "layers.1"]),  # fc1/fc2 inline in the layer
        ("wav2vec2", ["encoder.layers.0.feed_forward", "encoder.layers.1.feed_forward"]),
        ("hubert", ["encoder.layers.0.feed_forward", "encoder.layers.1.feed_forward"]),
        ("conformer", [f"encoder.layers.{i}.ffn{j}" for i in (0, 1) for j in (1, 2)]),
    ],
)
def test_hf_encoder(name: str, ffns: list[str], tmp_path) -> None:
    model, x = _hf(name)
    model.eval()
    ref = _out(model, x)
    ume.upcycle(model, num_experts=4, top_k=2, ffn="auto", verify_input=x, moe=_normal_router())
    rep = model.ume_upcycle_report
    assert rep["ffns"] == ffns
    assert rep["max_abs_diff"] <= 1e-5, rep
    assert (_out(model, x) - ref).abs().max() <= 1e-5
    ume.upcycle(_hf(name)[0].eval(), 4, 2, verify_input=x)  # default zero router too
    # break the copies' symmetry, then train: the task gradient reaches every router
    from ume.upcycle.any_model import perturb_experts

    perturb_experts(model, 0.05)
    grads = _train_steps(model, x, steps=2)
    assert len(grads) == len(ffns) and all(float(g.abs().max()) > 0 for g in grads)
    model.eval()
    ume.save(model, tmp_path / name)
    fresh, _ = _hf(name)
    loaded = ume.load(tmp_path / name, fresh)
    assert torch.equal(_out(loaded, x), _out(model, x))


def test_valid_frames_keeps_padding_out_of_the_balance_statistics() -> None:
    """A padded batch: inside ume.valid_frames the outputs are unchanged, and the balance loss,
    z-loss and load equal those of the valid tokens alone (padding no longer balanced)."""
    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(16, 48), nn.GELU(), nn.Linear(48, 16))
    model = nn.Sequential(ffn)
    x = torch.randn(2, 6, 16)
    ume.upcycle(model, num_experts=4, top_k=2, verify_input=x, perturb=0.05)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 2:] = False
    x[1, 2:] = 3.0  # 8 padding frames of one value: all routed to the same two experts
    router = ume.api.routers(model)[0]
    with torch.no_grad():
        router.weight.normal_()  # a router that separates tokens (std 1, not 0.02)
    model.train()

    def stats() -> tuple[torch.Tensor, torch.Tensor]:
        return ume.aux_loss(model).detach(), router.last_load.clone()

    out_all = model(x)
    loss_all, load_all = stats()
    with ume.valid_frames(model, valid):
        out_masked = model(x)
        loss_masked, load_masked = stats()
    assert torch.equal(out_masked, out_all)  # function unchanged, padding included
    model(x[valid].unsqueeze(0))  # the 4 valid tokens alone
    loss_ref, load_ref = stats()
    assert torch.allclose(loss_masked, loss_ref) and torch.allclose(load_masked, load_ref)
    assert not torch.allclose(load_all, load_ref)  # without the mask, padding counted
    assert not torch.allclose(loss_all, loss_ref)
    assert router.valid is None  # the mask does not outlive the block

    with pytest.raises(ValueError, match="valid_frames.*routes 12 tokens"):
        with ume.valid_frames(model, valid[:, :5]):
            model(x)
    with pytest.raises(TypeError, match="bool"):
        with ume.valid_frames(model, valid.float()):
            pass
    with pytest.raises(UpcycleAnyError, match="no split MoE"):
        with ume.valid_frames(nn.Linear(2, 2), valid):
            pass


def _snapshot(model: nn.Module) -> tuple[list[str], dict[str, torch.Tensor]]:
    kinds = [f"{n}:{type(m).__name__}" for n, m in model.named_modules()]
    return kinds, {k: v.clone() for k, v in model.state_dict().items()}


def test_load_leaves_a_mismatching_model_as_it_was(tmp_path) -> None:
    torch.manual_seed(0)
    model, x = Toy().eval(), torch.randn(2, 5, 16)
    ume.upcycle(model, 4, 2, verify_input=x)
    ume.save(model, tmp_path / "moe")
    from safetensors.torch import load_file, save_file

    sd = load_file(tmp_path / "moe" / "model.safetensors")  # one weight renamed in a copy
    sd["renamed.weight"] = sd.pop("inp.weight")
    (tmp_path / "bad").mkdir()
    save_file(sd, tmp_path / "bad" / "model.safetensors")
    layout = (tmp_path / "moe" / "moe_layout.json").read_text()
    (tmp_path / "bad" / "moe_layout.json").write_text(layout)
    # another FFN size (the shapes differ), and the right architecture with a renamed weight
    for other, src in ((Toy(h=64), tmp_path / "moe"), (Toy(), tmp_path / "bad")):
        kinds, sd_before = _snapshot(other)
        with pytest.raises(UpcycleAnyError, match="left as it was"):
            ume.load(src, other)
        kinds_after, sd_after = _snapshot(other)
        assert kinds_after == kinds
        assert sd_after.keys() == sd_before.keys()
        assert all(torch.equal(sd_after[k], sd_before[k]) for k in sd_before)
        assert not hasattr(other, "ume_moe_layout")
        assert not any(isinstance(m, MoEEntry | MoEFeedForward) for m in other.modules())
    good = ume.load(tmp_path / "moe", Toy())  # and a matching model still loads
    assert torch.equal(_out(good, x), _out(model, x))


def test_apply_layout_is_all_or_nothing() -> None:
    from ume.upcycle.any_model import apply_layout

    model = Toy()
    ume.upcycle(model, 4, 2)
    layout = model.ume_moe_layout
    other = Toy()
    del other.ume_ffn  # the last FFN of the layout is missing: nothing may change
    kinds, _ = _snapshot(other)
    with pytest.raises(UpcycleAnyError, match="lacks"):
        apply_layout(other, layout)
    assert _snapshot(other)[0] == kinds
