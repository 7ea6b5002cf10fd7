"""add_significance: paired bootstraps against dense and against dense_continued (issue 13)."""

from __future__ import annotations

from pathlib import Path

from ume.experiment.report import add_significance


def _write(path: Path, lines: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} {v}\n" for k, v in lines.items()), encoding="utf-8")


def test_ume_is_compared_with_dense_continued_on_test_and_heldout(tmp_path: Path) -> None:
    refs = {f"u{i:02d}": "A B C D" for i in range(30)}
    held = {f"h{i:02d}": "E F G H" for i in range(20)}
    data, runs = tmp_path / "data", tmp_path / "runs"
    _write(data / "test" / "text", refs)
    _write(data / "test_heldout" / "text", held)
    hyps = {  # words wrong per utterance: dense 2, dense_continued 2, ume 1 (better)
        "dense": ("A X C Y", "E X G Y"),
        "dense_continued": ("A X C Y", "E X G Y"),
        "ume": ("A B C Y", "E F G Y"),
    }
    for name, (t, h) in hyps.items():
        _write(runs / name / "hyp_test.txt", dict.fromkeys(refs, t))
        _write(runs / name / "hyp_heldout.txt", dict.fromkeys(held, h))
    results = {"runs": {name: {} for name in hyps}}
    add_significance(results, runs, data, replicates=200)
    ume, cont = results["runs"]["ume"], results["runs"]["dense_continued"]
    assert ume["rel_change_vs_dense_continued_pct"] == -50.0
    assert ume["rel_ci95_vs_dense_continued_pct"] == [-50.0, -50.0]
    assert ume["rel_change_vs_dense_continued_heldout_pct"] == -50.0
    assert ume["p_better_than_dense_continued"] == 1.0
    assert ume["rel_ci95_vs_dense_pct"] == [-50.0, -50.0]
    assert "rel_ci95_vs_dense_continued_pct" not in cont  # not compared with itself
    assert cont["rel_ci95_vs_dense_pct"] == [0.0, 0.0]
    assert "rel_ci95_vs_dense_pct" not in results["runs"]["dense"]
