"""Per-expectation totals over shards, buckets and exact aggregates; counts only, never values."""

from __future__ import annotations

from typing import Any

from aifactory.data.quality.gx import raised_exception
from aifactory.data.quality.suites import COLUMN_KWARGS

#: Expectations whose ``observed_value`` is metadata (a count, a dtype, column names), never a cell
#: value, so it may appear in the summary.
SAFE_OBSERVED = frozenset(
    {
        "expect_table_row_count_to_be_between",
        "expect_table_row_count_to_equal",
        "expect_table_column_count_to_be_between",
        "expect_table_column_count_to_equal",
        "expect_column_values_to_be_in_type_list",
        "expect_column_values_to_be_of_type",
    }
)


class Totals:
    """Per-expectation totals over shards."""

    def __init__(self, exp: dict[str, Any]) -> None:
        self.exp = exp
        self.success = True
        self.evaluated = False
        self.unexpected_count = 0
        self.element_count = 0
        self.missing_count = 0
        self.has_counts = False
        self.observed: list[Any] = []
        self.error: str | None = None
        self.missing_columns: list[str] = []
        #: how a dataset-wide aggregate was judged (shown with its verdict)
        self.scope: str | None = None

    def add_result(self, success: bool, result: dict[str, Any], exception: dict[str, Any] | None) -> None:
        self.evaluated = True
        raised = raised_exception(exception)
        if raised is not None:
            self.success = False
            self.error = self.error or raised
            return
        self.success = self.success and bool(success)
        if "unexpected_count" in result:
            self.has_counts = True
            self.unexpected_count += int(result.get("unexpected_count") or 0)
            self.element_count += int(result.get("element_count") or 0)
            self.missing_count += int(result.get("missing_count") or 0)
        if self.exp["type"] in SAFE_OBSERVED and "observed_value" in result:
            value = result["observed_value"]
            value = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
            if value not in self.observed:
                self.observed.append(value)

    def add_missing(self, columns: list[str]) -> None:
        self.evaluated = True
        self.success = False
        for c in columns:
            if c not in self.missing_columns:
                self.missing_columns.append(c)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.exp["type"],
            "kwargs": self.exp["kwargs"],
            "success": self.success and self.evaluated,
        }
        for k in COLUMN_KWARGS:
            if k in self.exp["kwargs"]:
                d.setdefault("column", self.exp["kwargs"][k])
        if self.has_counts:
            d["unexpected_count"] = self.unexpected_count
            d["element_count"] = self.element_count
            d["unexpected_percent"] = (
                round(100.0 * self.unexpected_count / self.element_count, 4) if self.element_count else 0.0
            )
            if self.missing_count:
                d["missing_count"] = self.missing_count
        if self.observed:
            d["observed_value"] = self.observed[0] if len(self.observed) == 1 else self.observed
        if self.scope:
            d["judged_on"] = self.scope
        if self.missing_columns:
            d["missing_columns"] = self.missing_columns
        if self.error:
            d["error"] = self.error
        if not self.evaluated:
            d["error"] = "not evaluated (GX returned no result for it)"
        return d



def apply_results(
    results: list[Any], aggs: list[Totals], expected: list[int], problems: list[str], where: str
) -> None:
    """Fold GX results (matched by ``meta.aifp_index``: GX does not keep suite order) into ``aggs``."""
    seen: set[int] = set()
    for r in results:
        d = r.to_json_dict()
        idx = (d.get("expectation_config") or {}).get("meta", {}).get("aifp_index")
        if idx is None or idx not in expected:
            continue
        seen.add(idx)
        aggs[idx].add_result(bool(d.get("success")), d.get("result") or {}, d.get("exception_info"))
    if len(seen) != len(expected):
        problems.append(
            f"GX returned {len(seen)} results for {len(expected)} expectations on {where}; "
            "the missing ones count as failed"
        )
        for idx in expected:
            if idx not in seen:
                aggs[idx].success = False

