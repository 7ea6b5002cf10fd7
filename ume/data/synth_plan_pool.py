"""Planning a ``pool`` corpus (the ``xl`` presets): sentences from the large text pool
(:mod:`ume.data.text_pool`), the wide voice set, channels, and four test splits.

Splits and what each measures:

* ``test``               seen voices, new sentences of the training domains;
* ``test_heldout``       voices (espeak-ng variants, flite ``slt``) no train/dev utterance uses;
* ``test_heldout_synth`` a synthesiser no train/dev utterance uses (festival, English);
* ``test_heldout_text``  seen voices reading the held-out text domain (the Debian Reference).

Everything is drawn from ``(seed, split, index)``; test-side splits are planned before train and
never depend on the train size, so presets that differ only in ``n_train`` share them exactly.

Example:
    >>> plans, info = plan_pool_corpus(PRESETS["xl_tiny"], Path("/tmp/x"), 0)  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from ume.atomic import atomic_write_bytes
from ume.data.augment import sample_wide_augment_params
from ume.data.synth_plan import (
    UttPlan,
    _en_phrase,
    _lang_counts,
    _voice_cycle,
    make_plan,
    sample_babble,
)
from ume.data.synth_presets import HELDOUT_SYNTH_SPLIT, HELDOUT_TEXT_SPLIT, SynthPreset
from ume.data.text import is_cjk, normalize_text, split_units, text_lang
from ume.data.text_pool import DOMAINS, HELDOUT_DOMAIN, TextPool, load_text_pool
from ume.data.text_sources import Sentence
from ume.data.tts import (
    FESTIVAL_VOICES,
    WIDE_EN_VOICES,
    WIDE_HELDOUT_EN_VOICES,
    WIDE_HELDOUT_ZH_VOICES,
    WIDE_ZH_VOICES,
    Voice,
    sample_params,
    voice_available,
)
from ume.errors import UmeError

logger = logging.getLogger(__name__)

POOL_CACHE_VERSION = 2  # 2: licence texts left out of the pool
# Mandarin characters with fewer occurrences than this in the training domains are left out of
# the unit inventory (their sentences are dropped): below it, no train budget can reach
# zh_min_count without repeating one sentence many times.
ZH_MIN_POOL_COUNT = 4
_SPLIT_CODE = {"train": 0, "dev": 1, "test": 2, HELDOUT_SYNTH_SPLIT: 3, HELDOUT_TEXT_SPLIT: 4}


def cached_text_pool(domains: tuple[str, ...], cache_dir: Path) -> TextPool:
    """:func:`load_text_pool`, cached as ``cache_dir/text_pool.json.gz`` (reading the man
    pages takes minutes; a resumed build reads the cache instead)."""
    path = cache_dir / "text_pool.json.gz"
    key = {"version": POOL_CACHE_VERSION, "domains": list(domains)}
    if path.is_file():
        try:
            data = json.loads(gzip.decompress(path.read_bytes()))
            if data.get("key") == key:
                return TextPool(
                    {
                        tuple(k.split("/")): [Sentence(*s) for s in v]
                        for k, v in data["pool"].items()
                    }
                )
        except (OSError, ValueError, EOFError, KeyError, TypeError) as e:
            logger.warning("ignoring unreadable text pool cache %s: %s", path, e)
    pool = load_text_pool(domains)
    blob = {
        "key": key,
        "pool": {f"{k[0]}/{k[1]}": [[s.tts, s.text] for s in v] for k, v in pool.by_key.items()},
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, gzip.compress(json.dumps(blob, ensure_ascii=False).encode()))
    return pool


def _zh_vocab(train_zh: list[Sentence]) -> set[str]:
    counts = Counter(ch for s in train_zh for ch in s.text if is_cjk(ch))
    return {ch for ch, c in counts.items() if c >= ZH_MIN_POOL_COUNT}


def _in_vocab(s: Sentence, vocab: set[str]) -> bool:
    return all(ch in vocab for ch in s.text if is_cjk(ch))


def _cover(sents: list[Sentence], n: int, min_count: int, rng: np.random.Generator) -> list:
    """`n` train sentences: every sentence once (in order) while they last, then repeats chosen
    so that each Mandarin character reaches `min_count` occurrences, then plain cycling."""
    out = list(sents[:n])
    if len(out) >= n or not sents:
        return out
    counts = Counter(ch for s in out for ch in s.text if is_cjk(ch))
    by_char: dict[str, list[int]] = {}
    for i, s in enumerate(sents):
        for ch in set(s.text):
            if is_cjk(ch):
                by_char.setdefault(ch, []).append(i)
    for ch in sorted(by_char, key=lambda c: (counts[c], c)):
        idx = by_char[ch]
        j = 0
        while counts[ch] < min_count and len(out) < n:
            s = sents[idx[j % len(idx)]]
            out.append(s)
            counts.update(c for c in s.text if is_cjk(c))
            j += 1
    order = rng.permutation(len(sents))
    k = 0
    while len(out) < n:
        out.append(sents[order[k % len(order)]])
        k += 1
    return out


def _segments_for(s: Sentence, zh_v: Voice, en_v: Voice, rng) -> list[tuple[Voice, str, dict]]:
    """A code-switched sentence as alternating Mandarin / English TTS segments."""
    segs: list[tuple[Voice, str, dict]] = []
    cur_lang, buf = None, []
    for u in split_units(s.text):
        lang = "zh" if len(u) == 1 and is_cjk(u) else "en"
        if lang != cur_lang and buf:
            segs.append((cur_lang, buf))
            buf = []
        cur_lang = lang
        buf.append(u)
    if buf:
        segs.append((cur_lang, buf))
    out = []
    for lang, units in segs:
        v = zh_v if lang == "zh" else en_v
        text = "".join(units) if lang == "zh" else " ".join(u.lower() for u in units)
        out.append((v, text, sample_params(v, rng)))
    return out


def _available(voices: tuple[Voice, ...], role: str) -> list[Voice]:
    ok = [v for v in voices if voice_available(v)]
    if len(ok) < len(voices):
        logger.warning("%d %s voices not available: skipped", len(voices) - len(ok), role)
    if not ok:
        raise RuntimeError(
            f"no {role} voice available: install espeak-ng, flite and festival "
            "(bash scripts/setup.sh does)"
        )
    return ok


def plan_pool_corpus(preset: SynthPreset, out_dir: Path, seed: int) -> tuple[list[UttPlan], dict]:
    """Assign sentences, voices, channels and every random parameter to every utterance."""
    domains = preset.text_domains or DOMAINS
    pool = cached_text_pool(tuple(domains), out_dir)
    train_doms = [d for d in domains if d != HELDOUT_DOMAIN]
    zh_train_all = [s for d in train_doms for s in pool.sentences("zh", d)]
    vocab = _zh_vocab(zh_train_all)
    rng = np.random.default_rng([seed, 4321])

    def shuffled(items: list[Sentence]) -> list[Sentence]:
        return [items[i] for i in rng.permutation(len(items))]

    def is_mix(s: Sentence) -> bool:
        return text_lang(s.text) == "mix"

    zh_ok = [s for s in zh_train_all if _in_vocab(s, vocab)]
    src = {
        "zh": shuffled([s for s in zh_ok if not is_mix(s)]),
        "mix": shuffled([s for s in zh_ok if is_mix(s)]),
        "en": shuffled([s for d in train_doms for s in pool.sentences("en", d)]),
    }
    held_zh = [s for s in pool.sentences("zh", HELDOUT_DOMAIN) if _in_vocab(s, vocab)]
    held_src = {
        "zh": shuffled([s for s in held_zh if not is_mix(s)]),
        "mix": shuffled([s for s in held_zh if is_mix(s)]),
        "en": shuffled(pool.sentences("en", HELDOUT_DOMAIN)),
    }
    pools = {
        "zh": _available(WIDE_ZH_VOICES, "zh"),
        "en": _available(WIDE_EN_VOICES, "en"),
        "zh_heldout": _available(WIDE_HELDOUT_ZH_VOICES, "held-out zh"),
        "en_heldout": _available(WIDE_HELDOUT_EN_VOICES, "held-out en"),
        "en_synth": _available(FESTIVAL_VOICES, "festival"),
    }
    babble_voices = pools["zh"] + pools["en"]

    # test side, (split, kind) -> language slots; kind: seen | heldout (voices) | synth | text
    test_side = [
        ("test", "seen", _lang_counts(preset.n_test, preset)),
        ("test", "heldout", _lang_counts(preset.n_heldout, preset)),
        (HELDOUT_SYNTH_SPLIT, "synth", {"en": preset.n_heldout_synth}),
        (HELDOUT_TEXT_SPLIT, "text", _lang_counts(preset.n_heldout_text, preset)),
        ("dev", "seen", _lang_counts(preset.n_dev, preset)),
    ]
    cursor = {"zh": 0, "mix": 0, "en": 0, "held_zh": 0, "held_mix": 0, "held_en": 0}

    def take(lang: str, n: int, held: bool) -> list[Sentence]:
        items = (held_src if held else src)[lang]
        key = ("held_" if held else "") + lang
        got = items[cursor[key] : cursor[key] + n]
        cursor[key] += len(got)
        return got

    plans: list[UttPlan] = []
    split_slots: dict[str, list] = {}
    for split, kind, langs in test_side:
        for lang, n in langs.items():
            got = take(lang, n, kind == "text")
            if lang == "mix" and len(got) < n:  # too few real code-switched sentences
                got += [None] * (n - len(got))
            if len(got) < n:
                raise UmeError(
                    f"preset {preset.name!r}: {split}/{kind} needs {n} {lang} sentences, the "
                    f"text pool has {len(got)} left"
                )
            split_slots.setdefault(split, []).extend((lang, kind, s) for s in got)
    # train last, from what the test side left
    for lang, n in _lang_counts(preset.n_train, preset).items():
        rest = src[lang][cursor[lang] :]
        if lang != "mix" and len(rest) < n and not preset.train_text_reuse:
            raise UmeError(
                f"preset {preset.name!r} needs {n} {lang} train sentences, the text pool has "
                f"{len(rest)} left: set train_text_reuse or make n_train smaller"
            )
        got = _cover(rest, n, preset.zh_min_count if lang != "en" else 0, rng)
        if lang == "mix" and len(got) < n:
            got += [None] * (n - len(got))
        split_slots.setdefault("train", []).extend((lang, "seen", s) for s in got)

    for split, slots in split_slots.items():
        code = _SPLIT_CODE[split]
        srng = np.random.default_rng([seed, code, 777])
        slots = [slots[i] for i in srng.permutation(len(slots))]
        cycles = {}
        for role, voices in pools.items():
            cycles[role] = iter(_voice_cycle(voices, len(slots) + 1, srng))
        split_texts = [s for _, _, s in slots if s is not None][:2000]
        for index, (lang, kind, sent) in enumerate(slots):
            urng = np.random.default_rng([seed, code, index])
            sfx = "_heldout" if kind == "heldout" else ""
            en_role = "en_synth" if kind == "synth" else "en" + sfx
            zh_v = next(cycles["zh" + sfx]) if lang != "en" else None
            en_v = next(cycles[en_role]) if lang != "zh" else None
            if lang == "zh":
                segs = [(zh_v, sent.tts, sample_params(zh_v, urng))]
                text = sent.text
            elif lang == "en":
                segs = [(en_v, sent.tts, sample_params(en_v, urng))]
                text = sent.text
            elif sent is not None:  # a real code-switched sentence
                segs = _segments_for(sent, zh_v, en_v, urng)
                text = sent.text
            else:  # constructed: a Mandarin sentence and an English phrase
                zs = src["zh"][int(urng.integers(len(src["zh"])))]
                es = _en_phrase(src["en"][int(urng.integers(len(src["en"])))], urng)
                segs = [
                    (zh_v, zs.tts, sample_params(zh_v, urng)),
                    (en_v, es.tts, sample_params(en_v, urng)),
                ]
                text = normalize_text(zs.text + " " + es.text)
            gap = round(float(urng.uniform(0.05, 0.25)), 3)
            aug = sample_wide_augment_params(urng)
            babble = sample_babble(aug, babble_voices, split_texts, urng)
            held = kind == "heldout"
            plans.append(
                make_plan(
                    split, index, lang, text, held, segs, gap, aug, babble, out_dir, seed, code
                )
            )
    train_zh_chars = Counter(ch for p in plans if p.split == "train" for ch in p.text if is_cjk(ch))
    info = {
        "text_pool": {
            "zh": len(zh_ok),
            "zh_code_switched": len(src["mix"]),
            "en": len(src["en"]),
            "heldout_domain": HELDOUT_DOMAIN,
            "heldout_domain_sentences": {k: len(v) for k, v in held_src.items()},
            "zh_units": len(vocab),
            "zh_units_seen_min_count": sum(
                1 for c in train_zh_chars.values() if c >= max(1, preset.zh_min_count)
            ),
            "domains": list(domains),
        },
        "voices": {role: [v.id for v in vs] for role, vs in pools.items()},
    }
    return plans, info
