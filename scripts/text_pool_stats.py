"""Print the text pool's size by language and domain, and what the xl presets' train splits
hold (characters seen >= 20 times, English word types, voices, channels): the figures of
docs/data.md. Reads the installed Debian documentation (about a minute), plans, renders nothing.

Usage: .venv/bin/python scripts/text_pool_stats.py [CACHE_DIR]
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

from ume.data.synth_plan_pool import cached_text_pool, plan_pool_corpus
from ume.data.synth_presets import PRESETS
from ume.data.text import is_cjk, split_units
from ume.data.text_pool import DOMAINS


def main() -> None:
    cache = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    pool = cached_text_pool(DOMAINS, cache)
    out: dict = {"pool": {f"{k[0]}/{k[1]}": len(v) for k, v in sorted(pool.by_key.items())}}
    for name in ("xl_16k", "xl"):
        plans, info = plan_pool_corpus(PRESETS[name], cache, 0)
        train = [p for p in plans if p.split == "train"]
        zh = Counter(ch for p in train for ch in p.text if is_cjk(ch))
        en = Counter(u for p in train for u in split_units(p.text) if not is_cjk(u[0]))
        out[name] = {
            "train_utts": len(train),
            "distinct_train_texts": len({p.text for p in train}),
            "zh_chars_in_train": len(zh),
            "zh_chars_ge20": sum(c >= 20 for c in zh.values()),
            "en_word_types_in_train": len(en),
            "en_types_ge5": sum(c >= 5 for c in en.values()),
            "voices_train": len({v.id for p in train for v, _, _ in p.segments}),
            "channels": dict(Counter(p.aug.channel for p in train)),
            "text_pool": info["text_pool"],
        }
    print(json.dumps(out, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
