"""Synthetic corpus presets: the size and composition of each corpus `ume data synth` builds,
and the split names every preset uses.

Example:
    >>> PRESETS["tiny"].split_size("train"), SPLITS, HELDOUT_SPLIT
    (40, ('train', 'dev', 'test'), 'test_heldout')
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

logger = logging.getLogger(__name__)


SPLITS = ("train", "dev", "test")
HELDOUT_SPLIT = "test_heldout"
# Written by presets with n_heldout_synth / n_heldout_text > 0 (the ``pool`` text source).
HELDOUT_SYNTH_SPLIT = "test_heldout_synth"
HELDOUT_TEXT_SPLIT = "test_heldout_text"
EXTRA_TEST_SPLITS = (HELDOUT_SYNTH_SPLIT, HELDOUT_TEXT_SPLIT)


@dataclass(frozen=True)
class SynthPreset:
    """Size and composition of a synthetic corpus.

    Attributes:
        name: preset name.
        n_train / n_dev / n_test: utterances per split (seen voices).
        n_heldout: extra test utterances spoken by held-out voices (also ``test_heldout/``).
        p_zh / p_en / p_mix: language proportions (mix = code-switched zh + en phrase).
        n_zh_voices / n_en_voices: size of the seen voice pools (``None``: all of them); small
            presets use fewer voices so that every voice occurs in every split.
        train_text_reuse: when the text pool runs out, the train split cycles through its own
            sentences again (each repeat with another voice and augmentation); dev and test
            sentences are never reused, and stay those of a preset with the same split sizes.
        text_source: ``fortunes`` (the fortune texts, 1,200-character Mandarin) or ``pool``
            (:mod:`ume.data.text_pool`: Debian documentation + fortunes, held-out text domain).
        text_domains: the pool's domains to read (``pool`` only; ``()`` = all of them).
        voice_set: ``base`` (34 voices) or ``wide`` (every espeak-ng accent x variant, flite;
            festival held out) with speed perturbation and telephone/codec/far-field channels.
        n_heldout_synth / n_heldout_text: test utterances spoken by the held-out synthesiser
            (festival, English) / written in the held-out text domain (seen voices), written
            as ``test_heldout_synth/`` and ``test_heldout_text/`` (``pool`` presets only).
        zh_min_count: ``pool``: Mandarin characters seen fewer times than this in the train
            split get sentences that hold them repeated (other voice and augmentation each time)
            until they reach it, as far as the train budget allows.
    """

    name: str
    n_train: int
    n_dev: int
    n_test: int
    n_heldout: int
    p_zh: float = 0.45
    p_en: float = 0.45
    p_mix: float = 0.10
    n_zh_voices: int | None = None
    n_en_voices: int | None = None
    train_text_reuse: bool = False
    text_source: str = "fortunes"
    text_domains: tuple[str, ...] = ()
    voice_set: str = "base"
    n_heldout_synth: int = 0
    n_heldout_text: int = 0
    zh_min_count: int = 0
    description: str = ""

    def split_size(self, split: str) -> int:
        return {"train": self.n_train, "dev": self.n_dev, "test": self.n_test}[split]


_XL = SynthPreset(
    "xl",
    120000,
    1000,
    1000,
    500,
    train_text_reuse=True,
    text_source="pool",
    voice_set="wide",
    n_heldout_synth=400,
    n_heldout_text=600,
    zh_min_count=20,
    description=">= 100 h train audio, four test splits",
)
PRESETS: dict[str, SynthPreset] = {
    "tiny": SynthPreset(
        "tiny", 40, 10, 10, 4, n_zh_voices=2, n_en_voices=3, description="unit tests, seconds"
    ),
    "quick": SynthPreset("quick", 1120, 150, 150, 60, description="~1 h train audio"),
    "paper": SynthPreset("paper", 7000, 400, 400, 120, description=">= 6 h train audio"),
    # Same dev/test/held-out utterances as "paper" (same sizes and seed), ~2.9x the train
    # audio: every remaining English sentence is new, Mandarin ones repeat ~1.5x in other voices
    # (the 1,200-character pool holds 7,834 sentences).
    "large": SynthPreset(
        "large", 20000, 400, 400, 120, train_text_reuse=True, description="~17.5 h train audio"
    ),
    # The scale regime: modern written text from Debian documentation (+ fortunes), the wide
    # voice set with channels, and four test splits (seen voices, held-out voices, held-out
    # synthesiser, held-out text domain). ~4.0 s per utterance -> ~133 h of train audio.
    "xl": _XL,
    # A slice of the same regime for a one-session training run on two CPU cores: the same
    # dev/test/held-out utterances as "xl" (same sizes and seed), 16,000 train utterances.
    "xl_16k": replace(
        _XL, name="xl_16k", n_train=16000, description="~18 h train audio of the xl regime"
    ),
    "xl_tiny": replace(
        _XL,
        name="xl_tiny",
        n_train=40,
        n_dev=10,
        n_test=10,
        n_heldout=6,
        text_domains=("fortunes", "handbook", "reference"),
        n_heldout_synth=4,
        n_heldout_text=6,
        zh_min_count=2,
        description="unit tests of the pool/wide regime, seconds",
    ),
}
