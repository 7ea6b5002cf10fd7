"""Offline synthetic bilingual (Mandarin + English + code-switched) corpus builder.

Real text is read at run time from the Debian ``fortunes`` / ``fortunes-zh`` packages
(``/usr/share/games/fortunes``), spoken by several voices of two offline TTS engines
(``espeak-ng`` and ``flite``, see :mod:`ume.data.tts`), augmented with noise / reverberation
(:mod:`ume.data.augment`) and written as Kaldi-style data directories plus a wenet-style
``data.list``. Nothing is downloaded.

Layout of ``out_dir``::

    train/ dev/ test/ test_heldout/     wav.scp text utt2spk spk2utt utt2lang utt2dur data.list
    wavs/<split>/<uttid>.wav            16 kHz mono 16-bit PCM
    summary.json                        written last; its presence marks a complete corpus

* Sentences are deduplicated (on normalised text), shuffled with ``seed`` and assigned to the
  splits so that no sentence appears in two splits.
* ``test`` additionally contains utterances spoken by held-out voices (never used in train/dev);
  these are also written on their own as ``test_heldout``.
* ~10% of utterances are code-switched: a Mandarin sentence followed by a 2-4 word English
  phrase, each spoken by a voice of its own language and concatenated.
* Utterance ids are ``<voiceid>-<split>-<index:06d>`` (the voice id is the speaker id; for
  code-switched utterances it is the Mandarin voice). All files are sorted by utterance id.
* Deterministic: every random choice of an utterance comes from a generator seeded with
  ``(seed, split, index)``, so the same seed gives identical text files and wav bytes,
  whatever ``num_workers`` is.

Example:
    >>> from ume.data.synth import synthesize
    >>> summary = synthesize("tiny", "/tmp/ume_tiny", seed=0, num_workers=2)  # doctest: +SKIP
    >>> summary["splits"]["train"]["utts"], sorted(summary["splits"])  # doctest: +SKIP
    (40, ['dev', 'test', 'test_heldout', 'train'])
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ume.atomic import atomic_write_text
from ume.data.manifest import Utterance
from ume.data.manifest import write_kaldi_dir as write_manifest_dir
from ume.data.synth_plan import UttPlan, plan_corpus
from ume.data.synth_plan_pool import plan_pool_corpus
from ume.data.synth_presets import (
    EXTRA_TEST_SPLITS,
    HELDOUT_SPLIT,
    PRESETS,
    SPLITS,
    SynthPreset,
)
from ume.data.synth_render import _render_job
from ume.data.text_sources import FORTUNE_DIR
from ume.data.tts import SAMPLE_RATE
from ume.errors import UmeError

logger = logging.getLogger(__name__)

# the corpus builder's public names (presets, splits and the text source live in the modules
# synth_presets / synth_plan / synth_render / text_sources)
__all__ = [
    "FORTUNE_DIR",
    "HELDOUT_SPLIT",
    "KALDI_FILES",
    "PRESETS",
    "SPLITS",
    "SynthPreset",
    "preset_splits",
    "synthesize",
    "synthesize_slice",
    "synthesize_slices",
]

FORMAT_VERSION = 2
KALDI_FILES = ("wav.scp", "text", "utt2spk", "spk2utt", "utt2lang", "utt2dur", "data.list")


# --------------------------------------------------------------------------------------------
# output


def write_kaldi_dir(d: Path, utts: Sequence[tuple[UttPlan, float]]) -> None:
    """Write the split's Kaldi files and data.list (see KALDI_FILES) with manifest's writer."""
    write_manifest_dir(
        [Utterance(p.uttid, p.wav, p.text, p.lang, p.speaker, dur) for p, dur in utts],
        d,
        data_list=True,
    )


def _split_summary(utts: Sequence[tuple[UttPlan, float]], skipped: int) -> dict:
    dur = [d for _, d in utts]
    return {
        "utts": len(utts),
        "hours": round(sum(dur) / 3600, 4),
        "mean_dur_s": round(float(np.mean(dur)), 3) if dur else 0.0,
        "langs": dict(sorted(Counter(p.lang for p, _ in utts).items())),
        "voices": sorted({v.id for p, _ in utts for v, _, _ in p.segments}),
        "speakers": len({p.speaker for p, _ in utts}),
        "skipped": skipped,
    }


def _fingerprint(plans: Sequence[UttPlan]) -> str:
    """Hash of everything that determines the audio of every utterance."""
    h = hashlib.sha256()
    for p in plans:
        segs = [(v.id, v.name, t, prm) for v, t, prm in p.segments + p.babble]
        rec = [p.uttid, p.wav, p.text, segs, p.gap_s, p.aug.to_dict(), list(p.seed)]
        h.update(json.dumps(rec, ensure_ascii=False, sort_keys=True).encode())
    return h.hexdigest()


_PRESET_DEFAULTS = json.loads(
    json.dumps({f.name: f.default for f in fields(SynthPreset) if f.default is not MISSING})
)


def _summary_head(cfg: SynthPreset, seed: int) -> dict:
    """The fields of a summary that say which corpus it describes."""
    return {
        "preset": cfg.name,
        "seed": seed,
        "version": FORMAT_VERSION,
        "config": json.loads(json.dumps(asdict(cfg))),  # as JSON stores it: tuples as lists
    }


def _corpus_identity(summary: dict) -> tuple:
    """What decides a corpus's audio: preset, seed, format version and the preset's fields,
    less its `description` (prose: rewording it must not make a built corpus stale). Fields
    added to SynthPreset after a corpus was written read as their defaults."""
    config = {**_PRESET_DEFAULTS, **(summary.get("config") or {})}
    config.pop("description", None)
    return (summary.get("preset"), summary.get("seed"), summary.get("version"), config)


def _refuse_other_corpus(out_dir: Path, cfg: SynthPreset, seed: int) -> None:
    """A finished corpus of another preset, seed, format or config is never deleted to make
    room: its audio may be what recorded results were measured on."""
    path = out_dir / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no finished corpus here (or an unreadable summary: an interrupted run)
    if _corpus_identity(summary) != _corpus_identity(_summary_head(cfg, seed)):
        raise UmeError(
            f"{out_dir} already holds a finished corpus ({summary.get('preset')!r}, seed "
            f"{summary.get('seed')}, format {summary.get('version')}) that differs from the "
            f"{cfg.name!r} corpus at seed {seed} this code would write: it is kept. Write to "
            f"another --out, or delete {out_dir} yourself to rebuild it there."
        )


def _complete_summary(out_dir: Path, cfg: SynthPreset, seed: int) -> dict | None:
    path = out_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if _corpus_identity(summary) != _corpus_identity(_summary_head(cfg, seed)):
        return None
    for split in _output_splits(cfg):
        if not all((out_dir / split / f).is_file() for f in KALDI_FILES):
            return None
    return summary


def preset_splits(preset: str) -> tuple[str, ...]:
    """The Kaldi dirs a full corpus of `preset` has: train, dev, test, test_heldout, and for the
    text-pool presets (xl) test_heldout_synth and test_heldout_text."""
    if preset not in PRESETS:
        raise UmeError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return _output_splits(PRESETS[preset])


def _output_splits(cfg: SynthPreset) -> tuple[str, ...]:
    extra = (
        tuple(s for s, n in zip(EXTRA_TEST_SPLITS, (cfg.n_heldout_synth, cfg.n_heldout_text)) if n)
        if cfg.text_source == "pool"
        else ()
    )
    return (*SPLITS, HELDOUT_SPLIT, *extra)


def plan_preset(cfg: SynthPreset, out: Path, seed: int) -> tuple[list[UttPlan], dict]:
    """Plan every utterance of a preset (the fortune planner or the text-pool planner)."""
    if cfg.text_source == "pool":
        return plan_pool_corpus(cfg, out, seed)
    if cfg.text_source != "fortunes":
        raise ValueError(f"unknown text_source {cfg.text_source!r} (fortunes | pool)")
    return plan_corpus(cfg, out, seed)


MAX_FAILURE_RATE = 0.02  # more failed renders than this means a broken TTS setup, not bad luck


def _check_failure_rate(plans: Sequence[UttPlan], results: dict, max_rate: float) -> None:
    """Raise RuntimeError (with the first errors) if too many utterances failed to render."""
    failed = [(p.uttid, results[p.uttid]["error"]) for p in plans if not results[p.uttid]["ok"]]
    if plans and len(failed) / len(plans) > max_rate:
        shown = "\n  ".join(f"{k}: {e}" for k, e in failed[:5])
        raise RuntimeError(
            f"{len(failed)} of {len(plans)} utterances failed to render "
            f"({len(failed) / len(plans):.1%} > {max_rate:.0%}); first errors:\n  {shown}\n"
            "check the TTS engines (espeak-ng, flite) and voices, then rerun"
        )


def _render_all(
    jobs: list[tuple[UttPlan, bool]], num_workers: int, progress: bool, desc: str
) -> dict[str, dict]:
    """Render (plan, reuse) jobs in this process or a pool: {uttid: render result}."""
    results: dict[str, dict] = {}
    bar = tqdm(total=len(jobs), desc=desc, unit="utt", disable=not progress)
    if num_workers <= 1:
        for job in jobs:
            r = _render_job(job)
            results[r["uttid"]] = r
            bar.update()
    else:
        method = "fork" if "fork" in mp.get_all_start_methods() else None
        with mp.get_context(method).Pool(num_workers) as pool:
            for r in pool.imap_unordered(_render_job, jobs, chunksize=4):
                results[r["uttid"]] = r
                bar.update()
    bar.close()
    return results


def synthesize(
    preset: str,
    out_dir: str | Path,
    seed: int = 0,
    num_workers: int = 2,
    progress: bool = True,
    max_failure_rate: float = MAX_FAILURE_RATE,
) -> dict:
    """Build (or reuse) a synthetic bilingual corpus in `out_dir`.

    Args:
        preset: a key of :data:`PRESETS` (``tiny``, ``quick``, ``paper``).
        out_dir: output directory (created); see the module docstring for the layout.
        seed: master seed; the same seed gives identical transcripts and wav bytes.
        num_workers: TTS/augmentation processes (``<= 1``: run in this process).
        progress: show a tqdm progress bar.
        max_failure_rate: fraction of utterances that may fail to render (skipped and
            counted); above it the run raises RuntimeError with the first errors and writes
            no summary (so a rerun does not mistake the corpus for complete).

    Returns:
        The summary dict (also written to ``out_dir/summary.json``): preset, seed, per split
        (train, dev, test, test_heldout) ``utts``, ``hours``, ``langs``, ``voices``,
        ``skipped``; voice pools; text pool sizes; elapsed time. If `out_dir` already holds a
        complete corpus for the same preset and seed, that summary is returned without work.

    Example:
        >>> s = synthesize("tiny", "/tmp/ume_tiny", seed=0)  # doctest: +SKIP
        >>> s["splits"]["test_heldout"]["voices"]  # doctest: +SKIP
        ['esp_cmn_f4', 'esp_cmn_m5', 'esp_en-gb-x-rp_f4', 'flite_slt']
    """
    if preset not in PRESETS:
        raise UmeError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if not isinstance(seed, int) or seed < 0:
        raise UmeError(f"seed must be a non-negative integer, got {seed!r}")
    cfg = PRESETS[preset]
    out = Path(out_dir).expanduser().resolve()
    done = _complete_summary(out, cfg, seed)
    if done is not None:
        print(f"[synth] {out} already holds the {preset!r} corpus (seed {seed}): reusing it")
        return done

    _refuse_other_corpus(out, cfg, seed)
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    plans, info = plan_preset(cfg, out, seed)
    # Resuming an interrupted run reuses finished wavs, but only if the plan is identical.
    state_path = out / ".synth_state.json"
    state = {"preset": preset, "seed": seed, "version": FORMAT_VERSION, "plan": _fingerprint(plans)}
    reuse = False
    if state_path.is_file():
        try:
            reuse = json.loads(state_path.read_text(encoding="utf-8")) == state
        except (OSError, ValueError):
            reuse = False
    (out / "summary.json").unlink(missing_ok=True)
    if not reuse and (out / "wavs").is_dir():  # stale audio: remove only what we created
        shutil.rmtree(out / "wavs")
    state_path.write_text(json.dumps(state), encoding="utf-8")
    for split in SPLITS:
        (out / "wavs" / split).mkdir(parents=True, exist_ok=True)

    results = _render_all([(p, reuse) for p in plans], num_workers, progress, f"synth {preset}")

    failures = Counter()
    by_split: dict[str, list[tuple[UttPlan, float]]] = {s: [] for s in _output_splits(cfg)}
    pool_plan = cfg.text_source == "pool"  # held-out voices only in test_heldout
    for p in plans:
        r = results[p.uttid]
        if not r["ok"]:
            failures[p.split] += 1
            if p.heldout:
                failures[HELDOUT_SPLIT] += 1
            logger.warning("skipping %s (%r): %s", p.uttid, p.text, r["error"])
            continue
        if not (pool_plan and p.heldout):
            by_split[p.split].append((p, r["dur"]))
        if p.heldout:
            by_split[HELDOUT_SPLIT].append((p, r["dur"]))
    _check_failure_rate(plans, results, max_failure_rate)

    for split, utts in by_split.items():
        write_kaldi_dir(out / split, utts)

    summary = {
        **_summary_head(cfg, seed),
        "sample_rate": SAMPLE_RATE,
        "splits": {s: _split_summary(u, failures[s]) for s, u in by_split.items()},
        "skipped_total": sum(failures[s] for s in (*SPLITS, *EXTRA_TEST_SPLITS)),
        "voices": info["voices"],
        "text_pool": info["text_pool"],
        "elapsed_s": round(time.time() - t0, 1),
        "num_workers": num_workers,
    }
    atomic_write_text(
        out / "summary.json", json.dumps(summary, ensure_ascii=False, indent=2) + "\n"
    )
    if summary["skipped_total"]:
        logger.warning("%d utterances skipped (TTS failures)", summary["skipped_total"])
    return summary


def synthesize_slice(preset: str, split: str, n: int, out_dir: str | Path, seed: int = 0) -> Path:
    """Render only the first `n` utterances (in plan order) of one split of a preset into a Kaldi
    dir `out_dir/<split>` — byte-identical to the same utterances of a full `synthesize` run.

    Used to re-check a bundled model's card without synthesising the whole corpus.

    Example:
        >>> synthesize_slice("paper", "test", 60, "/tmp/slice")   # -> /tmp/slice/test
    """
    return synthesize_slices(preset, [split], n, out_dir, seed, num_workers=1)[split]


def _slice_plans(plans: Sequence[UttPlan], split: str) -> list[UttPlan]:
    """The plans of one output split in plan order; `test_heldout` holds the held-out voices'
    utterances, every other split its own non-held-out ones."""
    if split == HELDOUT_SPLIT:
        chosen = [p for p in plans if p.heldout]
    else:
        chosen = [p for p in plans if p.split == split and not p.heldout]
    return sorted(chosen, key=lambda p: (p.split, p.index))


def synthesize_slices(
    preset: str,
    splits: Sequence[str],
    n: int,
    out_dir: str | Path,
    seed: int = 0,
    num_workers: int = 2,
    progress: bool = False,
) -> dict[str, Path]:
    """:func:`synthesize_slice` for several splits (the preset is planned once; `num_workers`
    rendering processes). A split dir that already holds this slice (its ``slice.json`` names
    the same preset, seed, split and n) is reused. Returns {split: Kaldi dir}.

    Example:
        >>> synthesize_slices("xl", ["test", "test_heldout"], 200, "work/trio/data")
    """
    if preset not in PRESETS:
        raise UmeError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if n <= 0:
        raise UmeError(f"a slice needs n > 0 utterances, got {n}")
    out = Path(out_dir)
    stamp = {"preset": preset, "seed": seed, "n": n, "version": FORMAT_VERSION}
    dirs = {s: out / s for s in splits}

    def done(split: str) -> bool:
        f = dirs[split] / "slice.json"
        try:
            return json.loads(f.read_text(encoding="utf-8")) == {**stamp, "split": split}
        except (OSError, ValueError):
            return False

    todo = [s for s in splits if not done(s)]
    if not todo:
        return dirs
    plans, _ = plan_preset(PRESETS[preset], out, seed)
    chosen = {s: _slice_plans(plans, s)[:n] for s in todo}
    for s, c in chosen.items():
        if not c:
            raise UmeError(f"split {s!r} of preset {preset!r} has no utterances")
    jobs = [(p, True) for c in chosen.values() for p in c]
    for wav_dir in {Path(p.wav).parent for p, _ in jobs}:
        wav_dir.mkdir(parents=True, exist_ok=True)
    results = _render_all(jobs, num_workers, progress, f"synth {preset} slices")
    for s, c in chosen.items():
        kept = []
        for plan in c:
            r = results[plan.uttid]
            if r["ok"]:
                kept.append((plan, r["dur"]))
            else:
                logger.warning("skipped %s: %s", plan.uttid, r["error"])
        write_kaldi_dir(dirs[s], kept)
        atomic_write_text(dirs[s] / "slice.json", json.dumps({**stamp, "split": s}) + "\n")
    return dirs
