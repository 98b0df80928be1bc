"""Exact dataset-wide aggregates, computed while the shards stream past, with memory bounded by a shard.

Judging a column aggregate (mean, standard deviation, quantiles, distinct values, ...) shard by shard
is wrong both ways: shards [0, 1] and [10, 11] each have a standard deviation of 0.7 while the column's
is about 5.8, and a mean bound can fail every shard of a dataset whose mean is fine. So the gate
computes GX's own metrics over the WHOLE column and lets GX judge them
(:func:`aifactory.data.quality.gx.judge_on_metrics`):

* count, non-null count, sum, min, max: streamed (``pyarrow.compute`` per shard);
* mean and standard deviation: each shard's count, mean and sum of squared deviations merged with
  Chan's pairwise formula (numerically stable; the sample deviation, ``ddof=1``, as pandas);
* quantiles and the median: every non-null value is spilled to a scratch file as an order-preserving
  64-bit key; each requested rank is then selected **exactly** by four radix passes of 16 bits over the
  memory-mapped file (:func:`select_ranks`), reading :data:`CHUNK` keys at a time. No estimate, no error
  bound: the interpolation is GX's (``allow_relative_error``, default ``nearest``) applied to the exact
  neighbouring order statistics;
* distinct values (count, unique proportion, set membership, most common value): exact value counts,
  merged in memory up to :data:`DISTINCT_IN_MEMORY` distinct values, then hash-partitioned into spill
  files (equal values share a bucket) and counted bucket by bucket.

Nulls and NaN are left out of every metric, as GX's pandas engine does (NaN is null in pandas).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from aifactory.text import shown

#: GX column-aggregate expectation type -> the metrics its ``_validate`` reads.
AGGREGATE_METRICS: dict[str, tuple[str, ...]] = {
    "expect_column_mean_to_be_between": ("column.mean",),
    "expect_column_stdev_to_be_between": ("column.standard_deviation",),
    "expect_column_median_to_be_between": ("column.median",),
    "expect_column_min_to_be_between": ("column.min",),
    "expect_column_max_to_be_between": ("column.max",),
    "expect_column_sum_to_be_between": ("column.sum",),
    "expect_column_quantile_values_to_be_between": ("column.quantile_values",),
    "expect_column_proportion_of_unique_values_to_be_between": ("column.unique_proportion",),
    "expect_column_unique_value_count_to_be_between": ("column.distinct_values.count",),
    "expect_column_proportion_of_non_null_values_to_be_between": ("column.non_null_proportion",),
    "expect_column_most_common_value_to_be_in_set": ("column.most_common_value",),
    "expect_column_distinct_values_to_be_in_set": (
        "column.distinct_values.not_in_set.count", "column.distinct_values.not_in_set"),
    "expect_column_distinct_values_to_contain_set": (
        "column.distinct_values.missing_from_column.count", "column.distinct_values.missing_from_column"),
    "expect_column_distinct_values_to_equal_set": (
        "column.distinct_values.not_in_set.count", "column.distinct_values.not_in_set",
        "column.distinct_values.missing_from_column.count", "column.distinct_values.missing_from_column"),
}
#: Expectations that depend on the whole column but whose metrics are not computed here
#: (distribution tests, z-scores and outliers, which need the column's mean and deviation per row,
#: and orderings, which cross shard boundaries). Judged on a one-shard dataset; on a sharded one
#: the gate fails, naming them, instead of judging them shard by shard.
WHOLE_COLUMN_ONLY = frozenset(
    {
        "expect_column_kl_divergence_to_be_less_than",
        "expect_column_chisquare_test_p_value_to_be_greater_than",
        "expect_column_bootstrapped_ks_test_p_value_to_be_greater_than",
        "expect_column_parameterized_distribution_ks_test_p_value_to_be_greater_than",
        "expect_column_pair_cramers_phi_value_to_be_less_than",
        "expect_column_value_z_scores_to_be_less_than",
        "expect_column_values_to_not_be_outliers",
        "expect_column_values_to_be_increasing",
        "expect_column_values_to_be_decreasing",
    }
)
#: Keys read at a time from a quantile spill; distinct values kept in memory before spilling.
CHUNK = 1 << 20
DISTINCT_IN_MEMORY = 1 << 20
#: Hash buckets of a spilled distinct-value count (each ~1/buckets of the distinct values).
DISTINCT_BUCKETS = 16
_SIGN = np.uint64(1 << 63)


class _OutsideSet:
    """Stands for a most common value that is not in the expectation's value set: GX's judgement
    needs how many modes there are and which are in the set, never the others' values."""

    def __repr__(self) -> str:
        return "<value outside the set>"


class MetricError(Exception):
    """A metric cannot be computed on this column (e.g. the mean of strings)."""


def needed_metrics(exp: dict[str, Any]) -> tuple[str, ...]:
    return AGGREGATE_METRICS.get(exp["type"], ())


class ColumnAggregates:
    """Every metric the suite needs of one column, accumulated shard by shard (in shard order)."""

    def __init__(self, column: str, metrics: set[str], scratch: Path, index: int) -> None:
        self.column, self.metrics = column, metrics
        self.scratch, self.index = scratch, index
        self.rows = 0
        self.valid = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.sums: list[Any] = []
        self.lo: Any = None
        self.hi: Any = None
        self.errors: dict[str, str] = {}
        self._keys_path = scratch / f"quantile-{index}.u64"
        self._kind: str | None = None
        self._counts: Any = None  # pa.Table(v, c) while in memory
        self._buckets: dict[int, Any] = {}  # bucket -> ParquetWriter once spilled
        self._bucket_paths: dict[int, Path] = {}
        self._value_sets: list[Any] = []
        self._distinct: dict[str, dict[str, Any]] | None = None
        wants = {m.split(".")[1] for m in metrics}
        self.want_moments = bool(wants & {"mean", "standard_deviation", "sum"})
        self.want_range = bool(wants & {"min", "max"})
        self.want_quantiles = bool(wants & {"quantile_values", "median"})
        self.want_distinct = bool(wants & {"distinct_values", "unique_proportion", "most_common_value"})

    def register(self, exp: dict[str, Any]) -> None:
        """Note the value set of an expectation on this column: distinct values are folded once,
        after the last shard, for every value set at the same time."""
        self._value_sets.append(exp["kwargs"].get("value_set"))

    # -- streaming --------------------------------------------------------------------------------
    def add(self, array: Any) -> None:
        """One shard's column (a pyarrow ChunkedArray)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        self.rows += len(array)
        values = pc.drop_null(array)
        if pa.types.is_floating(values.type):
            values = values.filter(pc.invert(pc.is_nan(values)))
        n = len(values)
        self.valid += n
        if n == 0:
            return
        if self.want_moments:
            self._guard("moments", lambda: self._add_moments(values, n))
        if self.want_range:
            self._guard("range", lambda: self._add_range(values))
        if self.want_quantiles:
            self._guard("quantiles", lambda: self._add_keys(values))
        if self.want_distinct:
            self._guard("distinct", lambda: self._add_counts(values))

    def _guard(self, what: str, fn: Any) -> None:
        if what in self.errors:
            return
        try:
            fn()
        except MetricError as exc:
            self.errors[what] = str(exc)
        except Exception as exc:  # Arrow's "no kernel for type string" and the like
            msg = " ".join(str(exc).split())[:200]
            self.errors[what] = f"cannot be computed on column {shown(self.column)}: {msg}"

    def _add_moments(self, values: Any, n: int) -> None:
        import pyarrow.compute as pc

        self.sums.append(pc.sum(values).as_py())
        mean_b = pc.mean(values).as_py()
        m2_b = pc.variance(values, ddof=0).as_py() * n
        total = self.valid  # already includes this shard's n
        delta = mean_b - self.mean
        self.mean += delta * n / total
        self.m2 += m2_b + delta * delta * (total - n) * n / total

    def _add_range(self, values: Any) -> None:
        import pyarrow.compute as pc

        mm = pc.min_max(values).as_py()
        self.lo = mm["min"] if self.lo is None else min(self.lo, mm["min"])
        self.hi = mm["max"] if self.hi is None else max(self.hi, mm["max"])

    def _add_keys(self, values: Any) -> None:
        import pyarrow as pa

        t = values.type
        kind = "f" if pa.types.is_floating(t) else "i" if pa.types.is_signed_integer(t) else (
            "u" if pa.types.is_unsigned_integer(t) else None)
        if kind is None:
            raise MetricError(f"quantiles need a numeric column; {shown(self.column)} is {t}")
        if self._kind not in (None, kind):
            raise MetricError(f"column {shown(self.column)} changes type between shards")
        self._kind = kind
        arr = values.to_numpy()
        with open(self._keys_path, "ab") as fh:
            to_keys(arr, kind).tofile(fh)

    def _add_counts(self, values: Any) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        vc = pc.value_counts(values)
        table = pa.table({"v": vc.field("values"), "c": vc.field("counts")})
        if self._buckets:
            self._spill(table)
            return
        if self._counts is not None:
            merged = pa.concat_tables([self._counts, table.cast(self._counts.schema)])
            table = merged.group_by("v").aggregate([("c", "sum")]).rename_columns(["v", "c"])
        self._counts = table
        if len(table) > DISTINCT_IN_MEMORY:
            self._counts = None
            self._spill(table)

    def _spill(self, table: Any) -> None:
        import pandas as pd
        import pyarrow.parquet as pq

        bucket = pd.util.hash_array(table["v"].to_numpy(zero_copy_only=False)) % DISTINCT_BUCKETS
        for b in range(DISTINCT_BUCKETS):
            part = table.filter(bucket == b)
            if len(part) == 0:
                continue
            if b not in self._buckets:
                self._bucket_paths[b] = self.scratch / f"distinct-{self.index}-{b}.parquet"
                self._buckets[b] = pq.ParquetWriter(self._bucket_paths[b], part.schema, compression="none")
            self._buckets[b].write_table(part.cast(self._buckets[b].schema))

    # -- results ----------------------------------------------------------------------------------
    def metrics_for(self, exp: dict[str, Any]) -> dict[str, Any]:
        """The exact metrics ``exp`` needs; raises :class:`MetricError` if one cannot be computed."""
        out: dict[str, Any] = {}
        for name in needed_metrics(exp):
            out[name] = self._metric(name, exp["kwargs"])
        return out

    def _metric(self, name: str, kwargs: dict[str, Any]) -> Any:
        group = {"column.mean": "moments", "column.standard_deviation": "moments", "column.sum": "moments",
                 "column.min": "range", "column.max": "range", "column.median": "quantiles",
                 "column.quantile_values": "quantiles", "column.non_null_proportion": None}.get(name, "distinct")
        if group in self.errors:
            raise MetricError(f"{name} {self.errors[group]}")
        n = self.valid
        if name == "column.non_null_proportion":
            return n / self.rows if self.rows else 0.0
        if name == "column.mean":
            return self.mean if n else float("nan")
        if name == "column.standard_deviation":
            return math.sqrt(self.m2 / (n - 1)) if n > 1 else float("nan")
        if name == "column.sum":
            return sum(self.sums) if self.sums else 0
        if name == "column.min":
            return self.lo
        if name == "column.max":
            return self.hi
        if name == "column.median":
            return self.quantiles([0.5], "linear")[0]
        if name == "column.quantile_values":
            qr = kwargs.get("quantile_ranges") or {}
            return self.quantiles(list(qr.get("quantiles") or []), kwargs.get("allow_relative_error") or "nearest")
        return self._distinct_metric(name, kwargs)

    def quantiles(self, qs: list[float], method: str) -> list[Any]:
        """pandas' ``Series.quantile(q, interpolation=method)`` of the non-null values, exactly."""
        if method not in ("linear", "lower", "higher", "midpoint", "nearest"):
            raise MetricError(f"allow_relative_error must be one of linear, lower, higher, midpoint, nearest; got {method!r}")
        n = self.valid
        if n == 0 or self._kind is None:
            return [None] * len(qs)
        out = []
        for q in qs:
            if not 0.0 <= float(q) <= 1.0:
                raise MetricError(f"quantile {q!r} is not between 0 and 1")
            pos = (n - 1) * float(q)  # numpy's virtual index for these five methods
            if method == "nearest":  # numpy rounds the index half to even, as round() does
                out.append(select_ranks(self._keys_path, n, [min(round(pos), n - 1)], self._kind)[0])
                continue
            lo = int(math.floor(pos))
            hi = min(lo + 1, n - 1)
            a, b = select_ranks(self._keys_path, n, [lo, hi], self._kind)
            # numpy applies the method to the two neighbouring order statistics and the fraction
            # between them; doing it on exactly those two values is the full-array computation
            value = np.quantile(np.array([a, b]), pos - lo, method=method)
            out.append(value.item())
        return out

    def _bucket_tables(self) -> Any:
        import pyarrow.parquet as pq

        if self._counts is not None:
            yield self._counts
            return
        for w in self._buckets.values():
            w.close()
        self._buckets.clear()
        for b in sorted(self._bucket_paths):
            t = pq.read_table(self._bucket_paths[b])
            yield t.group_by("v").aggregate([("c", "sum")]).rename_columns(["v", "c"])
            self._bucket_paths[b].unlink()
        self._bucket_paths.clear()

    def _distinct_metric(self, name: str, kwargs: dict[str, Any]) -> Any:
        if self._distinct is None:
            self._distinct = self._fold_distinct(self._value_sets)
        d = self._distinct[_set_key(kwargs.get("value_set"))]
        n = self.valid
        if name == "column.distinct_values.count":
            return d["count"]
        if name == "column.unique_proportion":
            return d["count"] / n if n else 0
        if name == "column.most_common_value":
            return d["modes_in_set"] + [_OutsideSet() for _ in range(min(d["modes_outside"], 2))]
        if name == "column.distinct_values.not_in_set.count":
            return d["not_in_set"]
        if name == "column.distinct_values.missing_from_column.count":
            return len(d["missing"])
        return []  # the value lists: never shown (partial_unexpected_count is 0)

    def _fold_distinct(self, value_sets: list[Any]) -> dict[str, dict[str, Any]]:
        """Distinct count, and per value set: distinct values outside it, its values never seen, and
        the modes in and outside it; one pass over the (spilled) value counts."""
        import pyarrow.compute as pc

        sets: dict[str, set[Any]] = {}
        for value_set in [None, *value_sets]:
            if value_set is not None and not isinstance(value_set, list):
                raise MetricError("value_set must be a list")
            sets[_set_key(value_set)] = {v for v in (value_set or []) if not isinstance(v, (list, dict))}
        state = {k: {"not_in_set": 0, "seen": set(), "modes_in_set": [], "modes_outside": 0} for k in sets}
        count = best = 0
        for t in self._bucket_tables():
            count += len(t)
            values = t["v"].to_pylist()
            counts = t["c"].to_numpy()
            top = int(pc.max(t["c"]).as_py() or 0)
            if top > best:
                best = top
                for st in state.values():
                    st["modes_in_set"], st["modes_outside"] = [], 0
            at = counts == best if top == best and top > 0 else np.zeros(len(values), dtype=bool)
            for k, vset in sets.items():
                st = state[k]
                inside = [v in vset for v in values]
                st["not_in_set"] += len(values) - sum(inside)
                st["seen"].update(v for v, i in zip(values, inside, strict=True) if i)
                st["modes_in_set"] += [v for v, i, a in zip(values, inside, at, strict=True) if i and a]
                st["modes_outside"] += sum(1 for i, a in zip(inside, at, strict=True) if a and not i)
        self._counts = None
        return {k: {"count": count, "not_in_set": st["not_in_set"],
                    "missing": [v for v in sets[k] if v not in st["seen"]],
                    "modes_in_set": st["modes_in_set"], "modes_outside": st["modes_outside"]}
                for k, st in state.items()}


def _set_key(value_set: Any) -> str:
    return json.dumps(value_set, sort_keys=True, default=str)


def to_keys(arr: np.ndarray, kind: str) -> np.ndarray:
    """Order-preserving unsigned 64-bit keys: ``a < b`` exactly when ``key(a) < key(b)``."""
    if kind == "f":
        bits = np.ascontiguousarray(arr, dtype=np.float64).view(np.uint64)
        negative = (bits & _SIGN) != 0
        return np.where(negative, ~bits, bits | _SIGN)
    if kind == "i":
        return np.ascontiguousarray(arr, dtype=np.int64).view(np.uint64) ^ _SIGN
    return np.ascontiguousarray(arr, dtype=np.uint64)


def from_key(key: int, kind: str) -> Any:
    k = np.array([key], dtype=np.uint64)
    if kind == "f":
        bits = np.where((k & _SIGN) != 0, k ^ _SIGN, ~k)
        return bits.view(np.float64)[0].item()
    if kind == "i":
        return (k ^ _SIGN).view(np.int64)[0].item()
    return k[0].item()


def select_ranks(path: Path, n: int, ranks: list[int], kind: str) -> list[Any]:
    """The values at 0-based ``ranks`` of the sorted keys in ``path``, exactly, reading
    :data:`CHUNK` keys at a time: four passes of 16-bit radix counting per rank."""
    mm = np.memmap(path, dtype=np.uint64, mode="r", shape=(n,))
    if n <= CHUNK:
        ordered = np.sort(np.asarray(mm))
        return [from_key(int(ordered[r]), kind) for r in ranks]
    out = []
    for rank in ranks:
        prefix, mask, left = 0, 0, rank
        for shift in (48, 32, 16, 0):
            counts = np.zeros(1 << 16, dtype=np.int64)
            for start in range(0, n, CHUNK):
                chunk = mm[start:start + CHUNK]
                if mask:
                    chunk = chunk[(chunk & np.uint64(mask)) == np.uint64(prefix)]
                counts += np.bincount(((chunk >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.int64),
                                      minlength=1 << 16)
            cum = np.cumsum(counts)
            digit = int(np.searchsorted(cum, left, side="right"))
            left -= int(cum[digit - 1]) if digit else 0
            prefix |= digit << shift
            mask |= 0xFFFF << shift
        out.append(from_key(prefix, kind))
    del mm
    return out
