"""Synthetic corpus presets: the size and composition of each corpus `ume data synth` builds,
and the split names every preset uses.

Example:
    >>> PRESETS["tiny"].split_size("train"), SPLITS, HELDOUT_SPLIT
    (40, ('train', 'dev', 'test'), 'test_heldout')
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


SPLITS = ("train", "dev", "test")
HELDOUT_SPLIT = "test_heldout"


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
    description: str = ""

    def split_size(self, split: str) -> int:
        return {"train": self.n_train, "dev": self.n_dev, "test": self.n_test}[split]


PRESETS: dict[str, SynthPreset] = {
    "tiny": SynthPreset(
        "tiny", 40, 10, 10, 4, n_zh_voices=2, n_en_voices=3, description="unit tests, seconds"
    ),
    "quick": SynthPreset("quick", 1120, 150, 150, 60, description="~1 h train audio"),
    "paper": SynthPreset("paper", 7000, 400, 400, 120, description=">= 6 h train audio"),
    # Same dev/test/held-out utterances as "paper" (same sizes and seed), ~2.9x the train
    # audio: every remaining English sentence is new, Mandarin ones repeat ~1.5x in other voices
    # (the 1,200-character pool holds 7,834 sentences). See docs/RESULTS.md, "large" preset.
    "large": SynthPreset(
        "large", 20000, 400, 400, 120, train_text_reuse=True, description="~17.5 h train audio"
    ),
}
