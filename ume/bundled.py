"""Models shipped inside the package (package data, so `pip install .` keeps them).

Example:
    >>> from ume import bundled_model
    >>> bundled_model()            # the default dense model
    PosixPath('.../ume/models/dense_paper')
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT = "dense_paper"


def bundled_names() -> list[str]:
    """Names of the bundled models present in this installation."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.yaml").is_file())


def bundled_model(name: str = DEFAULT) -> Path:
    """Experiment dir of a bundled model, e.g. bundled_model("dense_paper").

    Raises FileNotFoundError naming the available models when `name` is not installed."""
    path = MODELS_DIR / name
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"no bundled model {name!r} in {MODELS_DIR}; available: {bundled_names() or 'none'}"
            " (a source checkout has them under ume/models/; reinstall the package if missing)"
        )
    return path
