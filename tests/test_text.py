from ume.data.text import join_units, normalize_text, split_units, text_lang, unit_lang


def test_normalize_full_width_punct_case() -> None:
    assert normalize_text("你好，World！ It’s  ＯＫ。") == "你好WORLD IT'S OK"
    assert normalize_text("ＡＢＣ１２３") == "ABC123"
    assert normalize_text("  ,,, ") == ""


def test_normalize_special_letters() -> None:
    assert normalize_text("一九〇〇年") == "一九〇〇年"
    assert normalize_text("Straße café") == "STRASSE CAFE"
    assert normalize_text("\x1b[33m作者：张九龄\x1b[m") == "作者张九龄"


def test_units_and_lang() -> None:
    units = split_units("我爱PYTHON AND 你")
    assert units == ["我", "爱", "PYTHON", "AND", "你"]
    assert join_units(units) == "我爱PYTHON AND你"
    assert [unit_lang(u) for u in units] == ["zh", "zh", "en", "en", "zh"]
    assert text_lang("我爱") == "zh" and text_lang("HELLO") == "en" and text_lang("我A") == "mix"
