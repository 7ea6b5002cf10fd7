"""The utterances of a corpus' test splits whose sentence a model never trained on.

A model trained on one corpus and scored on another one's splits can have read some of the
test sentences in training (another plan of the same text pool puts other sentences in
test): its score there is partly memory. This writes, for every split of DATA_DIR that has a
`text` file, OUT/<split>/text restricted to utterances whose transcript is not a transcript
of any TRAIN_TEXT (Kaldi `text` files: `uttid transcript`), and prints what it kept.
Score on them with `ume score --ref OUT/<split>/text ...` (hypotheses of the other
utterances are ignored, and counted).

Usage:
    python scripts/unseen_subset.py TRAIN_TEXT [TRAIN_TEXT ...] --data DATA_DIR --out OUT
    e.g. python scripts/unseen_subset.py old_xl16k/train/text --data work_xl/data --out unseen
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ume.data.manifest import read_text_file, write_text_file

SPLITS = ("dev", "test", "test_heldout", "test_heldout_synth", "test_heldout_text")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("train_text", nargs="+", type=Path, help="Kaldi text files trained on")
    ap.add_argument("--data", required=True, type=Path, help="corpus dir holding the splits")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    for p in [*args.train_text, args.data]:
        if not p.exists():
            print(f"unseen_subset: {p} does not exist", file=sys.stderr)
            return 2
    seen = {t for p in args.train_text for t in read_text_file(p).values()}
    found = [s for s in SPLITS if (args.data / s / "text").is_file()]
    if not found:
        print(f"unseen_subset: no split with a text file in {args.data}", file=sys.stderr)
        return 2
    for split in found:
        rows = read_text_file(args.data / split / "text")
        kept = {k: t for k, t in rows.items() if t not in seen}
        (args.out / split).mkdir(parents=True, exist_ok=True)
        write_text_file(kept, args.out / split / "text")
        print(f"{split}: {len(kept)} of {len(rows)} utterances read a sentence not trained on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
