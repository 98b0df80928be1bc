"""Quality gate without a server: suite templating, GX evaluation, gate failures, summaries.

Shards are served by ``_LocalStore``, an in-process stand-in for the three S3 calls the gate
makes (no server, no network); the real-S3 path is covered in tests/integration.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aifactory.data.manifest import DatasetManifest, FileEntry
from aifactory.data.quality import (
    build_gx_suite,
    expand_suite,
    format_summary,
    load_suite,
    suite_path,
    validate_dataset,
    write_quality_result,
)
from aifactory.errors import FactoryError, InputError, QualityGateFailed

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SUITE = REPO / "include" / "expectations" / "tabular_default.json"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
PARAMS = {"label_column": "species", "feature_columns": FEATURES}


class _Body(io.BytesIO):
    """A GET body: read, readinto and iter_chunks, like botocore's StreamingBody."""

    def iter_chunks(self, size: int):
        while chunk := self.read(size):
            yield chunk


class _LocalStore:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def get_object(self, *, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:
        data = self.objects[(Bucket, Key)]
        return {"Body": _Body(data), "ContentLength": len(data), "ETag": '"x"'}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:
        self.objects[(Bucket, Key)] = Body
        return {}


def _publish(store: _LocalStore, tables: list[pa.Table], *, rows: int | None = None) -> DatasetManifest:
    files = []
    for i, t in enumerate(tables):
        buf = io.BytesIO()
        pq.write_table(t, buf)
        data = buf.getvalue()
        name = f"part-{i:05d}.parquet"
        store.objects[("aifactory", f"demo/datasets/d/v-1/{name}")] = data
        files.append(FileEntry(name, len(data), hashlib.sha256(data).hexdigest(), t.num_rows))
    return DatasetManifest(
        tenant="demo", name="d", version="v-1", created_at="2025-01-01T00:00:00+00:00",
        schema=[{"name": f.name, "type": str(f.type)} for f in tables[0].schema],
        rows=sum(t.num_rows for t in tables) if rows is None else rows,
        files=files, sources=[],
    )


def _iris_table(n: int = 30, **override: list) -> pa.Table:
    cols: dict[str, list] = {
        "sepal_length": [5.0 + i % 3 for i in range(n)],
        "sepal_width": [3.0] * n,
        "petal_length": [1.5 + i % 3 for i in range(n)],
        "petal_width": [0.2] * n,
        "species": [["setosa", "versicolor", "virginica"][i % 3] for i in range(n)],
    }
    cols.update(override)
    return pa.table(cols)


def _validate(tmp_path: Path, tables: list[pa.Table], *, suite: Path = DEFAULT_SUITE, params=PARAMS, **kw):
    store = _LocalStore()
    manifest = _publish(store, tables, **kw)
    logs: list[str] = []
    summary = validate_dataset(
        store, bucket="aifactory", manifest=manifest, dataset_prefix=manifest.prefix,
        suite_path=suite, params=params, workdir=tmp_path / "wd", log=logs.append,
    )
    return summary, logs


# ---------------------------------------------------------------------------------------------
# Suite templating
# ---------------------------------------------------------------------------------------------


def test_default_suite_expands_per_feature():
    exps = expand_suite(load_suite(DEFAULT_SUITE), PARAMS)
    # row count + label exists/not-null + 3 checks per feature
    assert len(exps) == 3 + 3 * len(FEATURES)
    types_per_feature = [e["type"] for e in exps if e["kwargs"].get("column") == "petal_width"]
    assert types_per_feature == [
        "expect_column_to_exist",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_in_type_list",
    ]
    assert [e for e in exps if e["kwargs"].get("column") == "species"][0]["type"] == "expect_column_to_exist"
    assert exps[-1]["meta"]["expanded_from"] == "{feature_columns}"


def test_list_templates_are_spliced():
    suite = {"name": "s", "expectations": [
        {"type": "expect_table_columns_to_match_set",
         "kwargs": {"column_set": ["{label_column}", "{feature_columns}", "id"]}},
    ]}
    (exp,) = expand_suite(suite, PARAMS)
    assert exp["kwargs"]["column_set"] == ["species", *FEATURES, "id"]


def test_only_exact_templates_are_substituted():
    suite = {"name": "s", "expectations": [
        {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "c", "regex": "^{label_column}x$"}},
    ]}
    assert expand_suite(suite, PARAMS)[0]["kwargs"]["regex"] == "^{label_column}x$"


def test_missing_parameter_names_it():
    with pytest.raises(InputError, match="needs the parameter 'label_column'.*hyperparameters"):
        expand_suite(load_suite(DEFAULT_SUITE), {"feature_columns": FEATURES})


@pytest.mark.parametrize("bad", [None, 3, "", ["a", 1]])
def test_column_must_be_a_name(bad):
    with pytest.raises(InputError, match="non-empty column name"):
        expand_suite(load_suite(DEFAULT_SUITE), {"label_column": bad, "feature_columns": FEATURES}
                     if not isinstance(bad, list) else {"label_column": "y", "feature_columns": bad})


@pytest.mark.parametrize("doc", ['{"expectations": 1}', "[]", "nope"])
def test_malformed_suite_file(tmp_path, doc):
    p = tmp_path / "s.json"
    p.write_text(doc)
    with pytest.raises(InputError, match="expectation suite"):
        load_suite(p)


def test_missing_suite_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_suite(tmp_path / "nope.json")


def test_bad_expectation_type_or_kwargs_is_refused():
    with pytest.raises(InputError, match="expect_nonsense.*not a valid expectation"):
        build_gx_suite([{"type": "expect_nonsense", "kwargs": {}, "meta": {}}], name="s")
    with pytest.raises(InputError, match="expect_column_values_to_not_be_null"):
        build_gx_suite([{"type": "expect_column_values_to_not_be_null", "kwargs": {"colum": "x"}, "meta": {}}],
                       name="s")


# ---------------------------------------------------------------------------------------------
# Gate
# ---------------------------------------------------------------------------------------------


def test_clean_dataset_passes_across_shards(tmp_path):
    summary, logs = _validate(tmp_path, [_iris_table(6), _iris_table(6)])
    assert summary["success"] is True
    assert summary["rows"] == 12 and summary["shards"] == 2
    assert summary["failed_expectations"] == 0
    # row count is dataset-wide: 6 rows per shard would fail a min of 10
    rc = summary["expectations"][0]
    assert rc["type"] == "expect_table_row_count_to_be_between" and rc["observed_value"] == 12
    nn = [e for e in summary["expectations"] if e["type"] == "expect_column_values_to_not_be_null"][0]
    assert nn["element_count"] == 12 and nn["unexpected_count"] == 0
    json.dumps(summary)  # serialisable
    assert any("PASSED" in line for line in logs)


def test_nulls_fail_with_counts_and_no_values(tmp_path):
    labels = ["SECRETLABEL"] * 27 + [None] * 3
    with pytest.raises(QualityGateFailed) as err:
        _validate(tmp_path, [_iris_table(30, species=labels)])
    msg = str(err.value)
    assert "FAILED" in msg
    assert "expect_column_values_to_not_be_null(column='species'): 3 unexpected of 30 values (10.00%)" in msg
    assert "SECRETLABEL" not in msg and "SECRETLABEL" not in json.dumps(err.value.summary)
    assert err.value.summary["failed_expectations"] == 1


def test_missing_label_column_is_named(tmp_path):
    table = _iris_table(30).drop_columns(["species"])
    with pytest.raises(QualityGateFailed) as err:
        _validate(tmp_path, [table])
    msg = str(err.value)
    assert "expect_column_to_exist(column='species'): column 'species' is missing" in msg
    assert "expect_column_values_to_not_be_null(column='species'): column 'species' is missing" in msg


def test_non_numeric_feature_fails_type_check(tmp_path):
    with pytest.raises(QualityGateFailed, match=r"in_type_list\(column='sepal_width'\): observed 'str'"):
        _validate(tmp_path, [_iris_table(30, sepal_width=["wide"] * 30)])


def test_too_few_rows(tmp_path):
    with pytest.raises(QualityGateFailed, match=r"row_count_to_be_between: observed 5"):
        _validate(tmp_path, [_iris_table(5)])


def test_empty_dataset_fails_even_with_lenient_suite(tmp_path):
    suite = tmp_path / "lenient.json"
    suite.write_text(json.dumps({"name": "lenient", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "{label_column}"}}]}))
    with pytest.raises(QualityGateFailed, match=r"dataset is empty \(0 rows\)"):
        _validate(tmp_path, [_iris_table(0)], suite=suite)


def test_empty_suite_fails(tmp_path):
    suite = tmp_path / "empty.json"
    suite.write_text(json.dumps({"name": "empty", "expectations": []}))
    with pytest.raises(QualityGateFailed, match="has no expectations"):
        _validate(tmp_path, [_iris_table(30)], suite=suite)


def test_suite_that_expands_to_nothing_fails(tmp_path):
    suite = tmp_path / "feat.json"
    suite.write_text(json.dumps({"name": "feat", "expectations": [
        {"type": "expect_column_to_exist", "kwargs": {"column": "{feature_columns}"}}]}))
    with pytest.raises(QualityGateFailed, match="has no expectations"):
        _validate(tmp_path, [_iris_table(30)], suite=suite, params={"feature_columns": []})


@pytest.mark.parametrize(
    "entry, says",
    [
        # the mean of a string column raises inside the metric computation
        ({"type": "expect_column_mean_to_be_between", "kwargs": {"column": "species", "min_value": 1}},
         "cannot be computed on column 'species'"),
        # a missing column inside column_list (not pre-checked) raises inside GX
        ({"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["species", "nope"]}},
         'column "nope"'),
    ],
)
def test_exception_inside_expectation_is_reported_as_error(tmp_path, entry, says):
    # An exception must read as an evaluation error, not as a data finding, and fail the gate.
    suite = tmp_path / "raises.json"
    suite.write_text(json.dumps({"name": "raises", "expectations": [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}}, entry]}))
    with pytest.raises(QualityGateFailed) as err:
        _validate(tmp_path, [_iris_table(30)], suite=suite)
    assert "ERROR while evaluating (not a data finding)" in str(err.value)
    assert says in str(err.value)
    failed = [e for e in err.value.summary["expectations"] if not e["success"]]
    assert len(failed) == 1 and says in failed[0]["error"]
    assert "unexpected_count" not in failed[0]


def test_manifest_row_mismatch_fails(tmp_path):
    with pytest.raises(QualityGateFailed, match="shards hold 30 rows but the manifest says 31"):
        _validate(tmp_path, [_iris_table(30)], rows=31)


def test_corrupt_shard_is_detected(tmp_path):
    store = _LocalStore()
    manifest = _publish(store, [_iris_table(30)])
    key = ("aifactory", "demo/datasets/d/v-1/part-00000.parquet")
    store.objects[key] = store.objects[key][:-1] + b"X"
    with pytest.raises(FactoryError, match="does not match its manifest sha256"):
        validate_dataset(store, bucket="aifactory", manifest=manifest, dataset_prefix=manifest.prefix,
                         suite_path=DEFAULT_SUITE, params=PARAMS, workdir=tmp_path)


def test_write_quality_result_per_suite_and_params(tmp_path):
    from aifactory.layout import quality_result_key

    store = _LocalStore()
    summary, _ = _validate(tmp_path, [_iris_table(30)])
    verdict = write_quality_result(store, bucket="aifactory", dataset_prefix="demo/datasets/d/v-1", summary=summary)
    key = quality_result_key("demo/datasets/d/v-1/", "tabular_default", summary["params_digest"])
    assert verdict["report_key"] == key and verdict["verdict"] == "passed"
    body = store.objects[("aifactory", key)]
    assert verdict["report_sha256"] == hashlib.sha256(body).hexdigest() and json.loads(body)["success"] is True
    assert summary["suite_params"] == PARAMS
    # another label column is another verdict, at another key; the manifest is never written
    other, _ = _validate(tmp_path, [_iris_table(30, label=["a"] * 30)], params=dict(PARAMS, label_column="label"))
    assert other["params_digest"] != summary["params_digest"]
    assert not any(k.endswith("manifest.json") for _, k in store.objects)


def test_format_summary_is_readable():
    summary = {
        "suite": "s", "success": False, "rows": 10, "shards": 1,
        "dataset": {"tenant": "demo", "name": "iris", "version": "v-1"},
        "evaluated_expectations": 3, "successful_expectations": 0, "failed_expectations": 3,
        "problems": ["the dataset is empty (0 rows); upload data"],
        "expectations": [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "y"}, "column": "y",
             "success": False, "unexpected_count": 2, "element_count": 10, "unexpected_percent": 20.0},
            {"type": "expect_column_to_exist", "kwargs": {"column": "z"}, "success": False,
             "missing_columns": ["z"]},
            {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 10, "max_value": None},
             "success": False, "observed_value": 0},
        ],
    }
    text = format_summary(summary)
    lines = text.splitlines()
    assert lines[0].startswith("Quality gate FAILED for demo/iris/v-1 (suite s): 3 of 3 expectations failed")
    assert "  - the dataset is empty (0 rows); upload data" in lines
    assert "  - expect_column_values_to_not_be_null(column='y'): 2 unexpected of 10 values (20.00%)" in lines
    assert "  - expect_column_to_exist(column='z'): column 'z' is missing from the dataset" in lines
    assert "  - expect_table_row_count_to_be_between: observed 0, expected min_value=10, max_value=None" in lines
    assert lines[-1].startswith("Fix the dataset")


def test_suite_path_resolves_and_confines_names(tmp_path):
    assert suite_path("tabular_default") == DEFAULT_SUITE
    for bad in ["../tenants/demo", "Tabular", "", "a/b"]:
        with pytest.raises(InputError, match="not valid"):
            suite_path(bad)
    with pytest.raises(InputError, match="does not exist"):
        suite_path("nope", directory=tmp_path)


def test_gx_does_not_fingerprint_batches():
    """GX would hash every shard (a third of the gate's time) just to label the batch."""
    from aifactory.data import quality

    quality._import_gx()
    from great_expectations.execution_engine import pandas_execution_engine as engine

    assert engine.HASH_THRESHOLD == 0


_LAZY_PROBE = """
import gc, json, sys
import pandas as pd
from aifactory.data import quality
quality._import_gx()
kinds = {name: type(sys.modules[name]).__name__ for name in quality.GX_DEFERRED_IMPORTS}
finder_left = any(type(f).__name__ == "_DeferredFinder" for f in sys.meta_path)
gc_state = [gc.isenabled(), gc.get_freeze_count() > 10000]
context = quality._ephemeral_context()
batch_def = context.data_sources.add_pandas("d").add_dataframe_asset("a").add_batch_definition_whole_dataframe("w")
suite = quality.build_gx_suite(quality.expand_suite({"name": "kl", "expectations": [{
    "type": "expect_column_kl_divergence_to_be_less_than",
    "kwargs": {"column": "x", "partition_object": {"bins": [0, 1, 2], "weights": [0.5, 0.5]}, "threshold": 0.1},
}]}, {}), name="kl")
verdicts = []
for values in ([0.5] * 50 + [1.5] * 50, [0.5] * 95 + [1.5] * 5):
    result = quality._run_gx(batch_def, pd.DataFrame({"x": values}), suite)[0].to_json_dict()
    verdicts.append([result["success"], bool(result["exception_info"].get("raised_exception"))])
print(json.dumps({"kinds": kinds, "finder_left": finder_left, "gc": gc_state, "verdicts": verdicts,
                  "after": type(sys.modules["scipy.stats"]).__name__}))
"""


@pytest.mark.parametrize("fast", ["1", "0"])
def test_gx_fast_import_keeps_gx_working(fast):
    """GX's scipy.stats and altair are lazy modules (a second off every quality task's start) that
    still work when an expectation needs them: the KL-divergence expectation, which calls
    scipy.stats, passes on matching data and fails on skewed data. The collector is running again
    after the import, with the import's objects frozen. A fresh interpreter, as GX may already be
    imported in this one; AIFP_GX_FAST_IMPORT=0 imports GX plainly."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, AIFP_GX_FAST_IMPORT=fast)
    out = subprocess.run([sys.executable, "-c", _LAZY_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    expected_kind = "_LazyModule" if fast == "1" else "module"
    assert probe["kinds"] == {"scipy.stats": expected_kind, "altair": expected_kind}
    assert probe["finder_left"] is False
    assert probe["gc"] == [True, fast == "1"]
    assert probe["verdicts"] == [[True, False], [False, False]]
    assert probe["after"] == "module"  # used, so loaded for real
