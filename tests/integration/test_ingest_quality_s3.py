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

from aifactory.data.ingest import ingest_dataset
from aifactory.data.manifest import DatasetManifest, load_manifest, sha256_bytes
from aifactory.data.quality import validate_dataset, write_quality_result
from aifactory.data.s3 import (
    download_bytes,
    download_to,
    get_bytes,
    list_keys,
    make_client,
    object_exists,
    put_file,
    put_if_absent,
    upload_file,
)
from aifactory.errors import InputError, QualityGateFailed
from aifactory.layout import dataset_manifest_key, quality_result_key

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
        self.keys: list[tuple[str, str]] = []

    def _hook(self, model: Any, params: Any = None, **_: Any) -> None:
        self.ops.append(model.name)
        self.keys.append((model.name, (params or {}).get("Key", "")))

    def __enter__(self) -> _Calls:
        self.client.meta.events.register("before-parameter-build.s3", self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.meta.events.unregister("before-parameter-build.s3", self._hook)

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
    # the downloaded source is recorded with our own sha256 of exactly the bytes read
    assert m.sources[0]["sha256"] == sha256_bytes(buf.getvalue()) and m.sources[0]["bytes"] == len(buf.getvalue())
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
    with pytest.raises(InputError, match=r"no object at 's3://.*/raw/nope.csv'; upload the dataset first or fix dataset_uri"):
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
    key = dataset_manifest_key(tenant, "x", "v-1")
    assert put_if_absent(s3, BUCKET, key, b"{}", content_type="application/json") is True
    assert put_if_absent(s3, BUCKET, key, b"{\"other\": 1}", content_type="application/json") is False
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
    with _Calls(s3) as calls:
        body, digest = download_bytes(s3, BUCKET, key)  # into memory: several reads into one buffer
    assert calls.ops == ["GetObject"]
    assert digest == sha256_bytes(data) and body == data


def test_put_file_returns_the_sha256_the_request_was_signed_with(s3, tenant, tmp_path, monkeypatch):
    """The shard hash in a manifest is the PUT's own signed payload hash; unsigned, it is computed."""
    import hashlib

    import boto3
    from botocore.config import Config

    import aifactory.data.s3

    data = os.urandom(3 * 1024 * 1024 + 7)
    src = tmp_path / "shard.bin"
    src.write_bytes(b"skip" + data)
    sent: list[str] = []
    s3.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(
        request.headers["X-Amz-Content-SHA256"].decode()), unique_id="test-signed-payload")

    def no_second_pass(*args):
        raise AssertionError("put_file hashed the file again although the request carried its sha256")

    try:
        with open(src, "rb") as fh, monkeypatch.context() as m:
            m.setattr(aifactory.data.s3.hashlib, "sha256", no_second_pass)  # botocore holds its own reference
            fh.seek(4)  # from the file's position on
            digest = put_file(s3, BUCKET, f"{tenant}/tmp/signed.bin", fh, len(data))
    finally:
        s3.meta.events.unregister("before-send.s3.PutObject", unique_id="test-signed-payload")
    assert digest == sha256_bytes(data) == hashlib.sha256(data).hexdigest() == sent[-1]
    assert get_bytes(s3, BUCKET, f"{tenant}/tmp/signed.bin") == data

    # A client that does not sign payloads sends UNSIGNED-PAYLOAD: the file is hashed instead.
    creds = s3._request_signer._credentials
    unsigned = boto3.client(
        "s3", endpoint_url=s3.meta.endpoint_url, region_name="us-east-1", aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path", "payload_signing_enabled": False},
                      request_checksum_calculation="when_required"),
    )
    with open(src, "rb") as fh:
        fh.seek(4)
        assert put_file(unsigned, BUCKET, f"{tenant}/tmp/unsigned.bin", fh, len(data)) == sha256_bytes(data)
        fh.seek(4)
        with pytest.raises(OSError, match="changed while uploading"):
            put_file(unsigned, BUCKET, f"{tenant}/tmp/unsigned.bin", fh, len(data) - 1)
    assert get_bytes(s3, BUCKET, f"{tenant}/tmp/unsigned.bin") == data


# ---------------------------------------------------------------------------------------------
# Quality gate
# ---------------------------------------------------------------------------------------------


def test_quality_passes_on_iris_and_writes_report(s3, tenant, tmp_path):
    m, _ = _ingest(s3, tenant, _upload(s3, tenant, "iris.csv", IRIS), tmp_path)
    summary = _validate(s3, m, tmp_path)
    assert summary["success"] and summary["rows"] == 150
    assert summary["evaluated_expectations"] == 15 and summary["failed_expectations"] == 0
    verdict = write_quality_result(s3, bucket=BUCKET, dataset_prefix=m.prefix, summary=summary)
    key = quality_result_key(m.prefix, "tabular_default", summary["params_digest"])
    assert verdict["report_key"] == key and object_exists(s3, BUCKET, key)
    assert json.loads(get_bytes(s3, BUCKET, key))["success"] is True


def test_quality_fails_on_missing_label_column(s3, tenant, tmp_path):
    m, _ = _ingest(s3, tenant, _upload(s3, tenant, "iris.csv", IRIS), tmp_path)
    with pytest.raises(QualityGateFailed) as err:
        _validate(s3, m, tmp_path, params=dict(PARAMS, label_column="label"))
    msg = str(err.value)
    assert msg.startswith("Quality gate FAILED for")
    assert "expect_column_to_exist(column='label'): column 'label' is missing from the dataset" in msg
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
    assert "expect_column_values_to_not_be_null(column='species'): 3 unexpected of 150 values (2.00%)" in msg
    assert "expect_column_values_to_not_be_null(column='sepal_length'): 2 unexpected of 150 values" in msg
    assert "setosa" not in msg and "setosa" not in json.dumps(err.value.summary)
    # the failure report can be written beside the version too
    verdict = write_quality_result(s3, bucket=BUCKET, dataset_prefix=m.prefix, summary=err.value.summary)
    assert verdict["verdict"] == "failed"
    assert json.loads(get_bytes(s3, BUCKET, verdict["report_key"]))["success"] is False


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


# ---------------------------------------------------------------------------------------------
# Issue 4: compressed sources, every bad input, dataset-wide checks, verdict in the manifest
# ---------------------------------------------------------------------------------------------


def _zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


def _jsonl() -> bytes:
    rows = [line.split(",") for line in IRIS.decode().splitlines()[1:]]
    return "".join(
        json.dumps({"sepal_length": float(r[0]), "sepal_width": float(r[1]), "petal_length": float(r[2]),
                    "petal_width": float(r[3]), "species": r[4]}) + "\n" for r in rows
    ).encode()


@pytest.mark.parametrize(
    "name, data",
    [
        ("iris.csv.gz", lambda: gzip.compress(IRIS)),
        ("iris.csv.zst", lambda: _zstd(IRIS)),
        ("iris.jsonl.zst", lambda: _zstd(_jsonl())),
        ("iris.ndjson.gz", lambda: gzip.compress(_jsonl())),
    ],
)
def test_compressed_sources(s3, tenant, tmp_path, name, data):
    m, _ = _ingest(s3, tenant, _upload(s3, tenant, name, data()), tmp_path)
    assert m.rows == 150 and m.name == "iris"
    assert _validate(s3, m, tmp_path)["success"]


def test_non_utf8_csv_publishes_nothing(s3, tenant, tmp_path):
    uri = _upload(s3, tenant, "latin1.csv", "name,city\nJosé,Zürich\n".encode("latin-1"))
    with pytest.raises(InputError, match="not valid UTF-8") as err:
        _ingest(s3, tenant, uri, tmp_path)
    assert uri in str(err.value) and "Z" not in str(err.value).split("UTF-8")[0].replace(uri, "")
    assert _datasets(s3, tenant) == []


def test_schema_drift_publishes_nothing(s3, tenant, tmp_path):
    _upload(s3, tenant, "parts/a.csv", b"x,y\n1,2\n")
    _upload(s3, tenant, "parts/b.csv", b"x,z\n3,4\n")
    with pytest.raises(InputError, match="schema drift.*b.csv.*a.csv"):
        _ingest(s3, tenant, f"s3://{BUCKET}/{tenant}/raw/parts/", tmp_path)
    assert _datasets(s3, tenant) == []


def test_zero_byte_object_in_folder_and_missing_prefix(s3, tenant, tmp_path):
    _upload(s3, tenant, "z/a.csv", b"x\n1\n")
    _upload(s3, tenant, "z/b.csv", b"")
    with pytest.raises(InputError, match="b.csv' is empty"):
        _ingest(s3, tenant, f"s3://{BUCKET}/{tenant}/raw/z/", tmp_path)
    with pytest.raises(InputError, match="no object at"):
        _ingest(s3, tenant, f"s3://{BUCKET}/{tenant}/raw/never-uploaded/", tmp_path)
    assert _datasets(s3, tenant) == []


@pytest.mark.parametrize("bad", ["{t}/raw/../raw/iris.csv", "{t}/raw/./iris.csv", "{t}/raw/ir\x1bis.csv",
                                 "{t}/raw/iris.csv\n", "{t}/raw//iris.csv", "{t}/raw/a\\b.csv"])
def test_traversal_and_control_characters_are_refused_before_any_request(s3, tenant, tmp_path, bad):
    with _Calls(s3) as calls, pytest.raises(InputError, match="invalid S3 URI|whitespace"):
        _ingest(s3, tenant, f"s3://{BUCKET}/" + bad.format(t=tenant), tmp_path)
    assert calls.ops == []


def test_control_character_in_a_listed_key_is_refused(s3, tenant, tmp_path):
    _upload(s3, tenant, "f/good.csv", b"x\n1\n")
    _upload(s3, tenant, "f/b\x07d.csv", b"x\n2\n")
    with pytest.raises(InputError, match="control characters"):
        _ingest(s3, tenant, f"s3://{BUCKET}/{tenant}/raw/f/", tmp_path)
    assert _datasets(s3, tenant) == []


def test_failed_conversion_leaves_no_uploaded_shards(s3, tenant, tmp_path):
    # many good rows (several shards uploaded while converting), then a malformed one
    good = b"a,b\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(5000))
    uri = _upload(s3, tenant, "late.csv", good + b"1,2,3\n")
    with pytest.raises(InputError, match="line 5002"):
        _ingest(s3, tenant, uri, tmp_path, row_group_rows=500, shard_rows=1000)
    assert _datasets(s3, tenant) == []


def test_streamed_csv_widened_late_is_read_again_from_the_store(s3, tenant, tmp_path, monkeypatch):
    from aifactory.data import ingest

    # small segments: the CSV streams from the GET in many pieces; the float in the last one
    # widens column n, and the conversion restarts with a second GET of the same (pinned) object
    monkeypatch.setattr(ingest.limits, "READ_BLOCK_SIZE", 4096)
    body = b"n,label\n" + b"".join(b"%d,k%d\n" % (i, i % 3) for i in range(20000)) + b"0.5,k0\n"
    uri = _upload(s3, tenant, "late-float.csv", body)
    with _Calls(s3) as calls:
        m, logs = _ingest(s3, tenant, uri, tmp_path, row_group_rows=4000, shard_rows=8000)
    assert calls.keys.count(("GetObject", f"{tenant}/raw/late-float.csv")) == 2
    assert any("widened to double" in line for line in logs)
    assert m.rows == 20001 and [f.rows for f in m.files] == [8000, 8000, 4001]
    assert m.sources[0]["sha256"] == sha256_bytes(body) and m.sources[0]["bytes"] == len(body)
    table = pa.concat_tables([pq.read_table(io.BytesIO(get_bytes(s3, BUCKET, m.prefix + f.path))) for f in m.files])
    assert table.schema.field("n").type == pa.float64()
    assert table.column("n").to_pylist()[-2:] == [19999.0, 0.5]


def test_source_replaced_while_ingesting_publishes_nothing(s3, tenant, tmp_path, monkeypatch):
    from aifactory.data.ingest import pipeline

    uri = _upload(s3, tenant, "moving.csv", IRIS)
    real = pipeline.compute_version

    def version_then_replace(sources, options):  # the object changes after it was listed
        version = real(sources, options)
        _upload(s3, tenant, "moving.csv", IRIS.replace(b"setosa", b"SETOSA"))
        return version

    monkeypatch.setattr(pipeline, "compute_version", version_then_replace)
    with pytest.raises(InputError, match="moving.csv' changed while it was being ingested"):
        _ingest(s3, tenant, uri, tmp_path)
    assert _datasets(s3, tenant) == []


def test_uniqueness_is_checked_across_shards(s3, tenant, tmp_path):
    # id 7 appears in the first and in the last shard: unique within each shard, not in the dataset
    ids = list(range(1000)) + [7]
    data = b"id,label\n" + b"".join(b"%d,x\n" % i for i in ids)
    m, _ = _ingest(s3, tenant, _upload(s3, tenant, "ids.csv", data), tmp_path, row_group_rows=100, shard_rows=200)
    assert len(m.files) == 6
    suite = tmp_path / "unique.json"
    suite.write_text(json.dumps({"name": "unique", "expectations": [
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}},
        {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["id", "label"]}}]}))
    with pytest.raises(QualityGateFailed) as err:
        _validate(s3, m, tmp_path, suite=suite, params={})
    exps = err.value.summary["expectations"]
    assert [e["unexpected_count"] for e in exps] == [2, 2]
    assert all(e["element_count"] == 1001 for e in exps)


def test_exception_inside_expectation_fails_the_gate(s3, tenant, tmp_path):
    m, _ = _ingest(s3, tenant, _upload(s3, tenant, "iris.csv", IRIS), tmp_path)
    suite = tmp_path / "raises.json"
    suite.write_text(json.dumps({"name": "raises", "expectations": [
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "species", "min_value": 1}}]}))
    with pytest.raises(QualityGateFailed, match="ERROR while evaluating"):
        _validate(s3, m, tmp_path, suite=suite)


def test_concurrent_verdicts_with_other_label_columns_leave_the_manifest_unchanged(s3, tenant, tmp_path):
    """Two runs judge one shared version at once, with different label columns: each gets its own
    verdict at its own key, and the manifest's bytes are the ones ingest wrote."""
    from concurrent.futures import ThreadPoolExecutor

    data = IRIS.replace(b"species", b"kind", 1)  # header: ...,kind
    data = b"\n".join(line + (b",label2" if n == 0 else b",") for n, line in enumerate(data.splitlines())) + b"\n"
    m, _ = _ingest(s3, tenant, _upload(s3, tenant, "iris.csv", data), tmp_path)
    key = dataset_manifest_key(tenant, m.name, m.version)
    before = sha256_bytes(get_bytes(s3, BUCKET, key))

    def judge(label: str) -> dict:
        try:
            summary = _validate(s3, m, tmp_path / label, params=dict(PARAMS, label_column=label))
        except QualityGateFailed as err:
            summary = err.summary
        return write_quality_result(s3, bucket=BUCKET, dataset_prefix=m.prefix, summary=summary)

    with ThreadPoolExecutor(max_workers=2) as pool:
        good, bad = pool.map(judge, ["kind", "label2"])  # label2 is empty in every row
    assert (good["verdict"], bad["verdict"]) == ("passed", "failed")
    assert good["params_digest"] != bad["params_digest"] and good["report_key"] != bad["report_key"]
    for verdict in (good, bad):
        body = get_bytes(s3, BUCKET, verdict["report_key"])
        assert sha256_bytes(body) == verdict["report_sha256"]
        assert json.loads(body)["success"] is (verdict["verdict"] == "passed")
    assert sha256_bytes(get_bytes(s3, BUCKET, key)) == before
    assert load_manifest(s3, BUCKET, m.prefix).quality is None  # type: ignore[union-attr]


def test_tenant_spec_picks_the_dataset_suite(s3, tenant, tmp_path):
    from aifactory.data.quality import suite_path
    from aifactory.tenants import load_tenant

    spec = load_tenant("demo")
    assert spec.suite_for("iris") == "iris" and spec.suite_for("other") == spec.quality_suite
    m, _ = _ingest(s3, tenant, _upload(s3, tenant, "iris.csv", IRIS), tmp_path)
    summary = _validate(s3, m, tmp_path, suite=suite_path(spec.suite_for(m.name)))
    assert summary["suite"] == "iris" and summary["success"]
    bad = IRIS.replace(b",setosa\n", b",setosaa\n", 1)
    m2, _ = _ingest(s3, tenant, _upload(s3, tenant, "iris2.csv", bad), tmp_path, dataset_name="iris")
    with pytest.raises(QualityGateFailed, match=r"in_set\(column='species'\): 1 unexpected of 150") as err:
        _validate(s3, m2, tmp_path, suite=suite_path(spec.suite_for(m2.name)))
    assert "setosaa" not in str(err.value)
