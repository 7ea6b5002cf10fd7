"""Planning the synthetic corpus: assign sentences, voices, TTS parameters and augmentation to
every utterance, deterministically from (seed, split, index), before anything is rendered.

Example:
    >>> plans, info = plan_corpus(PRESETS["tiny"], Path("/tmp/ume_tiny"), seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ume.data.augment import AugmentParams, sample_augment_params
from ume.data.synth_presets import SynthPreset
from ume.data.text import normalize_text, text_lang
from ume.data.text_sources import ZH_CHAR_VOCAB, Sentence, load_sentences, restrict_zh_vocab
from ume.data.tts import (
    ENGLISH_VOICES,
    ESPEAK_ZH_VOICES,
    HELDOUT_EN_VOICES,
    HELDOUT_ZH_VOICES,
    Voice,
    sample_params,
    voice_available,
)

logger = logging.getLogger(__name__)


_SPLIT_CODE = {"train": 0, "dev": 1, "test": 2}


@dataclass
class UttPlan:
    """Everything needed to render one utterance (picklable; no randomness left)."""

    uttid: str
    split: str
    index: int
    lang: str  # zh | en | mix
    text: str  # normalised transcript
    speaker: str
    heldout: bool
    segments: list[tuple[Voice, str, dict]]  # (voice, tts text, tts params)
    gap_s: float
    aug: AugmentParams
    babble: list[tuple[Voice, str, dict]] = field(default_factory=list)
    wav: str = ""
    seed: tuple[int, ...] = ()


def _lang_counts(n: int, preset: SynthPreset) -> dict[str, int]:
    n_mix = int(round(n * preset.p_mix))
    n_zh = int(round(n * preset.p_zh))
    n_zh = min(n_zh, n - n_mix)
    return {"zh": n_zh, "en": n - n_zh - n_mix, "mix": n_mix}


def _voice_cycle(pool: Sequence[Voice], count: int, rng: np.random.Generator) -> list[Voice]:
    """`count` voices as concatenated random permutations of `pool` (balanced, and every voice
    occurs once `count` >= len(pool))."""
    out: list[Voice] = []
    while len(out) < count:
        out.extend(pool[i] for i in rng.permutation(len(pool)))
    return out[:count]


def voice_pools(preset: SynthPreset) -> dict[str, list[Voice]]:
    """Available voices by role: ``zh``, ``en`` (seen) and ``zh_heldout``, ``en_heldout``."""
    pools = {
        "zh": list(ESPEAK_ZH_VOICES[: preset.n_zh_voices]),
        "en": list(ENGLISH_VOICES[: preset.n_en_voices]),
        "zh_heldout": list(HELDOUT_ZH_VOICES),
        "en_heldout": list(HELDOUT_EN_VOICES),
    }
    for role, voices in pools.items():
        ok = [v for v in voices if voice_available(v)]
        for v in voices:
            if v not in ok:
                logger.warning("voice %s (%s %s) not available: skipped", v.id, v.engine, v.name)
        if not ok:
            raise RuntimeError(
                f"no {role} voice available: install espeak-ng (and flite) with their voices"
            )
        pools[role] = ok
    return pools


def _en_phrase(sent: Sentence, rng: np.random.Generator) -> Sentence:
    """2-4 consecutive words of an English sentence."""
    words = [w.strip("'") for w in re.findall(r"[A-Za-z']+", sent.tts)]
    words = [w for w in words if w]
    k = int(rng.integers(2, 5))
    k = min(k, len(words))
    start = int(rng.integers(0, len(words) - k + 1))
    tts = " ".join(words[start : start + k])
    return Sentence(tts=tts, text=normalize_text(tts))


def sample_babble(
    aug: AugmentParams, voices: Sequence[Voice], texts: Sequence[Sentence], rng: np.random.Generator
) -> list[tuple[Voice, str, dict]]:
    """3-5 other talkers (voice, text, prosody) when `aug` asks for babble noise, else []."""
    babble = []
    if aug.noise == "babble":
        for _ in range(int(rng.integers(3, 6))):
            bv = voices[int(rng.integers(len(voices)))]
            bt = texts[int(rng.integers(len(texts)))]
            babble.append((bv, bt.tts, sample_params(bv, rng)))
    return babble


def make_plan(
    split: str,
    index: int,
    lang: str,
    text: str,
    heldout: bool,
    segments: list[tuple[Voice, str, dict]],
    gap_s: float,
    aug: AugmentParams,
    babble: list[tuple[Voice, str, dict]],
    out_dir: Path,
    seed: int,
    code: int,
) -> UttPlan:
    """One utterance's plan: its id (first voice, split, index), wav path (under
    ``wavs/test`` for every test-side split) and render seed. Raises AssertionError if the
    transcript's language is not the planned one (the text filters make that impossible)."""
    if text_lang(text) != lang:
        raise AssertionError(f"planned {lang} utterance has transcript {text!r}")
    speaker = segments[0][0].id
    uttid = f"{speaker}-{split}-{index:06d}"
    wav_split = "test" if split.startswith("test") else split
    return UttPlan(
        uttid=uttid,
        split=split,
        index=index,
        lang=lang,
        text=text,
        speaker=speaker,
        heldout=heldout,
        segments=segments,
        gap_s=gap_s,
        aug=aug,
        babble=babble,
        wav=str(out_dir / "wavs" / wav_split / f"{uttid}.wav"),
        seed=(seed, code, index, 1),
    )


def _cycled(items: list[Sentence], n: int) -> list[Sentence]:
    """`items` repeated in order up to length `n` (unchanged when already long enough)."""
    reps = -(-n // len(items))
    return (items * reps)[:n]


def plan_corpus(preset: SynthPreset, out_dir: Path, seed: int) -> tuple[list[UttPlan], dict]:
    """Assign sentences, voices and all random parameters to every utterance."""
    zh_all, en_all = load_sentences()
    zh_all = restrict_zh_vocab(zh_all, ZH_CHAR_VOCAB)
    pools = voice_pools(preset)
    rng = np.random.default_rng([seed, 1234])
    zh_order = [zh_all[i] for i in rng.permutation(len(zh_all))]
    en_order = [en_all[i] for i in rng.permutation(len(en_all))]
    babble_voices = pools["zh"] + pools["en"]

    need = {"zh": 0, "en": 0}
    train_need = {"zh": 0, "en": 0}
    layout: dict[str, list[tuple[str, bool]]] = {}
    for split in ("test", "dev", "train"):
        slots = []
        counts = _lang_counts(preset.split_size(split), preset)
        for lang, c in counts.items():
            slots += [(lang, False)] * c
        if split == "test":
            for lang, c in _lang_counts(preset.n_heldout, preset).items():
                slots += [(lang, True)] * c
        layout[split] = slots
        for lang, _held in slots:
            need["zh"] += lang in ("zh", "mix")
            need["en"] += lang in ("en", "mix")
            if split == "train":
                train_need["zh"] += lang in ("zh", "mix")
                train_need["en"] += lang in ("en", "mix")
    if preset.train_text_reuse:  # train may repeat, but needs at least one sentence of each
        need = {k: v - train_need[k] + 1 for k, v in need.items()}
    if need["zh"] > len(zh_order) or need["en"] > len(en_order):
        raise ValueError(
            f"preset {preset.name!r} needs {need['zh']} zh / {need['en']} en sentences, "
            f"only {len(zh_order)} / {len(en_order)} available"
        )

    plans: list[UttPlan] = []
    zi = ei = 0
    for split in ("test", "dev", "train"):
        code = _SPLIT_CODE[split]
        srng = np.random.default_rng([seed, code, 777])
        slots = [layout[split][i] for i in srng.permutation(len(layout[split]))]
        n_zh_s = sum(lang in ("zh", "mix") for lang, _ in slots)
        n_en_s = sum(lang in ("en", "mix") for lang, _ in slots)
        zh_s, en_s = zh_order[zi : zi + n_zh_s], en_order[ei : ei + n_en_s]
        if split == "train" and preset.train_text_reuse:
            zh_s, en_s = _cycled(zh_s, n_zh_s), _cycled(en_s, n_en_s)
        zi, ei = zi + n_zh_s, ei + n_en_s
        cycles = {}
        for role in ("zh", "en", "zh_heldout", "en_heldout"):
            lang = role.split("_")[0]
            held = role.endswith("heldout")
            count = sum((lg == lang or lg == "mix") and h == held for lg, h in slots)
            cycles[role] = iter(_voice_cycle(pools[role], count, srng))
        zh_it, en_it = iter(zh_s), iter(en_s)
        split_texts = zh_s + en_s
        for index, (lang, held) in enumerate(slots):
            urng = np.random.default_rng([seed, code, index])
            suffix = "_heldout" if held else ""
            segs: list[tuple[Voice, str, dict]] = []
            if lang in ("zh", "mix"):
                v = next(cycles["zh" + suffix])
                s = next(zh_it)
                segs.append((v, s.tts, sample_params(v, urng)))
                text = s.text
            if lang in ("en", "mix"):
                v = next(cycles["en" + suffix])
                s = next(en_it)
                if lang == "mix":
                    s = _en_phrase(s, urng)
                    text = normalize_text(text + " " + s.text)
                else:
                    text = s.text
                segs.append((v, s.tts, sample_params(v, urng)))
            gap = round(float(urng.uniform(0.05, 0.25)), 3)
            aug = sample_augment_params(urng)
            babble = sample_babble(aug, babble_voices, split_texts, urng)
            plans.append(
                make_plan(
                    split, index, lang, text, held, segs, gap, aug, babble, out_dir, seed, code
                )
            )
    info = {
        "text_pool": {"zh": len(zh_all), "en": len(en_all)},
        "voices": {role: [v.id for v in vs] for role, vs in pools.items()},
    }
    return plans, info
