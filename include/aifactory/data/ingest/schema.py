"""Column types across blocks and files: the widening ladder, schema drift, and Arrow's messages
without the cell values it quotes (logs must not carry data)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from aifactory.errors import InputError
from aifactory.text import shown, shown_list

if TYPE_CHECKING:
    import pyarrow as pa

_VALUE_LEAKS = [
    (re.compile(r"(invalid value) '.*?'(?=$|\s)", re.S), r"\1"),
    (re.compile(r"(couldn't parse):.*$", re.S), r"\1 a value"),
    (re.compile(r"(Expected \d+ columns, got \d+):.*$", re.S), r"\1"),
]


def _clean_arrow_message(msg: str) -> str:
    """Drop cell contents pyarrow quotes in its errors: logs must not carry data values."""
    for pattern, repl in _VALUE_LEAKS:
        msg = pattern.sub(repl, msg)
    return msg.strip()


class _Widen(Exception):
    """Internal: a column's inferred type did not fit a later block; retry with a wider type."""

    def __init__(self, column: str, new_type: pa.DataType) -> None:
        super().__init__(column)
        self.column = column
        self.new_type = new_type


def _next_wider(current: pa.DataType) -> pa.DataType:
    import pyarrow as pa

    if pa.types.is_null(current):
        return pa.int64()
    if pa.types.is_integer(current):
        return pa.float64()
    return pa.string()


def _type_named(name: str) -> pa.DataType:
    import pyarrow as pa

    return {"null": pa.null(), "int64": pa.int64(), "double": pa.float64()}.get(name, pa.string())


def _is_int(t: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(t))


def _widen_ints(schema: pa.Schema) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([pa.field(f.name, pa.float64() if _is_int(f.type) else f.type) for f in schema])


def _schema_diff(a: pa.Schema, b: pa.Schema) -> str:
    a_cols = {f.name: str(f.type) for f in a}
    b_cols = {f.name: str(f.type) for f in b}
    parts = []
    if missing := [n for n in a_cols if n not in b_cols]:
        parts.append(f"missing {shown_list(missing)}")
    if extra := [n for n in b_cols if n not in a_cols]:
        parts.append(f"extra {shown_list(extra)}")
    changed = [f"{shown(n)}: {t} -> {b_cols[n]}" for n, t in a_cols.items() if n in b_cols and t != b_cols[n]]
    if changed:
        parts.append(f"types changed [{', '.join(changed)}]")
    if not parts and a.names != b.names:
        parts.append(f"column order {shown_list(a.names)} -> {shown_list(b.names)}")
    return "; ".join(parts) or "field attributes differ"


def _drift(first: str, other: str, diff: str) -> InputError:
    return InputError(
        f"schema drift between source objects: {shown(other)} differs from {shown(first)} ({diff}); "
        "all files of one dataset must have the same columns and types"
    )
