"""Ingest and quality gate against a real S3 server (moto's server mode; no mocks).

Normally the S3 endpoint is the local stack's (``s3_client`` from tests/conftest.py brings it up).
To run these tests without the stack, start an S3 server yourself and point at it::

    moto_server -H 127.0.0.1 -p 5599 &
    AIFP_TEST_S3_ENDPOINT=http://127.0.0.1:5599 pytest tests/integration/test_ingest_quality_s3.py

Each test works under a fresh tenant id, so runs against a long-lived stack never collide.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aifactory.errors import InputError, QualityGateFailed
from aifactory.ingest import ingest_dataset
from aifactory.manifest import DatasetManifest, sha256_bytes
from aifactory.quality import validate_dataset, write_quality_result
from aifactory.s3 import (
    download_to,
    get_bytes,
    list_keys,
    make_client,
    object_exists,
    put_bytes,
    upload_file,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IRIS = (REPO / "include" / "sample_data" / "iris.csv").read_bytes()
SUITE = REPO / "include" / "expectations" / "tabular_default.json"
PARAMS = {
    "label_column": "species",
    "feature_columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
}
BUCKET = os.environ.get("AIFP_TEST_S3_BUCKET", "aifactory")


@pytest.fixture(scope="module")
def s3(request: pytest.FixtureRequest) -> Any:
    endpoint = os.environ.get("AIFP_TEST_S3_ENDPOINT")
    if endpoint:
        client = make_client(
            endpoint_url=endpoint,
            access_key=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        )
    else:
        client = request.getfixturevalue("s3_client")
    try:
        client.head_bucket(Bucket=BUCKET)
    except Exception:
        client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def tenant() -> str:
    return f"it{uuid.uuid4().hex[:10]}"


class _Calls:
    """Counts write requests through botocore's event hooks (the real client, no mocking)."""

    WRITES = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "CopyObject")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.ops: list[str] = []

    def _hook(self, model: Any, **_: Any) -> None:
        self.ops.append(model.name)

    def __enter__(self) -> _Calls:
        self.client.meta.events.register("before-call.s3", self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.meta.events.unregister("before-call.s3", self._hook)

    @property
    def writes(self) -> list[str]:
        return [op for op in self.ops if op in self.WRITES]


def _upload(s3: Any, tenant: str, name: str, data: bytes) -> str:
    s3.put_object(Bucket=BUCKET, Key=f"{tenant}/raw/{name}", Body=data)
    return f"s3://{BUCKET}/{tenant}/raw/{name}"


def _ingest(s3: Any, tenant: str, uri: str, tmp_path: Path, **kw: Any) -> tuple[DatasetManifest, list[str]]:
    logs: list[str] = []
    m = ingest_dataset(s3, source_uri=uri, bucket=BUCKET, tenant=tenant, workdir=tmp_path / "wd", log=logs.append, **kw)
    return m, logs


def _datasets(s3: Any, tenant: str) -> list[str]:
    return list_keys(s3, BUCKET, f"{tenant}/datasets/")


def _validate(s3: Any, m: DatasetManifest, tmp_path: Path, *, suite: Path = SUITE, params: dict = PARAMS) -> dict:
    return validate_dataset(
        s3, bucket=BUCKET, manifest=m, dataset_prefix=m.prefix, suite_path=suite, params=params,
        workdir=tmp_path / "q", log=lambda _m: None,
    )


# ---------------------------------------------------------------------------------------------
# Ingest
# ---------------------------------------------------------------------------------------------


def test_csv_ingest_publishes_shards_then_manifest(s3, tenant, tmp_path):
    uri = _upload(s3, tenant, "iris.csv", IRIS)
    m, logs = _ingest(s3, tenant, uri, tmp_path)
    assert (m.tenant, m.name, m.rows) == (tenant, "iris", 150)
    assert m.version.startswith("v-") and m.prefix == f"{tenant}/datasets/iris/{m.version}/"
    assert [c["name"] for c in m.schema] == ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]
    assert m.sources == [{"uri": uri, "etag": m.sources[0]["etag"], "bytes": len(IRIS), "sha256": sha256_bytes(IRIS)}]
    # the published manifest is the returned one, and every shard matches its digest
    published = DatasetManifest.from_json(get_bytes(s3, BUCKET, m.prefix + "manifest.json"))
    assert published == m
    for f in m.files:
        data = get_bytes(s3, BUCKET, m.prefix + f.path)
        assert sha256_bytes(data) == f.sha256 and len(data) == f.bytes
        assert pq.read_table(io.BytesIO(data)).num_rows == f.rows
    assert sorted(_datasets(s3, tenant)) == sorted([m.prefix + "manifest.json", *(m.prefix + f.path for f in m.files)])
    assert any("published" in line for line in logs)
    # scratch space is cleaned up
    assert list((tmp_path / "wd").iterdir()) == []


def test_reingest_is_idempotent_and_uploads_nothing(s3, tenant, tmp_path):
    uri = _upload(s3, tenant, "iris.csv", IRIS)
    first, _ = _ingest(s3, tenant, uri, tmp_path)
    with _Calls(s3) as calls:
        again, logs = _ingest(s3, tenant, uri, tmp_path)
    assert again == first
    # one HEAD of the source and one GET of the manifest: nothing downloaded, nothing written
    assert calls.ops == ["HeadObject", "GetObject"] and calls.writes == []
    assert any("already published" in line for line in logs)
    # changed bytes under the same key: new ETag, new version
    changed = _upload(s3, tenant, "iris.csv", IRIS.replace(b"setosa", b"setosa2", 1))
    third, _ = _ingest(s3, tenant, changed, tmp_path)
    assert third.version != first.version and third.rows == 150


def test_jsonl_and_gzip_jsonl(s3, tenant, tmp_path):
    rows = [{"x": i, "y": i * 0.5, "label": "ab"[i % 2]} for i in range(40)]
    body = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    m1, _ = _ingest(s3, tenant, _upload(s3, tenant, "events.jsonl", body), tmp_path)
    m2, _ = _ingest(s3, tenant, _upload(s3, tenant, "events2.ndjson.gz", gzip.compress(body)), tmp_path)
    assert m1.rows == m2.rows == 40
    assert {c["name"] for c in m1.schema} == {"x", "y", "label"}
    assert m2.name == "events2"


def test_parquet_ingest_and_sharding(s3, tenant, tmp_path):
    table = pa.table({"a": list(range(1000)), "b": [float(i) for i in range(1000)], "label": ["k"] * 1000})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    m, _ = _ingest(s3, tenant, _upload(s3, tenant, "big.parquet", buf.getvalue()), tmp_path,
                   row_group_rows=100, shard_rows=400)
    assert [f.path for f in m.files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [f.rows for f in m.files] == [400, 400, 200] and m.rows == 1000
    # quality over several shards (row count is summed, counts aggregate)
    summary = _validate(s3, m, tmp_path, params={"label_column": "label", "feature_columns": ["a", "b"]})
    assert summary["success"] and summary["rows"] == 1000 and summary["shards"] == 3


def test_folder_ingest_skips_markers_and_detects_drift(s3, tenant, tmp_path):
    _upload(s3, tenant, "parts/a.csv", b"x,label\n1,a\n2,b\n")
    _upload(s3, tenant, "parts/b.csv", b"x,label\n3,a\n")
    _upload(s3, tenant, "parts/_SUCCESS", b"")
    m, _ = _ingest(s3, tenant, f"s3://{BUCKET}/{tenant}/raw/parts/", tmp_path)
    assert m.name == "parts" and m.rows == 3 and len(m.sources) == 2
    _upload(s3, tenant, "drift/a.csv", b"x,label\n1,a\n")
    _upload(s3, tenant, "drift/b.csv", b"x,target\n1,a\n")
    with pytest.raises(InputError, match="schema drift"):
        _ingest(s3, tenant, f"s3://{BUCKET}/{tenant}/raw/drift/", tmp_path)


def test_missing_object_and_folder_hint(s3, tenant, tmp_path):
    with pytest.raises(InputError, match=r"no object at s3://.*/raw/nope.csv; upload the dataset first or fix dataset_uri"):
        _ingest(s3, tenant, f"s3://{BUCKET}/{tenant}/raw/nope.csv", tmp_path)
    with pytest.raises(InputError, match="no object at"):
        _ingest(s3, tenant, f"s3://{BUCKET}/{tenant}/raw/nofolder/", tmp_path)
    _upload(s3, tenant, "dir/a.csv", b"x\n1\n")
    with pytest.raises(InputError, match="end the URI with '/'"):
        _ingest(s3, tenant, f"s3://{BUCKET}/{tenant}/raw/dir", tmp_path)


def test_malformed_csv_publishes_nothing(s3, tenant, tmp_path):
    uri = _upload(s3, tenant, "bad.csv", b"a,b,c\n1,2,3\n4,PRIVATE\n")
    with pytest.raises(InputError) as err:
        _ingest(s3, tenant, uri, tmp_path)
    assert uri in str(err.value) and "line 3" in str(err.value) and "PRIVATE" not in str(err.value)
    assert _datasets(s3, tenant) == []


def test_zero_byte_object(s3, tenant, tmp_path):
    uri = _upload(s3, tenant, "empty.csv", b"")
    with pytest.raises(InputError, match="is empty \\(0 bytes\\)"):
        _ingest(s3, tenant, uri, tmp_path)


def test_unknown_extension(s3, tenant, tmp_path):
    uri = _upload(s3, tenant, "data.xlsx", b"PK...")
    with pytest.raises(InputError, match="cannot tell the format"):
        _ingest(s3, tenant, uri, tmp_path)


@pytest.mark.parametrize("path", ["{other}/raw/iris.csv", "{tenant}/datasets/x/v/part-00000.parquet",
                                  "{tenant}/raw/../../{other}/raw/iris.csv"])
def test_uri_outside_tenant_area(s3, tenant, tmp_path, path):
    other = f"ot{uuid.uuid4().hex[:8]}"
    s3.put_object(Bucket=BUCKET, Key=f"{other}/raw/iris.csv", Body=IRIS)
    with _Calls(s3) as calls, pytest.raises(InputError):
        _ingest(s3, tenant, f"s3://{BUCKET}/" + path.format(tenant=tenant, other=other), tmp_path)
    assert calls.ops == []  # refused before any request
    assert _datasets(s3, tenant) == []


def test_manifest_is_never_overwritten(s3, tenant, tmp_path):
    key = f"{tenant}/datasets/x/v-1/manifest.json"
    assert put_bytes(s3, BUCKET, key, b"{}", if_none_match=True) is True
    assert put_bytes(s3, BUCKET, key, b"{\"other\": 1}", if_none_match=True) is False
    assert get_bytes(s3, BUCKET, key) == b"{}"


def test_multipart_upload_and_streaming_download(s3, tenant, tmp_path):
    data = os.urandom(12 * 1024 * 1024 + 123)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    key = f"{tenant}/tmp/blob.bin"
    with _Calls(s3) as calls:
        size = upload_file(s3, src, BUCKET, key, single_put_limit=5 * 1024 * 1024, part_size=5 * 1024 * 1024)
    assert size == len(data) and calls.ops.count("UploadPart") == 3
    with _Calls(s3) as calls:
        got = download_to(s3, BUCKET, key, tmp_path / "out" / "blob.bin")
    assert calls.ops == ["GetObject"]  # one streaming GET, no ranged requests
    assert got.sha256 == sha256_bytes(data) and (tmp_path / "out" / "blob.bin").read_bytes() == data


# ---------------------------------------------------------------------------------------------
# Quality gate
# ---------------------------------------------------------------------------------------------


def test_quality_passes_on_iris_and_writes_report(s3, tenant, tmp_path):
    m, _ = _ingest(s3, tenant, _upload(s3, tenant, "iris.csv", IRIS), tmp_path)
    summary = _validate(s3, m, tmp_path)
    assert summary["success"] and summary["rows"] == 150
    assert summary["evaluated_expectations"] == 15 and summary["failed_expectations"] == 0
    key = write_quality_result(s3, bucket=BUCKET, dataset_prefix=m.prefix, summary=summary)
    assert key == m.prefix + "quality.json" and object_exists(s3, BUCKET, key)
    assert json.loads(get_bytes(s3, BUCKET, key))["success"] is True


def test_quality_fails_on_missing_label_column(s3, tenant, tmp_path):
    m, _ = _ingest(s3, tenant, _upload(s3, tenant, "iris.csv", IRIS), tmp_path)
    with pytest.raises(QualityGateFailed) as err:
        _validate(s3, m, tmp_path, params=dict(PARAMS, label_column="label"))
    msg = str(err.value)
    assert msg.startswith("Quality gate FAILED for")
    assert "expect_column_to_exist(column=label): column 'label' is missing from the dataset" in msg
    assert err.value.summary["failed_expectations"] == 2


def test_quality_fails_on_nulls_with_counts_only(s3, tenant, tmp_path):
    lines = IRIS.decode().splitlines()
    # blank the label of 3 rows and one feature of 2 rows
    for i in (1, 2, 3):
        lines[i] = lines[i].rsplit(",", 1)[0] + ","
    for i in (10, 11):
        lines[i] = "," + lines[i].split(",", 1)[1]
    m, _ = _ingest(s3, tenant, _upload(s3, tenant, "holes.csv", ("\n".join(lines) + "\n").encode()), tmp_path)
    with pytest.raises(QualityGateFailed) as err:
        _validate(s3, m, tmp_path)
    msg = str(err.value)
    assert "expect_column_values_to_not_be_null(column=species): 3 unexpected of 150 values (2.00%)" in msg
    assert "expect_column_values_to_not_be_null(column=sepal_length): 2 unexpected of 150 values" in msg
    assert "setosa" not in msg and "setosa" not in json.dumps(err.value.summary)
    # the failure report can be written beside the version too
    write_quality_result(s3, bucket=BUCKET, dataset_prefix=m.prefix, summary=err.value.summary)
    assert json.loads(get_bytes(s3, BUCKET, m.prefix + "quality.json"))["success"] is False


def test_quality_fails_on_empty_suite(s3, tenant, tmp_path):
    m, _ = _ingest(s3, tenant, _upload(s3, tenant, "iris.csv", IRIS), tmp_path)
    suite = tmp_path / "empty.json"
    suite.write_text(json.dumps({"name": "empty", "expectations": []}))
    with pytest.raises(QualityGateFailed, match="has no expectations"):
        _validate(s3, m, tmp_path, suite=suite)


def test_quality_fails_on_header_only_dataset(s3, tenant, tmp_path):
    m, _ = _ingest(s3, tenant, _upload(s3, tenant, "hdr.csv", b"sepal_length,species\n"), tmp_path)
    assert m.rows == 0 and len(m.files) == 1
    with pytest.raises(QualityGateFailed, match=r"dataset is empty \(0 rows\)"):
        _validate(s3, m, tmp_path, params={"label_column": "species", "feature_columns": ["sepal_length"]})
