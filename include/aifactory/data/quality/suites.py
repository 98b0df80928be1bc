"""Suites: find a suite file, read it, resolve its templates and expand list-valued columns.

The suite format is described in :mod:`aifactory.data.quality` (the package docstring). Pure: no
GX import, no I/O beyond reading the suite file.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from aifactory.errors import InputError
from aifactory.layout import NAME_RE, suite_file
from aifactory.text import shown

_TEMPLATE_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")

#: Dataset-wide expectations, evaluated once against the total row count.
DATASET_WIDE = frozenset({"expect_table_row_count_to_be_between", "expect_table_row_count_to_equal"})
#: Expectations about the schema only: evaluated once, on a zero-row frame with every column.
SCHEMA_ONLY = frozenset(
    {
        "expect_column_to_exist",
        "expect_table_columns_to_match_set",
        "expect_table_columns_to_match_ordered_list",
        "expect_table_column_count_to_equal",
        "expect_table_column_count_to_be_between",
    }
)
#: kwargs that name columns, checked against the shard before GX runs.
COLUMN_KWARGS = ("column", "column_A", "column_B")


def suite_path(name: str, *, directory: Path | None = None) -> Path:
    """Path of suite ``name`` (the tenant spec's ``quality_suite``) in ``include/expectations``.

    The name must match :data:`aifactory.layout.NAME_RE`, so it can never point outside the folder.
    """
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(f"quality suite name {shown(name)} is not valid; use a-z, 0-9, '_' and '-'")
    path = suite_file(name, directory)
    if not path.is_file():
        raise InputError(
            f"quality suite {shown(name)} does not exist ({path}); check the tenant spec's quality_suite"
        )
    return path
def load_suite(suite_path: Path) -> dict[str, Any]:
    """Read a suite file; InputError if it is not a JSON object with an ``expectations`` list."""
    path = Path(suite_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"expectation suite {path} does not exist; check the tenant spec's quality_suite"
        ) from None
    except ValueError as exc:
        raise InputError(f"expectation suite {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise InputError(f"expectation suite {path} must be a JSON object with an 'expectations' list")
    data.setdefault("name", path.stem)
    return data


class _Missing(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _substitute(value: Any, params: dict[str, Any]) -> Any:
    if isinstance(value, str):
        m = _TEMPLATE_RE.match(value)
        if not m:
            return value
        if m.group(1) not in params:
            raise _Missing(m.group(1))
        return params[m.group(1)]
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            spliced = isinstance(item, str) and _TEMPLATE_RE.match(item)
            sub = _substitute(item, params)
            if spliced and isinstance(sub, list):
                out.extend(sub)
            else:
                out.append(sub)
        return out
    if isinstance(value, dict):
        return {k: _substitute(v, params) for k, v in value.items()}
    return value


def expand_suite(suite: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    """Resolve templates and expand list-valued ``column`` entries (pure; no GX import).

    Returns ``[{"type", "kwargs", "meta"}]`` in suite order. Raises :class:`InputError` for a
    missing parameter, a malformed entry or a column name that is not a string.
    """
    name = suite.get("name", "suite")
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(suite.get("expectations", [])):
        where = f"expectation suite {shown(name)} entry #{i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise InputError(f"{where} must be an object with a string 'type'")
        kwargs = entry.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise InputError(f"{where} ({entry['type']}): 'kwargs' must be an object")
        try:
            resolved = _substitute(kwargs, params)
        except _Missing as missing:
            raise InputError(
                f"{where} ({entry['type']}) needs the parameter {shown(missing.name)}, which this run "
                f"does not set; add {shown(missing.name)} to the hyperparameters"
            ) from None
        meta = dict(entry.get("meta") or {})
        columns = resolved.get("column")
        if isinstance(columns, list):
            expanded = [dict(resolved, column=c) for c in columns]
            meta.setdefault("expanded_from", kwargs.get("column"))
        else:
            expanded = [resolved]
        for kw in expanded:
            for key in COLUMN_KWARGS:
                if key in kw and not (isinstance(kw[key], str) and kw[key]):
                    raise InputError(
                        f"{where} ({entry['type']}): {key} must be a non-empty column name, "
                        f"got {shown(kw[key])}; check the hyperparameters"
                    )
            out.append({"type": entry["type"], "kwargs": kw, "meta": dict(meta)})
    return out


def suite_parameters(suite: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The run parameters the suite's templates name, with their values (e.g. ``label_column``).

    Two runs whose suite uses the same parameters with the same values judge a dataset version the
    same way, so they share one stored verdict; a different label column is a different verdict.
    """
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            m = _TEMPLATE_RE.match(value)
            if m:
                names.add(m.group(1))
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    for entry in suite.get("expectations", []):
        if isinstance(entry, dict):
            walk(entry.get("kwargs"))
    return {n: params[n] for n in sorted(names) if n in params}


def suite_params_digest(suite_sha256: str, used: dict[str, Any]) -> str:
    """sha256 of the suite file's digest and the parameters it used: one stored verdict each
    (``aifactory.layout.quality_result_key``). The suite's own digest is in it so that an edited
    suite file never lands on the verdict of its earlier text."""
    body = json.dumps({"suite_sha256": suite_sha256, "params": used}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def describe(exp: dict[str, Any]) -> str:
    """``type(column='name')`` for messages; the column name escaped (it is user-chosen)."""
    kw = exp["kwargs"]
    col = next((f"{k}={shown(kw[k])}" for k in COLUMN_KWARGS if k in kw), None)
    return f"{exp['type']}({col})" if col else exp["type"]


def referenced_columns(kwargs: dict[str, Any]) -> list[str]:
    """Columns an expectation runs on. (``column_list``/``column_set`` of table expectations are
    compared by GX itself: a mismatch there is the finding, not a reason to skip.)"""
    return [kwargs[k] for k in COLUMN_KWARGS if isinstance(kwargs.get(k), str)]


def columns_of(exp: dict[str, Any]) -> list[str] | None:
    """Every column an expectation reads, or ``None`` when it may read any (table-level)."""
    kw = exp["kwargs"]
    cols = referenced_columns(kw)
    if isinstance(kw.get("column_list"), list):
        cols += [c for c in kw["column_list"] if isinstance(c, str)]
    return cols or None


def unique_columns(exp: dict[str, Any]) -> list[str] | None:
    """The columns of a dataset-wide uniqueness expectation (``None``: not one)."""
    if exp["type"] == "expect_column_values_to_be_unique" and isinstance(exp["kwargs"].get("column"), str):
        return [exp["kwargs"]["column"]]
    if exp["type"] == "expect_compound_columns_to_be_unique" and isinstance(exp["kwargs"].get("column_list"), list):
        return [c for c in exp["kwargs"]["column_list"] if isinstance(c, str)]
    return None
