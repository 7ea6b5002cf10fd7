"""Models shipped inside the package (package data, so `pip install .` keeps them).

Two roles, two models:
- DEFAULT (``ume.bundled_model()``, ``ume transcribe`` without --model): the recogniser, the
  best dense model of the xl regime (the 133 h corpus, 428 voice conditions, four test splits;
  docs/RESULTS.md "The xl regime on the 133-hour corpus"); also the demo trio's
  dense_continued (ume/experiment/trio.py).
- DEMO: the quick demo's start (``ume demo --preset quick``, ``ume experiment`` with
  ``bundled_dense``): trained on the `paper` corpus, the same text and voices as the corpus the
  demo synthesises in a minute, small enough to upcycle and train live.

Example:
    >>> from ume import bundled_model
    >>> bundled_model()            # the recogniser
    PosixPath('.../ume/models/dense_xl')
    >>> bundled_model(DEMO)        # the quick demo's dense
    PosixPath('.../ume/models/dense_paper')
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT = "dense_xl"
DEMO = "dense_paper"


def bundled_names() -> list[str]:
    """Names of the bundled models present in this installation."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.yaml").is_file())


def bundled_model(name: str = DEFAULT) -> Path:
    """Experiment dir of a bundled model, e.g. bundled_model("dense_paper") (default: DEFAULT).

    Raises FileNotFoundError naming the available models when `name` is not installed."""
    path = MODELS_DIR / name
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"no bundled model {name!r} in {MODELS_DIR}; available: {bundled_names() or 'none'}"
            " (a source checkout has them under ume/models/; reinstall the package if missing)"
        )
    return path
