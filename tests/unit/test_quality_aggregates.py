"""Column aggregates are judged on the whole dataset, exactly, not shard by shard.

Shards are served by the in-process store of tests/unit/test_quality.py (no server)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from aifactory.data.quality import aggregates
from aifactory.errors import QualityGateFailed
from tests.unit.test_quality import _validate


def _suite(tmp_path: Path, *entries: dict) -> Path:
    path = tmp_path / "agg.json"
    path.write_text(json.dumps({"name": "agg", "expectations": list(entries)}))
    return path


def _x(*shards: list) -> list[pa.Table]:
    return [pa.table({"x": s}) for s in shards]


def _judge(tmp_path: Path, tables: list[pa.Table], *entries: dict) -> dict:
    try:
        summary, _ = _validate(tmp_path, tables, suite=_suite(tmp_path, *entries), params={})
    except QualityGateFailed as err:
        return err.summary
    return summary


STDEV_MAX_1 = {"type": "expect_column_stdev_to_be_between", "kwargs": {"column": "x", "max_value": 1.0}}
MEAN_4_6 = {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "x", "min_value": 4, "max_value": 6}}


def test_stdev_bound_that_every_shard_passes_fails_the_dataset(tmp_path):
    # each shard alone: sigma 0.7 <= 1 (GX passes it); the column [0, 1, 10, 11]: sigma 5.8
    for shard in ([0.0, 1.0], [10.0, 11.0]):
        assert _judge(tmp_path, _x(shard), STDEV_MAX_1)["success"] is True
    summary = _judge(tmp_path, _x([0.0, 1.0], [10.0, 11.0]), STDEV_MAX_1)
    assert summary["success"] is False
    (exp,) = summary["expectations"]
    assert exp["success"] is False and exp["judged_on"] == "judged on all 4 rows" and "error" not in exp
    loose = dict(STDEV_MAX_1, kwargs={"column": "x", "min_value": 5.8, "max_value": 5.81})
    assert _judge(tmp_path, _x([0.0, 1.0], [10.0, 11.0]), loose)["success"] is True  # sample sigma, as pandas


def test_mean_bound_that_every_shard_fails_passes_the_dataset(tmp_path):
    for shard in ([0, 0], [10, 10]):
        assert _judge(tmp_path, _x(shard), MEAN_4_6)["success"] is False
    assert _judge(tmp_path, _x([0, 0], [10, 10]), MEAN_4_6)["success"] is True


def test_quantiles_and_median_across_shards_match_pandas_on_the_whole_column(tmp_path):
    shards = [[1.0, 2.0, 3.0, None], [100.0, 101.0, 102.0, float("nan")], [-5.0, 7.5]]
    whole = pd.Series([v for s in shards for v in s if v is not None]).dropna()
    qs = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0]
    exact = [float(v) for v in whole.quantile(qs, interpolation="nearest")]
    ranges = [[v, v] for v in exact]
    quant = {"type": "expect_column_quantile_values_to_be_between",
             "kwargs": {"column": "x", "quantile_ranges": {"quantiles": qs, "value_ranges": ranges}}}
    median = {"type": "expect_column_median_to_be_between",
              "kwargs": {"column": "x", "min_value": whole.median(), "max_value": whole.median()}}
    assert _judge(tmp_path, _x(*shards), quant, median)["success"] is True
    # the median of each shard (2, 101, 1.25) is not the column's (5.25): a shard-wise gate fails it
    assert whole.median() == 5.25
    off = dict(quant, kwargs={"column": "x", "quantile_ranges": {"quantiles": [0.5], "value_ranges": [[2.0, 2.0]]}})
    assert _judge(tmp_path, _x(*shards), off)["success"] is False


@pytest.mark.parametrize("method", ["nearest", "linear", "lower", "higher", "midpoint"])
@pytest.mark.parametrize("n", [1, 2, 7, 10, 1001])
def test_exact_selection_matches_pandas(tmp_path, monkeypatch, method, n):
    monkeypatch.setattr(aggregates, "CHUNK", 64)  # force the radix passes over the spill file
    rng = np.random.default_rng(n)
    for values in (rng.normal(0, 1e6, n), rng.integers(-50, 50, n)):
        acc = aggregates.ColumnAggregates("x", {"column.quantile_values"}, tmp_path, n + (values.dtype.kind == "i"))
        half = n // 2
        acc.add(pa.chunked_array([values[:half]], type=pa.from_numpy_dtype(values.dtype)))
        acc.add(pa.chunked_array([values[half:]], type=pa.from_numpy_dtype(values.dtype)))
        qs = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
        assert acc.quantiles(qs, method) == pytest.approx(list(pd.Series(values).quantile(qs, interpolation=method)))


def test_unique_proportion_and_distinct_values_across_shards(tmp_path, monkeypatch):
    tables = [pa.table({"x": ["a", "b", None]}), pa.table({"x": ["a", "b"]})]
    prop = {"type": "expect_column_proportion_of_unique_values_to_be_between",
            "kwargs": {"column": "x", "min_value": 0.9}}
    for t in tables:  # every shard alone: all values distinct
        assert _judge(tmp_path, [t], prop)["success"] is True
    assert _judge(tmp_path, tables, prop)["success"] is False  # 2 distinct of 4 non-null
    exact = dict(prop, kwargs={"column": "x", "min_value": 0.5, "max_value": 0.5})
    assert _judge(tmp_path, tables, exact)["success"] is True
    # the same through the hash-partitioned spill of distinct values
    monkeypatch.setattr(aggregates, "DISTINCT_IN_MEMORY", 1)
    count = {"type": "expect_column_unique_value_count_to_be_between", "kwargs": {"column": "x", "min_value": 2,
                                                                                  "max_value": 2}}
    mode = {"type": "expect_column_most_common_value_to_be_in_set", "kwargs": {"column": "x", "value_set": ["a"]}}
    ties = dict(mode, kwargs={"column": "x", "value_set": ["a"], "ties_okay": True})
    equal = {"type": "expect_column_distinct_values_to_equal_set", "kwargs": {"column": "x", "value_set": ["a", "b"]}}
    summary = _judge(tmp_path, tables, exact, count, mode, ties, equal)
    assert [e["success"] for e in summary["expectations"]] == [True, True, False, True, True]


def test_aggregate_error_and_whole_column_expectations_on_shards(tmp_path):
    mean_of_text = {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "x", "min_value": 0}}
    summary = _judge(tmp_path, [pa.table({"x": ["a"]})], mean_of_text)
    assert "cannot be computed on column 'x'" in summary["expectations"][0]["error"]
    kl = {"type": "expect_column_values_to_be_increasing", "kwargs": {"column": "x"}}
    assert _judge(tmp_path, _x([1, 2]), kl)["success"] is True  # one shard: judged by GX on all of it
    refused = _judge(tmp_path, _x([1, 2], [3, 4]), kl)["expectations"][0]
    assert refused["success"] is False and "cannot be judged exactly" in refused["error"]


def test_column_name_with_a_newline_forges_no_log_line(tmp_path):
    from tests.unit.test_quality import _iris_table

    label = "species\nquality: PASSED forged"
    with pytest.raises(QualityGateFailed) as err:
        _validate(tmp_path, [_iris_table(30)], params={"label_column": label, "feature_columns": []})
    # the gate's log lines, as a log file would hold them
    summary = err.value.summary
    from aifactory.data.quality import compact_summary, format_summary

    for text in (compact_summary(summary), format_summary(summary), str(err.value)):
        assert not any(line.startswith("quality: PASSED forged") for line in text.splitlines())
        assert "species\\nquality: PASSED forged" in text
