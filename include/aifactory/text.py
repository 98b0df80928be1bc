"""User-chosen text, made safe to print.

Column names, dataset names, object keys and hyperparameter names come from startups. Printed as they
are, a newline forges a log line, an ANSI escape repaints an operator's terminal and a bidi control
reverses what a reviewer reads. Every log line and error message that shows such a value goes through
:func:`shown`, which keeps printable text and writes everything else as a visible escape.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories written as escapes: controls, format characters (bidi overrides, zero-width
#: joiners), line and paragraph separators, surrogates, private use and unassigned code points.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_DEFAULT_MAX = 200


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if ch == "\t":
        return "\\t"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def unprintable(text: str) -> str | None:
    """The first character of ``text`` that :func:`printable` would escape (a control, format or
    separator character), or None: for refusing such text where it is input, not only escaping it."""
    return next((ch for ch in text if unicodedata.category(ch) in _ESCAPED_CATEGORIES), None)


def printable(value: object, *, max_chars: int = _DEFAULT_MAX) -> str:
    """``value`` as one line of printable text: escapes for every control or format character, a
    backslash doubled, and at most ``max_chars`` characters of the original (then ``…``)."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > max_chars
    out = []
    for ch in text[:max_chars]:
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in _ESCAPED_CATEGORIES:
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out) + ("…" if cut else "")


def shown(value: object, *, max_chars: int = _DEFAULT_MAX) -> str:
    """``value`` quoted for a log line or a message: ``'name'`` with :func:`printable`'s escapes."""
    return "'" + printable(value, max_chars=max_chars).replace("'", "\\'") + "'"


def shown_list(values: object, *, max_items: int = 20, max_chars: int = _DEFAULT_MAX) -> str:
    """A list of user-chosen names for a message: ``['a', 'b', … (+3 more)]``."""
    items = list(values)  # type: ignore[call-overload]
    head = ", ".join(shown(v, max_chars=max_chars) for v in items[:max_items])
    more = f", … (+{len(items) - max_items} more)" if len(items) > max_items else ""
    return f"[{head}{more}]"
