"""Manifests: round trip, stable bytes, digests, and refusal of malformed or newer manifests."""

from __future__ import annotations

import hashlib
import json

import pytest

from aifactory.data.manifest import (
    MANIFEST_FORMAT,
    DatasetManifest,
    FileEntry,
    sha256_bytes,
    sha256_file,
)
from aifactory.errors import InputError
from aifactory.layout import dataset_prefix


def _manifest(**over) -> DatasetManifest:
    fields = dict(
        tenant="demo",
        name="iris",
        version="v-0123456789abcdef",
        created_at="2025-01-01T00:00:00+00:00",
        schema=[{"name": "x", "type": "double"}, {"name": "y", "type": "string"}],
        rows=3,
        files=[FileEntry(path="part-00000.parquet", bytes=10, sha256="a" * 64, rows=3)],
        sources=[{"uri": "s3://aifactory/demo/raw/iris.csv", "etag": "e", "bytes": 5, "sha256": "b" * 64}],
        quality=None,
        options={"converter": 1},
    )
    fields.update(over)
    return DatasetManifest(**fields)


def test_round_trip_is_lossless():
    m = _manifest(quality={"success": True, "rows": 3})
    back = DatasetManifest.from_json(m.to_json())
    assert back == m
    assert back.files[0].rows == 3


def test_json_is_stable_sorted_and_indented():
    m = _manifest()
    text = m.to_json()
    assert text == _manifest().to_json()
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert text.startswith('{\n  "created_at"')
    assert text.endswith("\n")


def test_manifest_sha256_tracks_content():
    a, b = _manifest(), _manifest(rows=4)
    assert a.manifest_sha256 == _manifest().manifest_sha256
    assert a.manifest_sha256 != b.manifest_sha256
    assert a.manifest_sha256 == hashlib.sha256(a.to_json().encode()).hexdigest()


def test_sha256_helpers(tmp_path):
    p = tmp_path / "f.bin"
    data = b"hello" * 100_000
    p.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(p, bufsize=4096) == expected
    assert sha256_bytes(data) == expected


def test_prefix_and_totals():
    m = _manifest()
    assert m.prefix == "demo/datasets/iris/v-0123456789abcdef/"
    assert dataset_prefix("t", "n", "v") == "t/datasets/n/v/"
    assert m.total_bytes == 10


def test_rows_may_be_null_in_file_entries():
    m = _manifest(files=[FileEntry(path="p", bytes=1, sha256="c" * 64, rows=None)])
    assert DatasetManifest.from_json(m.to_json()).files[0].rows is None


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"tenant": "demo"}'])
def test_malformed_manifest_is_input_error(text):
    with pytest.raises(InputError, match="manifest"):
        DatasetManifest.from_json(text)


def test_newer_format_is_refused():
    data = json.loads(_manifest().to_json())
    data["format"] = MANIFEST_FORMAT + 1
    with pytest.raises(InputError, match="newer"):
        DatasetManifest.from_dict(data)


@pytest.mark.parametrize("path", ["../x.parquet", "a/b.parquet", "..", "", ".hidden", "x\n.parquet", "/abs"])
def test_unsafe_file_paths_are_refused(path):
    data = json.loads(_manifest().to_json())
    data["files"][0]["path"] = path
    with pytest.raises(InputError, match="unsafe file name"):
        DatasetManifest.from_dict(data)


def test_verdict_does_not_change_the_identity():
    plain = _manifest()
    judged = _manifest(quality={"verdict": "passed", "suite": "s", "report_sha256": "c" * 64})
    assert judged.manifest_sha256 == plain.manifest_sha256
    assert judged.to_json() != plain.to_json()
    assert _manifest(rows=99, quality={"verdict": "failed"}).manifest_sha256 != plain.manifest_sha256


def test_the_module_writes_no_manifest_and_keeps_no_layout_of_its_own():
    """Versions are immutable: nothing here rewrites a manifest; names come from aifactory.layout."""
    from aifactory import layout
    from aifactory.data import manifest as module

    assert not hasattr(module, "record_quality_verdict")
    assert module.MANIFEST_NAME is layout.MANIFEST_NAME and module.dataset_prefix is layout.dataset_prefix
    assert not hasattr(module, "_SAFE_FILE_RE") and not hasattr(module, "QUALITY_NAME")


def test_require_manifest_names_a_missing_version():
    from botocore.exceptions import ClientError

    from aifactory.data.manifest import load_manifest, require_manifest

    class _Store:
        def get_object(self, **_):
            raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "gone"}}, "GetObject")

    assert load_manifest(_Store(), "b", "demo/datasets/d/v-1/") is None
    with pytest.raises(InputError, match="has no manifest.json: it does not exist"):
        require_manifest(_Store(), "b", "demo/datasets/d/v-1/")
