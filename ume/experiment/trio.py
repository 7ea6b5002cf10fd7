"""The xl regime's trio, scored live: one dense start, more dense training from it
(dense_continued) and UME from it, trained beforehand by `scripts/experiment_xl_pair.sh` on the
133-hour `xl` corpus and shipped in the source checkout. The quick demo's own runs are too
short to show UME's effect (docs/RESULTS.md); this part shows what the long runs measured,
recomputed here: it re-synthesises the first N utterances of every test split of the `xl`
corpus (byte-identical to the full corpus: ume.data.synth.synthesize_slices), decodes them with
the three models and prints MER with paired-bootstrap 95% CIs.

Nothing here trains; the table says so, and names the command that trained each model.

Example:
    >>> res = score_trio("work/trio", utts=200)
    >>> print(format_trio(res))
    $ ume demo --preset quick --workdir work --trio-utts 200
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ume.bundled import bundled_model
from ume.data.manifest import read_text_file
from ume.data.synth import preset_splits, synthesize_slices
from ume.decode.significance import paired_bootstrap
from ume.errors import UmeError
from ume.expdir import atomic_write_json, load_experiment
from ume.experiment.evaluate import score_split

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_MODELS = REPO_ROOT / "models" / "xl"


def default_trio() -> dict[str, Path]:
    """{role: model dir} of the shipped trio: the 22,000-step dense start, the bundled
    recogniser (its dense_continued: +6,000, +4,000 and +4,000 dense steps on 133 h, three
    cosine cycles) and UME (`ume_kmeans_no_freeze` from the same start, the same three cycles
    side by side; seed 1 of the 133 h pair). Each model's card names its last command."""
    return {
        "dense": REPO_MODELS / "dense_22k",
        "dense_continued": bundled_model("dense_xl"),
        "ume": REPO_MODELS / "ume_133h",
    }


SPLITS = ("test", "test_heldout", "test_heldout_synth", "test_heldout_text")
SPLIT_NAMES = {
    "test": "test (seen voices, new sentences)",
    "test_heldout": "held-out voices",
    "test_heldout_synth": "held-out synthesiser",
    "test_heldout_text": "held-out text domain",
}
COMPARISONS = (("ume", "dense_continued"), ("dense_continued", "dense"))  # (system, baseline)


def missing_models(models: dict[str, Path]) -> list[str]:
    """The roles whose model dir is not there (a pip install has no models/xl/)."""
    return [r for r, p in models.items() if not (Path(p) / "config.yaml").is_file()]


def score_trio(
    workdir: str | Path,
    utts: int,
    models: dict[str, Path] | None = None,
    preset: str = "xl",
    seed: int = 0,
    mode: str = "attention_rescoring",
    replicates: int = 1000,
    workers: int = 2,
) -> dict:
    """Synthesise the first `utts` utterances of each test split of `preset` into
    WORKDIR/data, decode them with every model (hypotheses: WORKDIR/<role>/hyp_<split>.txt),
    and compare each (system, baseline) of COMPARISONS with a paired bootstrap. Writes and
    returns WORKDIR/trio.json: {"splits": {split: {"mer": {role: MER}, "vs": {"a_vs_b": ...}}}}.
    Splits the preset lacks are skipped, said so in the log."""
    if utts <= 0:
        raise UmeError(f"trio: utts must be > 0 utterances per split, got {utts}")
    models = {r: Path(p) for r, p in (models or default_trio()).items()}
    if need := sorted({r for pair in COMPARISONS for r in pair} - set(models)):
        raise UmeError(f"trio: models needs the roles {', '.join(need)} too (got {sorted(models)})")
    if missing := missing_models(models):
        raise UmeError(
            f"trio: no model for {', '.join(missing)} "
            f"({', '.join(str(models[r]) for r in missing)}); the trio ships in a source "
            "checkout (models/xl/), not in the pip package"
        )
    work = Path(workdir)
    splits = [s for s in SPLITS if s in preset_splits(preset)]
    if skipped := sorted(set(SPLITS) - set(splits)):
        log.info("trio: preset %r has no %s; scoring %s", preset, skipped, splits)
    t0 = time.time()
    dirs = synthesize_slices(preset, splits, utts, work / "data", seed, num_workers=workers)
    synth_s = time.time() - t0
    res: dict = {
        "preset": preset,
        "seed": seed,
        "utts_per_split": utts,
        "mode": mode,
        "models": {},
        "splits": {s: {"mer": {}, "vs": {}} for s in dirs},
    }
    for role, path in models.items():
        t1 = time.time()
        cfg, tok, model = load_experiment(path)
        for split, d in dirs.items():
            out = work / role / f"hyp_{split}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            r = score_split(model, tok, cfg, d, mode, out)
            res["splits"][split]["mer"][role] = round(r["mer"], 2)
            res["splits"][split]["num_utts"] = r["num_utts"]
        card = path / "card.json"
        res["models"][role] = {
            "path": _shown(path),
            "command": json.loads(card.read_text()).get("command") if card.is_file() else None,
            "decode_seconds": round(time.time() - t1, 1),
        }
        del model
    for split, d in dirs.items():
        refs = read_text_file(d / "text")
        hyp = {r: read_text_file(work / r / f"hyp_{split}.txt") for r in models}
        for sys_role, base_role in COMPARISONS:
            b = paired_bootstrap(refs, hyp[base_role], hyp[sys_role], replicates)
            res["splits"][split]["vs"][f"{sys_role}_vs_{base_role}"] = {
                "rel_change_pct": round(b["rel_change_pct"], 2),
                "rel_ci95_pct": [round(x, 2) for x in b["rel_ci95_pct"]],
            }
    res["synth_seconds"] = round(synth_s, 1)
    res["wall_seconds"] = round(time.time() - t0, 1)
    res["threads"] = torch.get_num_threads()
    atomic_write_json(res, work / "trio.json")
    return res


def _shown(path: Path) -> str:
    """`path` relative to the source checkout when it is inside it (shorter, and the same on
    every machine), else as given."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _ci(v: dict) -> str:
    lo, hi = v["rel_ci95_pct"]
    tie = " tie" if lo <= 0 <= hi else ""
    return f"{v['rel_change_pct']:+.2f}% ({lo:+.2f} .. {hi:+.2f}){tie}"


def format_trio(res: dict) -> str:
    """The trio as a Markdown table with its provenance (what trained the models, what ran
    here)."""
    roles = list(res["models"])
    head = ["split", "utts", *roles, *(f"{a} vs {b}" for a, b in COMPARISONS)]
    lines = [
        f"Trio of the `{res['preset']}` regime: trained beforehand (not by this demo), decoded "
        f"and scored here ({res['mode']}, MER %, 95% CI of a paired bootstrap over utterances):",
        *(f"- {r}: {m['path']} — trained by `{m['command']}`" for r, m in res["models"].items()),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for split, s in res["splits"].items():
        cells = [SPLIT_NAMES.get(split, split), str(s.get("num_utts", ""))]
        cells += [f"{s['mer'][r]:.2f}" for r in roles]
        cells += [_ci(s["vs"][f"{a}_vs_{b}"]) for a, b in COMPARISONS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"\nfirst {res['utts_per_split']} utterances of each split (synth seed {res['seed']}); "
        f"{res['wall_seconds']:.0f} s here at {res['threads']} thread(s), "
        f"{res['synth_seconds']:.0f} s of it synthesis"
    )
    return "\n".join(lines)
