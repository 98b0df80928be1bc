"""Ingest without a server: URI rules, names, versions, and local CSV/JSONL/Parquet conversion."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aifactory.data import ingest
from aifactory.data.ingest import (
    SourceObject,
    SourceReadError,
    byte_stream_split_columns,
    check_dataset_name,
    compute_version,
    convert_to_parquet,
    derive_dataset_name,
    detect_format,
    dictionary_columns,
    ingest_options,
)
from aifactory.data.ingest.csv_reader import _csv_segments
from aifactory.data.readahead import prefetched
from aifactory.data.s3 import ObjectInfo, check_tenant_uri, parse_s3_uri
from aifactory.errors import InputError

# ---------------------------------------------------------------------------------------------
# URIs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri, bucket, key",
    [
        ("s3://aifactory/demo/raw/iris.csv", "aifactory", "demo/raw/iris.csv"),
        ("s3://aifactory/demo/raw/folder/", "aifactory", "demo/raw/folder/"),
        ("s3://my.bucket-1/a b/c (1).csv", "my.bucket-1", "a b/c (1).csv"),
        ("s3://aifactory", "aifactory", ""),
        ("s3://aifactory/", "aifactory", ""),
    ],
)
def test_parse_valid_uris(uri, bucket, key):
    assert parse_s3_uri(uri) == (bucket, key)


@pytest.mark.parametrize(
    "uri, rule",
    [
        ("s3://aifactory/demo/raw/../../other/raw/x.csv", "'..' path segment"),
        ("s3://aifactory/demo/raw/./x.csv", "'.' path segment"),
        ("s3://aifactory/demo/raw/..", "'..' path segment"),
        ("s3://aifactory/demo//raw/x.csv", "empty path segment"),
        ("s3://aifactory//demo/raw/x.csv", "starts with '/'"),
        ("s3://aifactory/demo/raw/x\n#SBATCH --uid=0", "control characters"),
        ("s3://aifactory/demo/raw/x\x00.csv", "control characters"),
        ("s3://aifactory/demo/raw/x\x1b[31m.csv", "control characters"),
        ("s3://aifactory/demo\\raw\\x.csv", "backslash"),
        ("S3://aifactory/demo/raw/x.csv", "must start with 's3://'"),
        ("https://aifactory/demo/raw/x.csv", "must start with 's3://'"),
        ("/demo/raw/x.csv", "must start with 's3://'"),
        (" s3://aifactory/demo/raw/x.csv", "whitespace"),
        ("s3:///demo/raw/x.csv", "bucket name is missing"),
        ("s3://Ai_Factory/demo/raw/x.csv", "bucket name"),
        ("s3://ab/demo/raw/x.csv", "bucket name"),
        ("s3://192.168.0.1/demo/raw/x.csv", "bucket name"),
        ("s3://aifactory/" + "a" * 1100, "longer than 1024"),
    ],
)
def test_parse_refuses_bad_uris(uri, rule):
    with pytest.raises(InputError) as err:
        parse_s3_uri(uri)
    msg = str(err.value)
    assert rule in msg
    assert "\n" not in msg and "\x1b" not in msg  # odd characters are shown escaped (repr)


def test_non_string_uri_is_refused():
    with pytest.raises(InputError):
        parse_s3_uri(None)  # type: ignore[arg-type]


def test_tenant_uri_inside_raw_area():
    assert check_tenant_uri("s3://aifactory/demo/raw/iris.csv", bucket="aifactory", tenant="demo") == (
        "demo/raw/iris.csv"
    )
    assert check_tenant_uri("s3://aifactory/demo/raw/f/", bucket="aifactory", tenant="demo") == "demo/raw/f/"


@pytest.mark.parametrize(
    "uri",
    [
        "s3://aifactory/other/raw/iris.csv",  # another tenant
        "s3://aifactory/demo2/raw/iris.csv",  # a tenant whose name starts like ours
        "s3://aifactory/demo/datasets/iris/v-1/part-00000.parquet",  # not the raw area
        "s3://otherbucket/demo/raw/iris.csv",  # another bucket
        "s3://aifactory/demo/rawx/iris.csv",
        "s3://aifactory/demo/raw",
    ],
)
def test_tenant_uri_outside_is_refused(uri):
    with pytest.raises(InputError, match="outside this tenant's upload area.*s3://aifactory/demo/raw/"):
        check_tenant_uri(uri, bucket="aifactory", tenant="demo")


def test_tenant_uri_traversal_out_of_raw_is_refused_before_containment():
    with pytest.raises(InputError, match=r"'\.\.' path segment"):
        check_tenant_uri("s3://aifactory/demo/raw/../../other/raw/x.csv", bucket="aifactory", tenant="demo")


def test_whole_raw_area_is_refused():
    with pytest.raises(InputError, match="whole upload area"):
        check_tenant_uri("s3://aifactory/demo/raw/", bucket="aifactory", tenant="demo")


# ---------------------------------------------------------------------------------------------
# Formats, names, versions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, kind, compression",
    [
        ("a/b.csv", "csv", None),
        ("a/B.CSV", "csv", None),
        ("a/b.csv.gz", "csv", "gzip"),
        ("a/b.jsonl", "jsonl", None),
        ("a/b.ndjson.gz", "jsonl", "gzip"),
        ("a/b.parquet", "parquet", None),
    ],
)
def test_detect_format(key, kind, compression):
    fmt = detect_format(key)
    assert (fmt.kind, fmt.compression) == (kind, compression)


@pytest.mark.parametrize("key", ["a/b.xlsx", "a/b", "a/b.json", "a/b.gz"])
def test_unknown_extension_is_input_error(key):
    with pytest.raises(InputError, match="cannot tell the format.*supported"):
        detect_format(key)


@pytest.mark.parametrize(
    "key, name",
    [
        ("demo/raw/iris.csv", "iris"),
        ("demo/raw/Iris Data (v2).CSV", "iris_data_v2"),
        ("demo/raw/sales.2024.csv.gz", "sales_2024"),
        ("demo/raw/events/", "events"),
        ("demo/raw/x/Über-Daten.parquet", "ber-daten"),
    ],
)
def test_derive_dataset_name(key, name):
    assert derive_dataset_name(key) == name


def test_underivable_name_asks_for_dataset_name():
    with pytest.raises(InputError, match="pass dataset_name"):
        derive_dataset_name("demo/raw/___.csv")


@pytest.mark.parametrize("bad", ["", "Iris", "../x", "a/b", "-a", "a" * 65, "a b", "a\nb"])
def test_explicit_dataset_name_is_validated(bad):
    with pytest.raises(InputError, match="dataset_name"):
        check_dataset_name(bad)


def test_version_is_deterministic_and_order_free():
    opts = ingest_options(row_group_rows=10, shard_rows=100)
    a = [ObjectInfo("demo/raw/f/a.csv", 10, "e1"), ObjectInfo("demo/raw/f/b.csv", 20, "e2")]
    v1 = compute_version(a, opts)
    assert v1 == compute_version(list(reversed(a)), dict(opts))
    assert v1.startswith("v-") and len(v1) == 18
    # any change in ETag, size, key or options gives another version
    assert compute_version([a[0], ObjectInfo("demo/raw/f/b.csv", 20, "e3")], opts) != v1
    assert compute_version([a[0], ObjectInfo("demo/raw/f/b.csv", 21, "e2")], opts) != v1
    assert compute_version([a[0], ObjectInfo("demo/raw/f/c.csv", 20, "e2")], opts) != v1
    assert compute_version(a, ingest_options(row_group_rows=10, shard_rows=200)) != v1


# ---------------------------------------------------------------------------------------------
# Local conversion
# ---------------------------------------------------------------------------------------------


def _convert(tmp_path: Path, files: dict[str, bytes], **kw):
    srcs = []
    for name, data in files.items():
        p = tmp_path / name
        p.write_bytes(data)
        srcs.append(SourceObject.local(p, f"s3://aifactory/demo/raw/{name}"))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    logs: list[str] = []
    schema, paths, rows = convert_to_parquet(srcs, detect_format(srcs[0].name), out, log=logs.append, **kw)
    return schema, paths, rows, logs


def _read(paths):
    return pa.concat_tables([pq.read_table(p) for p in paths])


def test_csv_to_parquet(tmp_path):
    schema, paths, rows, _ = _convert(tmp_path, {"a.csv": b"x,y,label\n1,2.5,a\n3,4.5,b\n"})
    assert rows == [2]
    assert schema.names == ["x", "y", "label"]
    assert str(schema.field("x").type) == "int64"
    t = _read(paths)
    assert t.column("label").to_pylist() == ["a", "b"]
    assert pq.ParquetFile(paths[0]).metadata.row_group(0).column(0).compression == "ZSTD"


def test_shards_roll_and_row_groups_are_bounded(tmp_path):
    body = b"x,y\n" + b"".join(f"{i},{i * 2}\n".encode() for i in range(1000))
    _schema, paths, rows, _ = _convert(tmp_path, {"a.csv": body}, row_group_rows=100, shard_rows=300)
    assert [p.name for p in paths] == [f"part-{i:05d}.parquet" for i in range(4)]
    assert rows == [300, 300, 300, 100]
    md = pq.ParquetFile(paths[0]).metadata
    assert md.num_row_groups == 3 and md.row_group(0).num_rows == 100
    assert _read(paths).column("x").to_pylist() == list(range(1000))


def test_csv_type_widening_after_first_block(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest.limits, "READ_BLOCK_SIZE", 1024)
    body = b"n,s\n" + b"1,2\n" * 2000 + b"1.5,x\n"
    schema, paths, rows, logs = _convert(tmp_path, {"a.csv": body})
    assert str(schema.field("n").type) == "double"
    assert str(schema.field("s").type) == "string"
    assert sum(rows) == 2001
    assert any("widened" in line for line in logs)
    assert _read(paths).column("n").to_pylist()[-1] == 1.5


def test_malformed_csv_names_object_and_line_without_values(tmp_path):
    body = b"a,b,c\n1,2,3\nSECRET,5\n6,7,8\n"
    with pytest.raises(InputError) as err:
        _convert(tmp_path, {"bad.csv": body})
    msg = str(err.value)
    assert "s3://aifactory/demo/raw/bad.csv" in msg
    assert "line 3" in msg and "2 fields" in msg
    assert "SECRET" not in msg


def test_non_utf8_csv_is_refused(tmp_path):
    with pytest.raises(InputError, match="not valid UTF-8"):
        _convert(tmp_path, {"l1.csv": "name,v\nM\u00fcller,1\n".encode("latin-1")})


def test_non_utf8_in_a_later_block_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest.limits, "READ_BLOCK_SIZE", 1024)
    body = b"name,v\n" + b"abc,1\n" * 1000 + "M\u00fcller,2\n".encode("latin-1")
    with pytest.raises(InputError, match="does not parse even as text; check the file's encoding"):
        _convert(tmp_path, {"l1.csv": body})


def test_header_only_csv_gives_one_empty_shard(tmp_path):
    schema, paths, rows, _ = _convert(tmp_path, {"h.csv": b"a,b\n"})
    assert rows == [0] and len(paths) == 1
    assert pq.read_table(paths[0]).num_rows == 0


def test_gzip_csv(tmp_path):
    _schema, paths, rows, _ = _convert(tmp_path, {"a.csv.gz": gzip.compress(b"a,b\n1,2\n")})
    assert rows == [1]


def test_corrupt_gzip_is_input_error(tmp_path):
    with pytest.raises(InputError, match="a.csv.gz"):
        _convert(tmp_path, {"a.csv.gz": b"not gzip at all"})


def test_several_csv_files_share_types(tmp_path):
    _s, paths, rows, _ = _convert(tmp_path, {"a.csv": b"x,y\n1,a\n", "b.csv": b"x,y\n2.5,b\n"})
    assert sum(rows) == 2
    assert _read(paths).column("x").to_pylist() == [1.0, 2.5]


def test_plain_and_gzip_csv_mix(tmp_path):
    _s, paths, rows, _ = _convert(tmp_path, {"a.csv": b"x\n1\n", "b.csv.gz": gzip.compress(b"x\n2\n")})
    assert _read(paths).column("x").to_pylist() == [1, 2]


def test_schema_drift_between_csv_files(tmp_path):
    with pytest.raises(InputError, match="schema drift.*b.csv.*a.csv"):
        _convert(tmp_path, {"a.csv": b"x,y\n1,2\n", "b.csv": b"x,z\n1,2\n"})


def _printable_line(message: str) -> bool:
    return "\n" not in message and "\x1b" not in message and "\u202e" not in message


def test_column_names_in_a_drift_message_are_escaped(tmp_path):
    # quoted CSV header names may hold a newline, an ANSI escape or a bidi override
    forged = b'x,"y\ningest: published s3://x \x1b[31m\xe2\x80\xae"\n1,2\n'
    with pytest.raises(InputError, match="schema drift") as err:
        _convert(tmp_path, {"a.csv": b"x,y\n1,2\n", "b.csv": forged})
    assert _printable_line(str(err.value)) and "\\n" in str(err.value) and "\\x1b" in str(err.value)


def test_a_widened_column_name_is_escaped_in_the_log(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest.limits, "READ_BLOCK_SIZE", 1024)
    body = b'"n\x1b[2J",l\n' + b"".join(b"%d,a\n" % i for i in range(400)) + b"0.5,a\n"
    *_, logs = _convert(tmp_path, {"a.csv": body})
    widened = [line for line in logs if "widened" in line]
    assert widened and all(_printable_line(line) for line in logs) and "\\x1b[2J" in widened[0]


def test_an_explicit_dataset_name_is_shown_escaped():
    with pytest.raises(InputError) as err:
        check_dataset_name("a\nb\u202e")
    assert _printable_line(str(err.value)) and "'a\\nb\\u202e'" in str(err.value)


def test_jsonl(tmp_path):
    lines = b"".join(json.dumps({"x": i, "label": "k"}).encode() + b"\n" for i in range(5))
    schema, paths, rows, _ = _convert(tmp_path, {"a.jsonl": lines})
    assert rows == [5] and set(schema.names) == {"x", "label"}


def test_jsonl_int_then_float_widens(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest.limits, "READ_BLOCK_SIZE", 1024)
    lines = b'{"x": 1}\n' * 1000 + b'{"x": 1.5}\n'
    schema, paths, rows, _ = _convert(tmp_path, {"a.jsonl": lines})
    assert str(schema.field("x").type) == "double" and sum(rows) == 1001


def test_invalid_jsonl(tmp_path):
    with pytest.raises(InputError, match="not valid JSON Lines"):
        _convert(tmp_path, {"a.jsonl": b'{"x": 1}\n{"x": \n'})


def test_parquet_and_parquet_drift(tmp_path):
    pq.write_table(pa.table({"x": [1, 2], "y": ["a", "b"]}), tmp_path / "p1.parquet")
    pq.write_table(pa.table({"x": [3], "y": ["c"]}), tmp_path / "p2.parquet")
    pq.write_table(pa.table({"x": [3.5], "y": ["c"]}), tmp_path / "p3.parquet")
    out = tmp_path / "out"
    out.mkdir()
    fmt = detect_format("p1.parquet")
    srcs = [SourceObject.local(tmp_path / n) for n in ("p1.parquet", "p2.parquet")]
    _schema, paths, rows = convert_to_parquet(srcs, fmt, out)
    assert sum(rows) == 3
    with pytest.raises(InputError, match=r"schema drift.*'x': int64 -> double"):
        convert_to_parquet([*srcs, SourceObject.local(tmp_path / "p3.parquet")], fmt, out)


def test_not_parquet(tmp_path):
    with pytest.raises(InputError, match="not a readable Parquet"):
        _convert(tmp_path, {"a.parquet": b"PAR1 nope"})


# ---------------------------------------------------------------------------------------------
# Streaming: segments, read-ahead, hashed sources, encodings
# ---------------------------------------------------------------------------------------------


def _segments(data: bytes, size: int) -> list[bytes]:
    import io

    return list(_csv_segments(io.BytesIO(data), size, label="s3://b/t/raw/x.csv"))


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_segments_end_at_line_ends_and_lose_nothing(newline):
    lines = [f"{i},{'x' * (i % 7)}".encode() for i in range(500)]
    data = newline.join(lines) + newline
    parts = _segments(data, 64)
    assert b"".join(parts) == data
    assert len(parts) > 10
    for part in parts:
        assert part.endswith(newline), part[-5:]


def test_last_segment_without_final_newline():
    parts = _segments(b"a,b\n1,2\n3,4", 5)
    assert b"".join(parts) == b"a,b\n1,2\n3,4" and parts[-1] == b"3,4"


def test_a_line_longer_than_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(ingest.limits, "MAX_LINE_BYTES", 100)
    with pytest.raises(InputError, match="x.csv has a line longer than"):
        _segments(b"a" * 500 + b"\n", 16)


def test_csv_split_into_many_segments_converts_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest.limits, "READ_BLOCK_SIZE", 256)
    body = b"id,v,label\r\n" + b"".join(f"{i},{i / 3:.4f},k{i % 3}\r\n".encode() for i in range(5000))
    schema, paths, rows, _ = _convert(tmp_path, {"a.csv": body}, row_group_rows=700, shard_rows=2100)
    assert sum(rows) == 5000 and rows[:2] == [2100, 2100]
    t = _read(paths)
    assert t.column("id").to_pylist() == list(range(5000))
    assert t.column("label").to_pylist()[:4] == ["k0", "k1", "k2", "k0"]


def test_prefetch_hands_on_items_then_the_error_in_order():
    def items():
        yield 1
        yield 2
        raise InputError("boom")

    got = []
    with pytest.raises(InputError, match="boom"):
        for x in prefetched(items(), depth=1):
            got.append(x)
    assert got == [1, 2]


def test_closing_a_prefetch_stops_its_thread():
    import itertools
    import threading

    gen = prefetched(itertools.count(), depth=2, name="ingest-read")
    assert next(gen) == 0
    gen.close()
    assert not [t for t in threading.enumerate() if t.name == "ingest-read"]


def test_source_records_size_and_sha256_of_a_full_read(tmp_path):
    import hashlib

    p = tmp_path / "a.csv"
    p.write_bytes(b"x\n" * 1000)
    src = SourceObject.local(p)
    with src.open() as fh:
        fh.read(10)
    assert src.digest is None  # a partial read records nothing
    assert src.finish() == (2000, hashlib.sha256(b"x\n" * 1000).hexdigest())


def test_short_read_is_a_retryable_error(tmp_path):
    import io

    src = SourceObject("s3://b/t/raw/a.csv", "a.csv", lambda: io.BytesIO(b"abc"), size=10)
    with pytest.raises(SourceReadError, match="got 3 of 10 bytes; retry"):
        src.finish()


def test_dictionary_only_for_columns_with_few_distinct_values():
    n = 1000
    t = pa.table({
        "id": list(range(n)),
        "f": [i / 7 for i in range(n)],
        "label": [f"c{i % 4}" for i in range(n)],
        "code": [i % 10 for i in range(n)],
        "empty": pa.nulls(n),
    })
    assert dictionary_columns(t) == ["label", "code", "empty"]


def test_written_shards_use_dictionaries_only_where_chosen(tmp_path):
    body = b"id,f,label\n" + b"".join(f"{i},{i / 7},c{i % 3}\n".encode() for i in range(2000))
    _schema, paths, _rows, _ = _convert(tmp_path, {"a.csv": body})
    md = pq.ParquetFile(paths[0]).metadata.row_group(0)
    encodings = {md.column(i).path_in_schema: md.column(i).encodings for i in range(md.num_columns)}
    assert "RLE_DICTIONARY" in encodings["label"]
    assert "RLE_DICTIONARY" not in encodings["f"] and "RLE_DICTIONARY" not in encodings["id"]
    # measurements (high-cardinality floats) are byte-stream-split; the values read back exactly
    assert "BYTE_STREAM_SPLIT" in encodings["f"] and "BYTE_STREAM_SPLIT" not in encodings["id"]
    assert pq.read_table(paths[0])["f"].to_pylist()[:3] == [0.0, 1 / 7, 2 / 7]


def test_only_plain_floats_are_byte_stream_split():
    schema = pa.schema([("id", pa.int64()), ("x", pa.float64()), ("y", pa.float32()), ("code", pa.float64()),
                        ("label", pa.string())])
    assert byte_stream_split_columns(schema, ["code", "label"]) == ["x", "y"]
