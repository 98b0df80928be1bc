"""User-chosen text in log lines: one line, no terminal escapes, no bidi tricks."""

from __future__ import annotations

import pytest

from aifactory.text import printable, shown, shown_list


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("label", "label"),
        ("a\nINFO forged line", "a\\nINFO forged line"),
        ("red\x1b[31m", "red\\x1b[31m"),
        ("tab\there\r", "tab\\there\\r"),
        ("abc\u202edcba", "abc\\u202edcba"),  # right-to-left override
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("line\u2028sep", "line\\u2028sep"),
        ("nul\x00", "nul\\x00"),
        ("back\\slash", "back\\\\slash"),
        ("café ünïcode", "café ünïcode"),
    ],
)
def test_printable_escapes_what_could_forge_or_hide_text(raw: str, want: str) -> None:
    assert printable(raw) == want
    assert "\n" not in shown(raw) and "\x1b" not in shown(raw)


def test_escapes_cannot_be_confused_with_the_real_characters() -> None:
    # a literal backslash-n typed by a user and a real newline print differently
    assert printable("a\\nb") != printable("a\nb")


def test_long_values_are_cut_and_marked() -> None:
    out = printable("x" * 10_000, max_chars=50)
    assert out == "x" * 50 + "…"


def test_shown_quotes_and_lists() -> None:
    assert shown("it's") == "'it\\'s'"
    assert shown_list(["a", "b\n"]) == "['a', 'b\\n']"
    assert shown_list([str(i) for i in range(25)], max_items=2) == "['0', '1', … (+23 more)]"
