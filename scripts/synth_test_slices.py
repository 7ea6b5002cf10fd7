"""Render the first N utterances of a preset's test split (seen voices) and of its held-out
voices test split into Kaldi dirs OUT/test and OUT/test_heldout: byte-identical to the same
utterances of a full `ume data synth` run (same plans, same renderer), in seconds.

Usage: python scripts/synth_test_slices.py OUT [N] [PRESET]    (default N 120, preset paper)
"""

from __future__ import annotations

import sys
from pathlib import Path

from ume.data.synth import synthesize_slice, write_kaldi_dir
from ume.data.synth_plan import plan_corpus
from ume.data.synth_presets import HELDOUT_SPLIT, PRESETS
from ume.data.synth_render import _render_job


def heldout_slice(preset: str, n: int, out: Path, seed: int = 0) -> Path:
    plans, _ = plan_corpus(PRESETS[preset], out, seed)
    chosen = sorted((p for p in plans if p.split == "test" and p.heldout), key=lambda p: p.index)
    (out / "wavs" / "test").mkdir(parents=True, exist_ok=True)
    done = []
    for plan in chosen[:n]:
        r = _render_job((plan, True))
        if r["ok"]:
            done.append((plan, r["dur"]))
    write_kaldi_dir(out / HELDOUT_SPLIT, done)
    return out / HELDOUT_SPLIT


if __name__ == "__main__":
    out = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 120
    preset = sys.argv[3] if len(sys.argv) > 3 else "paper"
    print(synthesize_slice(preset, "test", n, out))
    print(heldout_slice(preset, n, out))
