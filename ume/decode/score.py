"""Bilingual scoring: mixed error rate (MER), Chinese CER and English WER.

Both sides are normalised with ``normalize_text`` and split into units with ``split_units``
(one unit per CJK character, one per English word). MER is the edit distance over the whole unit
sequence; CER zh compares only the Chinese-character subsequences of reference and hypothesis,
WER en only the English-word subsequences. Errors are summed over utterances, then divided by
the summed reference length; rates are percentages.

Example:
    >>> res = score({"u1": "你好WORLD"}, {"u1": "你好WORD"})
    >>> res["mer"], res["cer_zh"], res["wer_en"]
    (33.333333333333336, 0.0, 100.0)
    $ ume score --ref data/test/text --hyp exp/decode/hyp.txt --json
"""

from __future__ import annotations

import json
import logging
import math
import sys

from ume.data.manifest import DataError, read_text_file
from ume.data.text import normalize_text, split_units, text_lang, unit_lang
from ume.decode.metrics import ErrorCounts

logger = logging.getLogger(__name__)


class _Acc:
    """MER / CER-zh / WER-en counts for a group of utterances."""

    def __init__(self) -> None:
        self.mer, self.zh, self.en = ErrorCounts(), ErrorCounts(), ErrorCounts()
        self.num_utts = 0

    def add(self, ref: list[str], hyp: list[str]) -> None:
        self.num_utts += 1
        self.mer.add(ref, hyp)
        self.zh.add(
            [u for u in ref if unit_lang(u) == "zh"], [u for u in hyp if unit_lang(u) == "zh"]
        )
        self.en.add(
            [u for u in ref if unit_lang(u) == "en"], [u for u in hyp if unit_lang(u) == "en"]
        )

    def rates(self) -> dict:
        return {
            "mer": self.mer.rate,
            "cer_zh": self.zh.rate,
            "wer_en": self.en.rate,
            "num_utts": self.num_utts,
        }


def score(refs: dict[str, str], hyps: dict[str, str]) -> dict:
    """Score hypotheses against references (both {utt_id: text}); see module docstring.

    Returns {"mer", "cer_zh", "wer_en"} (percent), "counts" ({"mer"|"zh"|"en": {ref, sub, del,
    ins, errors}}), "num_utts", "missing_hyps" (refs without a hyp, scored as empty hyps),
    "extra_hyps" (hyp ids not in refs, ignored) and "by_lang" ({"zh"|"en"|"mix": {"mer",
    "cer_zh", "wer_en", "num_utts"}}, grouped by the reference's language).

    Example:
        >>> score({"a": "HELLO WORLD"}, {"a": "HELLO"})["wer_en"]
        50.0
    """
    if not refs:
        raise DataError("score: no reference utterances given")
    total = _Acc()
    by_lang = {lang: _Acc() for lang in ("zh", "en", "mix")}
    missing: list[str] = []
    for key in sorted(refs):
        ref_text = normalize_text(refs[key])
        if key not in hyps:
            missing.append(key)
        hyp_text = normalize_text(hyps.get(key, ""))
        ref_u, hyp_u = split_units(ref_text), split_units(hyp_text)
        total.add(ref_u, hyp_u)
        by_lang[text_lang(ref_text)].add(ref_u, hyp_u)
    extra = sum(1 for k in hyps if k not in refs)
    if missing:
        logger.warning(
            "%d of %d reference utterances have no hypothesis (scored as empty), e.g. %s",
            len(missing),
            len(refs),
            ", ".join(missing[:5]),
        )
    if extra:
        logger.warning("%d hypothesis ids are not in the references and were ignored", extra)
    return {
        "mer": total.mer.rate,
        "cer_zh": total.zh.rate,
        "wer_en": total.en.rate,
        "counts": {
            "mer": total.mer.to_dict(),
            "zh": total.zh.to_dict(),
            "en": total.en.to_dict(),
        },
        "num_utts": total.num_utts,
        "missing_hyps": len(missing),
        "extra_hyps": extra,
        "by_lang": {lang: acc.rates() for lang, acc in by_lang.items()},
    }


def _json_safe(x: object) -> object:
    """Replace non-finite floats with None so the output is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def format_table(res: dict) -> str:
    """Human-readable table of a :func:`score` result."""
    rows = [f"{'metric':<10}{'rate%':>9}{'ref':>9}{'sub':>8}{'del':>8}{'ins':>8}{'errors':>9}"]
    for name, key, ckey in (
        ("MER", "mer", "mer"),
        ("CER zh", "cer_zh", "zh"),
        ("WER en", "wer_en", "en"),
    ):
        c = res["counts"][ckey]
        rows.append(
            f"{name:<10}{res[key]:>9.2f}{c['ref']:>9}{c['sub']:>8}{c['del']:>8}{c['ins']:>8}"
            f"{c['errors']:>9}"
        )
    rows.append("")
    rows.append(f"{'by lang':<10}{'utts':>9}{'MER%':>9}{'CER zh%':>9}{'WER en%':>9}")

    def rate(v: float) -> str:  # no reference units of that kind (e.g. CER zh of English)
        return f"{'n/a':>9}" if math.isinf(v) else f"{v:>9.2f}"

    for lang, r in res["by_lang"].items():
        if r["num_utts"]:
            rows.append(
                f"{lang:<10}{r['num_utts']:>9}{rate(r['mer'])}{rate(r['cer_zh'])}"
                f"{rate(r['wer_en'])}"
            )
    rows.append("")
    rows.append(
        f"utterances: {res['num_utts']}  missing hyps: {res['missing_hyps']}  "
        f"extra hyps (ignored): {res['extra_hyps']}"
    )
    return "\n".join(rows)


def main_score(
    ref: str,
    hyp: str | list[str],
    as_json: bool,
    vs: str | list[str] | None = None,
    replicates: int = 1000,
) -> int:
    """CLI entry for ``ume score --ref TEXT --hyp HYP [--vs BASELINE_HYP] [--json]``; returns
    the exit code. With `vs`, adds a paired bootstrap of HYP against the baseline
    (``"vs"`` in the JSON; see ume/decode/significance.py).

    Several runs of a system (e.g. seeds): repeat ``--hyp`` and/or ``--vs``. The output is then
    one score per run plus a bootstrap over utterances and runs
    (:func:`ume.decode.significance.seed_bootstrap_errors`); JSON ``{"runs": [...], "vs": ...}``.

    Example:
        >>> main_score("data/test/text", "exp/decode/hyp.txt", as_json=False)
        0
        $ ume score --ref data/test/text --hyp seed1/hyp_test.txt --hyp seed2/hyp_test.txt \
            --vs base1/hyp_test.txt --vs base2/hyp_test.txt
    """
    hyp_paths = [hyp] if isinstance(hyp, str) else list(hyp)
    vs_paths = [vs] if isinstance(vs, str) else list(vs or [])
    if len(hyp_paths) > 1 or len(vs_paths) > 1:
        return _main_score_runs(ref, hyp_paths, vs_paths, as_json, replicates)
    hyp, vs = hyp_paths[0], (vs_paths[0] if vs_paths else None)
    try:
        refs, hyps = read_text_file(ref), read_text_file(hyp)
        res = score(refs, hyps)
        if vs:
            from ume.decode.significance import paired_bootstrap

            res["vs"] = paired_bootstrap(refs, read_text_file(vs), hyps, replicates)
    except (DataError, ValueError) as e:
        print(f"ume score: error: {e}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(_json_safe(res), indent=2, allow_nan=False))
    else:
        print(format_table(res))
        if vs:
            from ume.decode.significance import format_bootstrap

            print("\n" + format_bootstrap(res["vs"], name_a=vs, name_b=hyp))
    return 0


def _main_score_runs(
    ref: str, hyp_paths: list[str], vs_paths: list[str], as_json: bool, replicates: int
) -> int:
    """`main_score` with several runs of a system: each run's score, and with baselines the
    bootstrap over utterances and runs."""
    from ume.decode.significance import (
        format_seed_bootstrap,
        seed_bootstrap_errors,
        utterance_errors,
    )

    try:
        refs = read_text_file(ref)
        keys = sorted(refs)
        hyp_texts = [read_text_file(p) for p in hyp_paths]
        vs_texts = [read_text_file(p) for p in vs_paths]
        out: dict = {"runs": [dict(score(refs, h), hyp=p) for h, p in zip(hyp_texts, hyp_paths)]}
        if vs_texts:
            out["vs"] = seed_bootstrap_errors(
                [utterance_errors(refs, h, keys) for h in vs_texts],
                [utterance_errors(refs, h, keys) for h in hyp_texts],
                replicates,
            )
            out["vs"]["hyp"], out["vs"]["vs"] = hyp_paths, vs_paths
    except (DataError, ValueError) as e:
        print(f"ume score: error: {e}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(_json_safe(out), indent=2, allow_nan=False))
        return 0
    for run in out["runs"]:
        print(f"{run['hyp']}: MER {run['mer']:.2f}%  ({run['num_utts']} utterances)")
    if vs_texts:
        print(f"baseline: {' + '.join(vs_paths)}\nsystem:   {' + '.join(hyp_paths)}")
        print(format_seed_bootstrap(out["vs"], name_a="baseline", name_b="system"))
    return 0
