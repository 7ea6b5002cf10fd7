"""Render the first N utterances of a preset's test split (seen voices) and of its held-out
voices test split into Kaldi dirs OUT/test and OUT/test_heldout: byte-identical to the same
utterances of a full `ume data synth` run (same plans, same renderer), in seconds.

Usage: python scripts/synth_test_slices.py OUT [N] [PRESET]    (default N 120, preset paper)
"""

from __future__ import annotations

import sys
from pathlib import Path

from ume.data.synth import HELDOUT_SPLIT, synthesize_slices

if __name__ == "__main__":
    out = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 120
    preset = sys.argv[3] if len(sys.argv) > 3 else "paper"
    for d in synthesize_slices(preset, ["test", HELDOUT_SPLIT], n, out).values():
        print(d)
