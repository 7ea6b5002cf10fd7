"""Markdown table of scripts/bench_variants.sh's JSON rows: per shape, the median RTF ratio vs
dense and, in brackets, the range of the per-round ratios (how far to trust the median).

Usage: python scripts/variants_table.py docs/bench/2thread/variants
"""

import json
import sys
from pathlib import Path

print("| shape | active / total params | RTF ratio b1 | b16 | stream16 b1 | stream16 b16 |")
print("|---|---|---|---|---|---|")
keys = ("b1", "b16", "b1_stream16", "b16_stream16")
for f in sorted(Path(sys.argv[1]).glob("*.json")):
    r = json.loads(f.read_text())
    cells = []
    for k in keys:  # median ratio, and the range of the per-round ratios
        per = r.get(f"ratio_{k}_per_round") or [r[f"ratio_{k}"]]
        cells.append(f"{r[f'ratio_{k}']:.2f} ({min(per):.2f}-{max(per):.2f})")
    print(
        f"| {f.stem} | {r['params_active'] / 1e6:.2f}M / {r['params_total'] / 1e6:.2f}M | "
        + " | ".join(cells)
        + " |"
    )
