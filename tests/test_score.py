"""Tests for ume.decode.score."""

from __future__ import annotations

import json
from pathlib import Path

import jiwer
import pytest

from ume.data.manifest import write_text_file
from ume.decode.score import ErrorCounts, main_score, score


def test_english_matches_jiwer() -> None:
    refs = {"a": "THE CAT SAT ON THE MAT", "b": "HELLO WORLD", "c": "A B C D"}
    hyps = {"a": "THE CAT SAT ON MAT TODAY", "b": "HELLO WORD", "c": "A X C D E F"}
    res = score(refs, hyps)
    keys = sorted(refs)
    expect = 100 * jiwer.wer([refs[k] for k in keys], [hyps[k] for k in keys])
    assert res["wer_en"] == pytest.approx(expect)
    assert res["mer"] == pytest.approx(expect)
    assert res["cer_zh"] == 0.0 and res["counts"]["zh"]["ref"] == 0
    assert res["by_lang"]["en"]["num_utts"] == 3 and res["by_lang"]["zh"]["num_utts"] == 0


def test_chinese_matches_jiwer_cer() -> None:
    refs = {"a": "今天天气很好", "b": "我们去公园"}
    hyps = {"a": "今天天汽好", "b": "我们要去公园吧"}
    res = score(refs, hyps)
    keys = sorted(refs)
    expect = 100 * jiwer.cer([refs[k] for k in keys], [hyps[k] for k in keys])
    assert res["cer_zh"] == pytest.approx(expect) and res["mer"] == pytest.approx(expect)
    assert res["wer_en"] == 0.0


def test_mixed_hand_counts() -> None:
    # ref units: 我 喜 欢 MACHINE LEARNING 和 你  (zh 5, en 2)
    # hyp units: 我 喜 MACHINE LEANING 和 你 们 OK
    #   zh: 欢 deleted, 们 inserted         -> del 1, ins 1
    #   en: LEARNING->LEANING, OK inserted   -> sub 1, ins 1
    refs = {"u": "我喜欢machine learning和你"}
    hyps = {"u": "我喜 machine leaning 和你们 ok"}
    res = score(refs, hyps)
    assert res["counts"]["zh"] == {"ref": 5, "sub": 0, "del": 1, "ins": 1, "errors": 2}
    assert res["counts"]["en"] == {"ref": 2, "sub": 1, "del": 0, "ins": 1, "errors": 2}
    m = res["counts"]["mer"]
    assert m["ref"] == 7 and m["errors"] == 4 and (m["sub"], m["del"], m["ins"]) == (1, 1, 2)
    assert res["mer"] == pytest.approx(400 / 7)
    assert res["by_lang"]["mix"]["num_utts"] == 1
    # mixed MER equals jiwer WER over space-joined units
    assert res["mer"] == pytest.approx(
        100 * jiwer.wer("我 喜 欢 MACHINE LEARNING 和 你", "我 喜 MACHINE LEANING 和 你 们 OK")
    )


def test_missing_and_extra_hyps(caplog: pytest.LogCaptureFixture) -> None:
    res = score({"a": "你好", "b": "HELLO THERE"}, {"a": "你好", "zzz": "x"})
    assert res["missing_hyps"] == 1 and res["extra_hyps"] == 1 and res["num_utts"] == 2
    assert res["counts"]["en"]["del"] == 2 and res["wer_en"] == 100.0 and res["cer_zh"] == 0.0
    assert "no hypothesis" in caplog.text


def test_error_counts_rate() -> None:
    assert ErrorCounts(ref=4, sub=1, dele=0, ins=1).rate == 50.0
    assert ErrorCounts().rate == 0.0
    assert ErrorCounts(ins=1).rate == float("inf")


def test_main_score(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_text_file({"a": "你好WORLD", "b": "HI"}, tmp_path / "ref")
    write_text_file({"a": "你好 word", "b": "你"}, tmp_path / "hyp")
    assert main_score(str(tmp_path / "ref"), str(tmp_path / "hyp"), as_json=True) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mer"] == pytest.approx(100 * 2 / 4) and out["cer_zh"] == 50.0
    assert main_score(str(tmp_path / "ref"), str(tmp_path / "hyp"), as_json=False) == 0
    assert "MER" in capsys.readouterr().out
    assert main_score(str(tmp_path / "nope"), str(tmp_path / "hyp"), as_json=False) == 1
    assert "does not exist" in capsys.readouterr().err


def test_paired_bootstrap_identical_systems_and_clear_winner() -> None:
    from ume.decode.significance import paired_bootstrap

    refs = {f"u{i}": "你好世界 HELLO" for i in range(30)}
    worse = {f"u{i}": "你好 HELLO" for i in range(30)}  # 2 deletions of 5 units each
    same = paired_bootstrap(refs, worse, worse, replicates=200)
    assert same["rel_change_pct"] == 0.0 and same["rel_ci95_pct"] == [0.0, 0.0]
    assert same["p_b_better"] == 0.0  # ties are not "better"
    win = paired_bootstrap(refs, worse, refs, replicates=200)
    assert win["mer_a"] == 40.0 and win["mer_b"] == 0.0
    assert win["rel_change_pct"] == -100.0 and win["p_b_better"] == 1.0
    # B fixes one utterance in 30: never worse in any draw, so the interval ends at <= 0
    one = dict(worse, u0=refs["u0"])
    res = paired_bootstrap(refs, worse, one, replicates=500, seed=1)
    lo, hi = res["rel_ci95_pct"]
    assert lo < res["rel_change_pct"] < 0.0 and hi <= 0.0
    assert res["rel_change_pct"] == pytest.approx(100 * (58 / 150 * 100 - 40) / 40, abs=1e-3)


def test_paired_bootstrap_bad_input() -> None:
    from ume.data.manifest import DataError
    from ume.decode.significance import paired_bootstrap

    with pytest.raises(DataError, match="no reference"):
        paired_bootstrap({}, {}, {})
    with pytest.raises(ValueError, match="replicates"):
        paired_bootstrap({"a": "HI"}, {}, {}, replicates=0)


def test_main_score_vs_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_text_file({"a": "你好WORLD", "b": "HI"}, tmp_path / "ref")
    write_text_file({"a": "你好 word", "b": "你"}, tmp_path / "base")
    write_text_file({"a": "你好 WORLD", "b": "HI"}, tmp_path / "hyp")
    args = (str(tmp_path / "ref"), str(tmp_path / "hyp"))
    assert main_score(*args, as_json=True, vs=str(tmp_path / "base"), replicates=50) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mer"] == 0.0 and out["vs"]["mer_a"] == 50.0 and out["vs"]["p_b_better"] > 0.5
    assert main_score(*args, as_json=False, vs=str(tmp_path / "base"), replicates=50) == 0
    assert "95% CI" in capsys.readouterr().out


def test_main_score_vs_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_text_file({"a": "HI"}, tmp_path / "ref")
    write_text_file({"a": "HI"}, tmp_path / "hyp")
    args = (str(tmp_path / "ref"), str(tmp_path / "hyp"))
    assert main_score(*args, as_json=False, vs=str(tmp_path / "nope")) == 1
    assert "nope does not exist" in capsys.readouterr().err
    assert main_score(*args, as_json=False, vs=str(tmp_path / "hyp"), replicates=0) == 1
    assert "replicates must be >= 1, got 0" in capsys.readouterr().err


def test_table_says_na_for_a_rate_without_reference_units() -> None:
    from ume.decode.score import format_table

    res = score({"a": "HELLO WORLD"}, {"a": "HELLO 你 WORLD"})  # Chinese inserted in English
    assert res["by_lang"]["en"]["cer_zh"] == float("inf")
    row = next(r for r in format_table(res).splitlines() if r.startswith("en "))
    assert row.split()[1:] == ["1", "50.00", "n/a", "0.00"]


def test_seed_bootstrap_matches_a_plain_loop() -> None:
    """The vectorised replicates against a one-replicate-at-a-time reading of the definition."""
    import numpy as np

    from ume.decode.significance import seed_bootstrap_errors, utterance_errors

    refs = {f"u{i}": "你好世界 HELLO" * (1 + i % 3) for i in range(25)}
    keys = sorted(refs)
    base = {k: v[2:] for k, v in refs.items()}
    a = [
        utterance_errors(refs, base, keys),
        utterance_errors(refs, dict(base, u3=refs["u3"]), keys),
    ]
    b = [utterance_errors(refs, dict(base, u0=refs["u0"], u7=refs["u7"]), keys)]
    res = seed_bootstrap_errors(a, b, replicates=40, seed=5)
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 25, size=(40, 25))
    pick_a, pick_b = rng.integers(0, 2, size=40), rng.integers(0, 1, size=40)
    rels, wins = [], 0
    for r in range(40):
        ea = sum(a[pick_a[r]][i, 0] for i in idx[r])
        eb = sum(b[pick_b[r]][i, 0] for i in idx[r])
        n = sum(a[0][i, 1] for i in idx[r])
        rels.append(100 * (eb / n - ea / n) / (ea / n))
        wins += eb < ea
    assert res["rel_ci95_pct"] == [round(float(x), 3) for x in np.percentile(rels, [2.5, 97.5])]
    assert res["p_b_better"] == wins / 40 and res["num_runs"] == [2, 1]
    assert res["mer_a"] == pytest.approx(sum(res["mer_a_runs"]) / 2, abs=1e-3)


def test_seed_bootstrap_run_spread_widens_the_interval() -> None:
    from ume.decode.significance import seed_bootstrap_errors, utterance_errors

    refs = {f"u{i}": "你好世界 HELLO" for i in range(40)}
    keys = sorted(refs)
    base = {f"u{i}": "你好 HELLO" for i in range(40)}  # MER 40
    fixed = lambda n: dict(base, **{f"u{i}": refs[f"u{i}"] for i in range(n)})  # noqa: E731
    a = [utterance_errors(refs, base, keys)]
    lucky, unlucky = utterance_errors(refs, fixed(12), keys), utterance_errors(refs, fixed(2), keys)
    one = seed_bootstrap_errors(a, [lucky], replicates=500)
    two = seed_bootstrap_errors(a, [lucky, unlucky], replicates=500)
    # the mean of the two runs: 12 and 2 of 40 utterances fixed -> MER 40 * (1 - 7/40) = 33
    assert two["mer_b"] == pytest.approx(33.0) and two["mer_b_runs"] == [28.0, 38.0]
    assert two["run_pairs_rel_pct"] == [-30.0, -5.0]
    width = lambda r: r["rel_ci95_pct"][1] - r["rel_ci95_pct"][0]  # noqa: E731
    assert width(two) > width(one)
    assert two["rel_ci95_pct"][1] > -5.0 - 1e-9 and two["rel_ci95_pct"][0] <= -30.0 + 1e-9
    with pytest.raises(ValueError, match="same utterances"):
        seed_bootstrap_errors(a, [lucky[:5]])
    with pytest.raises(ValueError, match="at least one run"):
        seed_bootstrap_errors([], [lucky])


def test_main_score_several_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_text_file({"a": "你好WORLD", "b": "HI"}, tmp_path / "ref")
    write_text_file({"a": "你好 word", "b": "你"}, tmp_path / "base1")
    write_text_file({"a": "你好 WORLD", "b": "你"}, tmp_path / "base2")
    write_text_file({"a": "你好 WORLD", "b": "HI"}, tmp_path / "hyp1")
    write_text_file({"a": "你好 WORLD", "b": "HO"}, tmp_path / "hyp2")
    hyps = [str(tmp_path / "hyp1"), str(tmp_path / "hyp2")]
    bases = [str(tmp_path / "base1"), str(tmp_path / "base2")]
    ref = str(tmp_path / "ref")
    assert main_score(ref, hyps, as_json=True, vs=bases, replicates=50) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["mer"] for r in out["runs"]] == [0.0, 25.0]
    assert out["vs"]["mer_a_runs"] == [50.0, 25.0] and out["vs"]["mer_b"] == 12.5
    assert out["vs"]["num_runs"] == [2, 2] and out["vs"]["hyp"] == hyps
    assert main_score(ref, hyps, as_json=False, vs=bases[:1], replicates=50) == 0
    text = capsys.readouterr().out
    assert "(1 run: 50.00)" in text and "(2 runs: 0.00, 25.00)" in text
    assert "every run pair" in text


def test_score_seeds_script(tmp_path: Path) -> None:
    """scripts/score_seeds.sh: one seed-aware comparison per split, from run dirs' hyp files."""
    import os
    import subprocess
    import sys

    refs = {"a": "你好WORLD", "b": "HI THERE", "c": "世界"}
    for split in ("test", "dev", "test_heldout", "test_heldout_text"):  # no held-out synth
        (tmp_path / "data" / split).mkdir(parents=True)
        write_text_file(refs, tmp_path / "data" / split / "text")
    runs = {"base1": {"a": "你 WORLD"}, "base2": {"b": "HI"}, "sys1": refs, "sys2": {"a": "你好"}}
    for name, hyps in runs.items():
        (tmp_path / name).mkdir()
        for split in ("test", "dev", "heldout", "heldout_text"):
            write_text_file(hyps, tmp_path / name / f"hyp_{split}.txt")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        ["bash", str(root / "scripts/score_seeds.sh"), str(tmp_path / "data")]
        + [
            " ".join(str(tmp_path / n) for n in pair)
            for pair in (("base1", "base2"), ("sys1", "sys2"))
        ],
        env=dict(os.environ, UME=f"{sys.executable} -m ume.cli"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert [line for line in out.splitlines() if line.startswith("==")] == [
        "== test",
        "== dev",
        "== heldout",
        "== heldout_synth: skipped (no "
        + str(tmp_path / "data/test_heldout_synth/text")
        + " in this corpus)",
        "== heldout_text",
    ]
    assert out.count("(2 runs:") == 8 and out.count("every run pair") == 4


def test_unseen_subset_scores_only_sentences_the_model_never_trained_on(tmp_path: Path) -> None:
    """scripts/unseen_subset.py: a split's utterances whose transcript a training text holds
    are dropped; scoring on the subset ignores (and counts) their hypotheses."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "text").write_text("t1 你好世界\nt2 HELLO THERE\n", encoding="utf-8")
    for split, lines in {
        "test": "a 你好世界\nb 今天很好\nc HELLO THERE\nd GOOD DAY\n",
        "test_heldout_text": "e 新的句子\n",
    }.items():
        (tmp_path / "data" / split).mkdir(parents=True)
        (tmp_path / "data" / split / "text").write_text(lines, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, str(root / "scripts/unseen_subset.py"), str(tmp_path / "old" / "text")]
        + ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "unseen")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "test: 2 of 4" in out and "test_heldout_text: 1 of 1" in out and "dev" not in out
    ref = tmp_path / "unseen" / "test" / "text"
    assert ref.read_text(encoding="utf-8") == "b 今天很好\nd GOOD DAY\n"
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("a 你好世界\nb 今天很好\nc HELLO\nd GOOD DAY\n", encoding="utf-8")
    res = score(
        dict(r.split(" ", 1) for r in ref.read_text(encoding="utf-8").splitlines()),
        dict(r.split(" ", 1) for r in hyp.read_text(encoding="utf-8").splitlines()),
    )
    assert res["num_utts"] == 2 and res["extra_hyps"] == 2 and res["mer"] == 0.0
