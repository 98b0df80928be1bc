"""Ingest: turn a tenant's raw upload (CSV, JSON Lines or Parquet) into a versioned Parquet dataset.

Rules of the data, in the order the code applies them:

1. The source URI must lie inside ``s3://<bucket>/<tenant>/raw/`` (``check_tenant_uri``). It names
   one object, or a folder ending in ``/`` whose objects (recursively; names starting with ``.``
   or ``_`` such as ``_SUCCESS`` are skipped) all have the same format.
2. Formats come from the extension: ``.csv``, ``.jsonl``/``.ndjson``, ``.parquet``/``.pq``;
   ``.csv.gz``, ``.jsonl.gz`` and ``.ndjson.gz`` (gzip) and ``.csv.zst``, ``.jsonl.zst``,
   ``.ndjson.zst`` (zstd; also ``.zstd``) are decompressed on the fly.
3. The version is **content addressed**: ``v-`` + 16 hex of sha256 over the sorted source keys,
   their ETags and sizes, and the ingest options. Listing costs one request, so re-ingesting the
   same upload finds the published version and returns it without downloading anything. (An ETag
   identifies an upload, it is not a checksum: the same bytes uploaded differently give a new
   version, which is safe; the manifest records our own sha256 of every source.)
4. Each source is fetched with ONE streaming GET, pinned to the listed ETag (``If-Match``) so the
   bytes converted are the bytes the version was derived from.
5. Conversion streams record batches (never the whole table) into zstd Parquet shards
   ``part-00000.parquet`` ... with row groups of ``row_group_rows`` and a new shard every
   ``shard_rows`` rows. CSV types are inferred from the first block; when a later block does not
   fit (an integer column that turns out to hold ``1.5``) the column is widened
   (null -> int64 -> float64 -> string) and the conversion restarts, so inference never silently
   drops data. Empty CSV cells (and ``NA``, ``null``, ...: pyarrow's null markers) are nulls in
   every column, strings included, so a blank label is caught by the quality gate as missing.
   Several sources must agree on column names and order; CSV sources are read with
   the types of the first one (widened the same way), JSON Lines sources with its fields, and
   Parquet sources must have identical types. Anything else is schema drift (InputError).
6. Shards are uploaded and verified, then ``manifest.json`` is written LAST with
   ``If-None-Match: *``: a published version is never overwritten, and if another run published
   the same version first, its manifest is returned.

Errors the user can fix raise :class:`~aifactory.errors.InputError` naming the object and what to
do; messages never quote cell values.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

from aifactory.errors import InputError
from aifactory.data.manifest import (
    MANIFEST_NAME,
    DatasetManifest,
    FileEntry,
    dataset_prefix,
    load_manifest,
    sha256_bytes,
    sha256_file,
)
from aifactory.data.readahead import prefetched
from aifactory.data.s3 import (
    ObjectInfo,
    check_tenant_uri,
    format_s3_uri,
    get_object,
    head,
    is_precondition_failed,
    iter_objects,
    put_bytes,
    put_file,
    upload_file,
    validate_key,
)

if TYPE_CHECKING:
    import pyarrow as pa

Log = Callable[[str], Any]

#: Bump when the conversion changes in a way that should produce a new version for the same input.
CONVERTER_VERSION = 3  # 2: dictionary encoding only where it pays; 3: byte-stream-split floats
DEFAULT_ROW_GROUP_ROWS = 128 * 1024
DEFAULT_SHARD_ROWS = 8 * DEFAULT_ROW_GROUP_ROWS  # ~1M rows per shard
#: CSV is read in segments of about this many bytes, cut at line ends; types are inferred from the
#: first one and imposed on the rest. JSON Lines blocks have this size too.
READ_BLOCK_SIZE = 16 * 1024 * 1024
#: Each segment is parsed by Arrow's multi-threaded reader in blocks of this size: two blocks per
#: core keep every core busy, and larger blocks cost less per byte (a 2-core worker parses 4 MiB
#: blocks ~5% cheaper than 1 MiB ones). Memory is bounded by the segment (about four times its size).
PARSE_BLOCK_SIZE = max(1024 * 1024, READ_BLOCK_SIZE // (2 * (os.cpu_count() or 1)))
#: A CSV line longer than this is refused (the file is not line-oriented tabular data).
MAX_LINE_BYTES = 64 * 1024 * 1024
#: Row groups queued for the Parquet writer thread (bounds memory while reading runs ahead).
WRITE_QUEUE = 2
MAX_SOURCE_OBJECTS = 10_000
_MAX_WIDENINGS = 64

_FORMATS: dict[str, tuple[str, str | None]] = {
    ".csv": ("csv", None),
    ".csv.gz": ("csv", "gzip"),
    ".jsonl": ("jsonl", None),
    ".ndjson": ("jsonl", None),
    ".jsonl.gz": ("jsonl", "gzip"),
    ".ndjson.gz": ("jsonl", "gzip"),
    ".csv.zst": ("csv", "zstd"),
    ".csv.zstd": ("csv", "zstd"),
    ".jsonl.zst": ("jsonl", "zstd"),
    ".jsonl.zstd": ("jsonl", "zstd"),
    ".ndjson.zst": ("jsonl", "zstd"),
    ".parquet": ("parquet", None),
    ".pq": ("parquet", None),
}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class SourceFormat:
    kind: str  # "csv" | "jsonl" | "parquet"
    compression: str | None
    extension: str


def detect_format(key: str) -> SourceFormat:
    """Map an object key to its format by extension (case-insensitive); InputError if unknown."""
    lower = key.lower()
    for ext in sorted(_FORMATS, key=len, reverse=True):
        if lower.endswith(ext):
            kind, compression = _FORMATS[ext]
            return SourceFormat(kind=kind, compression=compression, extension=ext)
    known = ", ".join(sorted(_FORMATS))
    raise InputError(
        f"cannot tell the format of {key!r} from its extension; supported: {known}. "
        "Rename the file (or convert it) and upload it again"
    )


def _strip_extension(basename: str) -> str:
    lower = basename.lower()
    for ext in sorted(_FORMATS, key=len, reverse=True):
        if lower.endswith(ext):
            return basename[: -len(ext)]
    return basename.rsplit(".", 1)[0] if "." in basename else basename


def sanitize_dataset_name(raw: str) -> str:
    """Lowercase, map every character outside ``[a-z0-9_-]`` to ``_``, trim, cap at 64."""
    name = re.sub(r"[^a-z0-9_-]+", "_", raw.lower()).strip("_-")[:64].strip("_-")
    if not name:
        raise InputError(
            f"cannot derive a dataset name from {raw!r}; pass dataset_name (letters, digits, '_', '-')"
        )
    return name


def derive_dataset_name(source_key: str) -> str:
    """Dataset name from the source object's (or folder's) basename without extension."""
    base = source_key.rstrip("/").rsplit("/", 1)[-1]
    if not source_key.endswith("/"):
        base = _strip_extension(base)
    return sanitize_dataset_name(base)


def check_dataset_name(name: str) -> str:
    """An explicitly given name is validated, never silently rewritten."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InputError(
            f"dataset_name {name!r} is not allowed: use 1-64 characters from a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def ingest_options(*, row_group_rows: int, shard_rows: int) -> dict[str, Any]:
    """The options that shape the output; they are part of the version hash and the manifest."""
    return {
        "converter": CONVERTER_VERSION,
        "compression": "zstd",
        "row_group_rows": int(row_group_rows),
        "shard_rows": int(shard_rows),
    }


def compute_version(sources: list[ObjectInfo], options: dict[str, Any]) -> str:
    """Content-addressed version id: ``v-`` + 16 hex of sha256(sorted keys+ETags+sizes, options)."""
    payload = {
        "sources": [[s.key, s.etag, s.size] for s in sorted(sources, key=lambda s: s.key)],
        "options": options,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return "v-" + sha256_bytes(blob)[:16]


# --------------------------------------------------------------------------------------------
# Resolving the source
# --------------------------------------------------------------------------------------------


def resolve_sources(s3: Any, *, bucket: str, key: str, uri: str) -> tuple[list[ObjectInfo], SourceFormat]:
    """List the objects a source URI stands for and check they are usable."""
    if key.endswith("/"):
        objects = []
        for obj in iter_objects(s3, bucket, key):
            base = obj.key.rsplit("/", 1)[-1]
            if obj.key.endswith("/") or base.startswith((".", "_")):
                continue
            validate_key(obj.key, uri=format_s3_uri(bucket, obj.key))
            objects.append(obj)
            if len(objects) > MAX_SOURCE_OBJECTS:
                raise InputError(
                    f"{uri} holds more than {MAX_SOURCE_OBJECTS} objects; combine them into fewer, "
                    "larger files"
                )
        if not objects:
            raise InputError(f"no object at {uri}; upload the dataset first or fix dataset_uri")
    else:
        info = head(s3, bucket, key)
        if info is None:
            hint = ""
            if next(iter_objects(s3, bucket, key + "/"), None) is not None:
                hint = f" (there is a folder {uri}/ - end the URI with '/' to ingest the whole folder)"
            raise InputError(f"no object at {uri}; upload the dataset first or fix dataset_uri{hint}")
        objects = [info]

    formats = {detect_format(o.key) for o in objects}
    kinds = {f.kind for f in formats}
    if len(kinds) > 1:
        raise InputError(
            f"{uri} mixes formats ({', '.join(sorted(kinds))}); put one format in a dataset folder"
        )
    for obj in objects:
        if obj.size == 0:
            raise InputError(
                f"{format_s3_uri(bucket, obj.key)} is empty (0 bytes); upload the file again "
                "(the upload may have been interrupted)"
            )
    # The kind is common to all objects; compression is decided per file when converting.
    return objects, sorted(formats, key=lambda f: f.extension)[0]


# --------------------------------------------------------------------------------------------
# Writing shards
# --------------------------------------------------------------------------------------------


#: A column is dictionary-encoded when its first row group has at most this share of distinct values.
DICTIONARY_MAX_DISTINCT_SHARE = 0.25


def dictionary_columns(table: pa.Table) -> list[str]:
    """The columns worth dictionary-encoding, judged on a sample row group.

    Parquet writers try a dictionary for every column and fall back to plain encoding when it
    overflows; for high-cardinality columns (measurements, ids) that attempt costs most of the
    write time and leaves a larger file. Labels, categories and small integer codes keep it.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    limit = max(table.num_rows, 1) * DICTIONARY_MAX_DISTINCT_SHARE
    chosen = []
    for name, column in zip(table.column_names, table.columns):
        try:
            distinct = pc.count_distinct(column, mode="all").as_py()
        except pa.ArrowNotImplementedError:  # null or nested types: leave it to the writer
            distinct = 0
        if distinct <= limit:
            chosen.append(name)
    return chosen


def byte_stream_split_columns(schema: pa.Schema, dictionary: list[str]) -> list[str]:
    """Floating-point columns that are not dictionary-encoded: written BYTE_STREAM_SPLIT.

    The encoding puts the n-th byte of every value together (sign and exponent bytes, then the
    mantissa's), which zstd compresses far better than interleaved IEEE values (6% on random
    measurements, more on real ones) at no write cost, and which reads faster."""
    import pyarrow as pa

    return [f.name for f in schema if pa.types.is_floating(f.type) and f.name not in dictionary]


class _ShardWriter:
    """Buffers record batches into fixed-size row groups and rolls shards at ``shard_rows``."""

    def __init__(
        self, directory: Path, schema: pa.Schema, *, row_group_rows: int, shard_rows: int,
        on_shard: Callable[[Path, int], None] | None = None,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.directory = directory
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.shard_rows = max(shard_rows, row_group_rows)
        self.paths: list[Path] = []
        self.rows_per_shard: list[int] = []
        self._writer: Any = None
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self._on_shard = on_shard
        # Encoding and compressing Parquet (GIL released) overlaps with parsing the next blocks.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-write")
        self._pending: list[Any] = []
        self._dictionary: list[str] | None = None  # decided on the first row group, kept for all

    @property
    def total_rows(self) -> int:
        return sum(self.rows_per_shard)

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if batch.schema.metadata:
            batch = batch.replace_schema_metadata(None)
        self._buffer.append(batch)
        self._buffered += batch.num_rows
        while self._buffered >= self.row_group_rows:
            self._flush(self.row_group_rows)

    def _flush(self, rows: int) -> None:
        import pyarrow as pa

        table = pa.Table.from_batches(self._buffer, schema=self.schema)
        group, rest = table.slice(0, rows), table.slice(rows)
        self._buffer = rest.to_batches() if rest.num_rows else []
        self._buffered = rest.num_rows
        self._pending = [f for f in self._pending if not f.done() or f.result()]
        while len(self._pending) >= WRITE_QUEUE:
            self._pending.pop(0).result()  # back-pressure; re-raises a write error
        self._pending.append(self._pool.submit(self._write_group, group))

    def _drain(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def _write_group(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        if self._writer is None or self.rows_per_shard[-1] + table.num_rows > self.shard_rows:
            self._close_writer()
            path = self.directory / f"part-{len(self.paths):05d}.parquet"
            if self._dictionary is None:
                self._dictionary = dictionary_columns(table)
            self._writer = pq.ParquetWriter(
                path, self.schema, compression="zstd", use_dictionary=self._dictionary,
                use_byte_stream_split=byte_stream_split_columns(self.schema, self._dictionary),
            )
            self.paths.append(path)
            self.rows_per_shard.append(0)
        self._writer.write_table(table, row_group_size=self.row_group_rows)
        self.rows_per_shard[-1] += table.num_rows

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            if self._on_shard is not None:
                self._on_shard(self.paths[-1], self.rows_per_shard[-1])

    def close(self) -> None:
        if self._buffered:
            self._flush(self._buffered)
        self._drain()
        if not self.paths:
            # Zero rows: still publish one empty shard so the schema survives; the quality gate
            # (row count) is what rejects an empty dataset, with a clear message.
            self._write_group(self.schema.empty_table())
            self.rows_per_shard[-1] = 0
        self._close_writer()
        self._pool.shutdown()

    def abort(self) -> None:
        """Close an open file handle on error paths (idempotent)."""
        for f in self._pending:
            f.cancel()
        self._pool.shutdown(wait=True)
        self._pending = []
        self._on_shard = None  # a failed conversion hands nothing on
        self._close_writer()


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------

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


class SourceReadError(RuntimeError):
    """A source's bytes did not arrive whole (network, store): transient, the task should retry."""


class _HashingReader(io.RawIOBase):
    """A source's raw byte stream that hashes what passes through and checks the length at EOF."""

    def __init__(self, raw: Any, source: SourceObject) -> None:
        super().__init__()
        self._raw, self._source = raw, source
        self._hash = hashlib.sha256()
        self._count = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read() if size is None or size < 0 else self._raw.read(size)
        if data:
            self._hash.update(data)
            self._count += len(data)
            self._source.bytes_read = self._count
        elif not self._done:
            self._done = True
            if self._source.size is not None and self._count != self._source.size:
                raise SourceReadError(
                    f"short read from {self._source.label}: got {self._count} of "
                    f"{self._source.size} bytes; retry the task"
                )
            self._source.digest = (self._count, self._hash.hexdigest())
        return bytes(data)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class SourceObject:
    """One input of a conversion: a label for messages, a name that tells its format, and a way
    to open its raw bytes again (a conversion restarts after widening a type, error messages look
    up a line). Every full read records the byte count and sha256 in :attr:`digest`.

    CSV and JSON Lines sources are streamed straight from the store into the parser (no local
    copy); Parquet needs random access, so Parquet sources are downloaded first (:meth:`local`).
    """

    def __init__(
        self, label: str, name: str, opener: Callable[[], Any], *, size: int | None = None,
        path: Path | None = None,
    ) -> None:
        self.label, self.name, self.size, self.path = label, name, size, path
        self._opener = opener
        self.digest: tuple[int, str] | None = None
        self.bytes_read = 0  # of the pass in progress (progress reports)

    @classmethod
    def local(cls, path: Path, label: str | None = None) -> SourceObject:
        path = Path(path)
        return cls(label or path.name, path.name, lambda: open(path, "rb"), size=path.stat().st_size, path=path)

    def open(self) -> IO[bytes]:
        return _HashingReader(self._opener(), self)  # type: ignore[return-value]

    def finish(self) -> tuple[int, str]:
        """Bytes and sha256 of the source; reads it once more only if no pass reached its end."""
        if self.digest is None:
            with self.open() as fh:
                while fh.read(_HASH_CHUNK):
                    pass
        assert self.digest is not None
        return self.digest


_HASH_CHUNK = 8 * 1024 * 1024


def _open_stream(src: SourceObject, fmt: SourceFormat) -> Any:
    """The source's bytes, decompressed; ``read(n)`` and ``close()``."""
    raw = src.open()
    if fmt.compression is None:
        return raw
    import pyarrow as pa

    return pa.input_stream(raw, compression=fmt.compression)


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


def _open_text(src: SourceObject, fmt: SourceFormat) -> IO[str]:
    """The source as text (error paths only: header names, line numbers)."""
    raw: Any = src.open()
    if fmt.compression == "gzip":
        raw = gzip.GzipFile(fileobj=raw, mode="rb")
    elif fmt.compression is not None:  # zstd: Python 3.11 has no stdlib codec; pyarrow's stream
        import pyarrow as pa

        raw = pa.input_stream(raw, compression=fmt.compression)
    return io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", errors="replace", newline="")  # type: ignore[arg-type]


def _csv_header(src: SourceObject, fmt: SourceFormat, index: int) -> str | None:
    """Name of column ``index`` from the header line (error path only)."""
    try:
        with _open_text(src, fmt) as fh:
            header = next(csv.reader(fh), None)
    except (OSError, csv.Error, SourceReadError):
        return None
    return header[index] if header and 0 <= index < len(header) else None


def _csv_bad_row_line(src: SourceObject, fmt: SourceFormat, expected: int) -> int | None:
    """Find the line number of the first record whose field count differs (error path only)."""
    try:
        with _open_text(src, fmt) as fh:
            reader = csv.reader(fh)
            for record in reader:
                if record and len(record) != expected:
                    return reader.line_num
    except (OSError, csv.Error, SourceReadError):
        return None
    return None


def _csv_segments(stream: Any, size: int, *, label: str) -> Iterator[bytes]:
    """Cut a byte stream into pieces of about ``size`` bytes that end at a line end.

    Like Arrow's own parallel reader (``newlines_in_values=False``), this assumes no line breaks
    inside quoted values. A line end is ``\\n`` (so ``\\r\\n`` stays whole), or a lone ``\\r``
    in files that have no ``\\n`` at all.
    """
    carry = b""
    while True:
        data = stream.read(size)
        if not data:
            if carry:
                yield carry
            return
        buf = carry + data if carry else data
        cut = buf.rfind(b"\n")
        if cut < 0:
            cut = buf.rfind(b"\r")
        if cut < 0:
            if len(buf) > MAX_LINE_BYTES:
                raise InputError(
                    f"{label} has a line longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB; a CSV "
                    "file holds one record per line - check the file's format"
                )
            carry = buf
            continue
        carry = buf[cut + 1 :]
        yield buf[: cut + 1]


def _read_batches(reader: Any, failure: Callable[[Exception], Exception]) -> Iterator[pa.RecordBatch]:
    """Stream a pyarrow reader's batches; a parse error becomes the caller's readable failure."""
    import pyarrow as pa

    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as exc:
            raise failure(exc) from None
        yield batch


def _open_csv(
    src: SourceObject, fmt: SourceFormat, *, column_types: dict[str, Any]
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    label = src.label
    bad_rows: list[tuple[int, int]] = []

    def on_invalid_row(row: Any) -> str:
        bad_rows.append((row.expected_columns, row.actual_columns))
        return "error"

    def parse_failure(exc: Exception) -> InputError:
        if bad_rows:
            expected, actual = bad_rows[0]
            line = _csv_bad_row_line(src, fmt, expected)
            where = f"line {line}" if line else "a row"
            return InputError(
                f"{label} does not parse as CSV: {where} has {actual} fields, the header has "
                f"{expected}; fix that row (quote fields that contain commas) and upload again"
            )
        return InputError(
            f"{label} does not parse as CSV ({_clean_arrow_message(str(exc))}); check the file is "
            "comma-separated UTF-8 text with a header row, then upload again"
        )

    def failure(exc: Exception, schema: pa.Schema | None) -> Exception:
        # A value that does not fit the type inferred from the first block: widen, not fail.
        # (The first block is converted while opening, so this can happen before a schema exists;
        # then the column's current type is the one we asked for, or an inferred one.)
        m = re.search(r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to (\w+)", str(exc))
        if m and isinstance(exc, pa.ArrowInvalid):
            index, target = int(m.group(1)), m.group(2)
            if schema is not None:
                field = schema.field(index)
                return _Widen(field.name, _next_wider(field.type))
            name = _csv_header(src, fmt, index)
            if name is not None:
                current = column_types.get(name) or _type_named(target)
                return _Widen(name, _next_wider(current))
        if isinstance(exc, OSError):
            return InputError(f"{label} cannot be read ({exc}); upload it again")
        return parse_failure(exc)

    read_opts = pcsv.ReadOptions(block_size=PARSE_BLOCK_SIZE, use_threads=True)
    parse_opts = pcsv.ParseOptions(invalid_row_handler=on_invalid_row)

    def parse(segment: bytes, types: dict[str, Any], names: list[str] | None) -> pa.Table:
        opts = read_opts if names is None else pcsv.ReadOptions(
            block_size=PARSE_BLOCK_SIZE, use_threads=True, column_names=names
        )
        try:
            return pcsv.read_csv(
                pa.BufferReader(pa.py_buffer(segment)), read_options=opts, parse_options=parse_opts,
                convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True),
            )
        except (pa.ArrowInvalid, OSError) as exc:
            raise failure(exc, schema) from None

    schema: pa.Schema | None = None
    stream = _open_stream(src, fmt)
    segments = prefetched(_csv_segments(stream, READ_BLOCK_SIZE, label=label), depth=2, name="ingest-read")

    def close() -> None:  # the read-ahead thread first: it reads from the stream
        segments.close()
        stream.close()

    try:
        try:
            first = next(segments, b"")
        except OSError as exc:
            raise failure(exc, None) from None
        # Types are inferred from the first segment (header included), then imposed on every
        # later one, so a value that does not fit is a conversion error (widened and restarted),
        # never a silent change of type between blocks.
        head = parse(first, column_types, None)
    except BaseException:
        close()
        raise
    schema = head.schema
    binary = [f.name for f in schema if pa.types.is_binary(f.type)]
    if binary:
        close()
        raise InputError(
            f"{label}: column(s) {', '.join(binary)} are not valid UTF-8 text; save the file as "
            "UTF-8 and upload it again"
        )
    types = {f.name: f.type for f in schema}

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from head.to_batches()
            while True:
                try:
                    segment = next(segments, None)
                except OSError as exc:
                    raise failure(exc, schema) from None
                if segment is None:
                    return
                yield from parse(segment, types, schema.names).to_batches()
        finally:
            close()

    return schema, batches()


def _open_jsonl(
    src: SourceObject, fmt: SourceFormat, *, schema: pa.Schema | None
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    import pyarrow as pa
    import pyarrow.json as pjson

    label = src.label

    def failure(exc: Exception) -> Exception:
        msg = str(exc)
        if "Failed to convert JSON to" in msg:
            return _Widen("", pa.float64())
        if "unexpected field" in msg.lower():
            return InputError(
                f"{label} has fields the first source does not have ({_clean_arrow_message(msg)}); "
                "all files of a dataset must have the same fields"
            )
        if isinstance(exc, OSError):
            return InputError(f"{label} cannot be read ({exc}); upload it again")
        return InputError(
            f"{label} is not valid JSON Lines ({_clean_arrow_message(msg)}); each line must be one "
            "JSON object. Fix the file and upload it again"
        )

    parse = pjson.ParseOptions(
        explicit_schema=schema, unexpected_field_behavior="error" if schema is not None else "infer"
    )
    stream = _open_stream(src, fmt)
    try:
        reader = pjson.open_json(
            stream,
            read_options=_json_read_options(),
            parse_options=parse,
        )
    except (pa.ArrowInvalid, OSError) as exc:
        stream.close()
        raise failure(exc) from None

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from _read_batches(reader, failure)
        finally:
            stream.close()

    return reader.schema, batches()


def _jsonl_schema(src: SourceObject, fmt: SourceFormat) -> pa.Schema:
    """The fields inferred from a JSON Lines source's first block (the stream is closed again)."""
    import pyarrow.json as pjson

    with contextlib.closing(_open_stream(src, fmt)) as stream:
        return pjson.open_json(stream, read_options=_json_read_options()).schema


def _json_read_options() -> Any:
    import pyarrow.json as pjson

    return pjson.ReadOptions(block_size=READ_BLOCK_SIZE, use_threads=False)


def _open_parquet(path: Path, *, label: str, batch_rows: int) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def failure(exc: Exception) -> InputError:
        return InputError(
            f"{label} is not a readable Parquet file ({_clean_arrow_message(str(exc))}); "
            "write it again and upload it"
        )

    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except (pa.ArrowInvalid, OSError) as exc:
        raise failure(exc) from None

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from pf.iter_batches(batch_size=batch_rows)
        except (pa.ArrowInvalid, OSError) as exc:
            raise failure(exc) from None

    return schema, batches()


def _schema_diff(a: pa.Schema, b: pa.Schema) -> str:
    a_cols = {f.name: str(f.type) for f in a}
    b_cols = {f.name: str(f.type) for f in b}
    parts = []
    if missing := [n for n in a_cols if n not in b_cols]:
        parts.append(f"missing {missing}")
    if extra := [n for n in b_cols if n not in a_cols]:
        parts.append(f"extra {extra}")
    changed = [f"{n}: {t} -> {b_cols[n]}" for n, t in a_cols.items() if n in b_cols and t != b_cols[n]]
    if changed:
        parts.append(f"types changed {changed}")
    if not parts and a.names != b.names:
        parts.append(f"column order {a.names} -> {b.names}")
    return "; ".join(parts) or "field attributes differ"


def _drift(first: str, other: str, diff: str) -> InputError:
    return InputError(
        f"schema drift between source objects: {other} differs from {first} ({diff}); "
        "all files of one dataset must have the same columns and types"
    )


def convert_to_parquet(
    sources: list[SourceObject],
    fmt: SourceFormat,
    outdir: Path,
    *,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    log: Log = print,
    on_shard: Callable[[Path, int], None] | None = None,
) -> tuple[pa.Schema, list[Path], list[int]]:
    """Convert the sources, in order, into Parquet shards in ``outdir``.

    Returns the schema, the shard paths and the rows per shard. Restarts with wider column types
    when a later block of CSV/JSON does not fit the inferred ones (see the module docstring).
    ``on_shard(path, rows)`` is called as each shard is complete (ingest starts uploading it);
    after a restart, shards of the same name are written and handed on again.
    """
    csv_types: dict[str, Any] = {}
    json_schema: pa.Schema | None = None
    for _attempt in range(_MAX_WIDENINGS):
        for stale in outdir.glob("part-*.parquet"):
            stale.unlink()
        try:
            return _convert_once(
                sources, fmt, outdir, csv_types=csv_types, json_schema=json_schema,
                row_group_rows=row_group_rows, shard_rows=shard_rows, on_shard=on_shard, log=log,
            )
        except _Widen as widen:
            if fmt.kind == "csv":
                if csv_types.get(widen.column) == widen.new_type:  # nothing wider left to try
                    raise InputError(
                        f"column {widen.column!r} of {sources[0].label} does not parse even as text; "
                        "check the file's encoding and quoting"
                    ) from None
                csv_types[widen.column] = widen.new_type
                log(f"ingest: column {widen.column!r} widened to {widen.new_type}; converting again")
                continue
            first = json_schema or _jsonl_schema(sources[0], detect_format(sources[0].name))
            if not any(_is_int(f.type) for f in first):
                raise InputError(
                    f"{sources[0].label}: a JSON field changes type between lines; make every field hold "
                    "one type (numbers or strings) and upload again"
                ) from None
            json_schema = _widen_ints(first)
            log("ingest: integer JSON fields widened to float64; converting again")
    raise InputError("the column types of this dataset keep changing between blocks; clean the data")


def _is_int(t: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(t))


def _widen_ints(schema: pa.Schema) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([pa.field(f.name, pa.float64() if _is_int(f.type) else f.type) for f in schema])


#: Seconds between progress lines while a source is converted.
PROGRESS_SECONDS = 10.0


class _Progress:
    """Logs, every :data:`PROGRESS_SECONDS`, how far the conversion of one source has come."""

    def __init__(self, src: SourceObject, log: Log) -> None:
        self.src, self.log = src, log
        self.started = self.last = time.monotonic()
        self.count = 0

    def rows(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        done = self.src.bytes_read
        of = f" of {self.src.size / 1e6:.0f}" if self.src.size else ""
        pct = f" ({100 * done / self.src.size:.0f}%)" if self.src.size else ""
        self.log(
            f"ingest: {self.src.label}: {done / 1e6:.0f}{of} MB read{pct}, {self.count} rows converted, "
            f"{done / (now - self.started) / 1e6:.0f} MB/s"
        )


def _convert_once(
    sources: list[SourceObject],
    fmt: SourceFormat,
    outdir: Path,
    *,
    csv_types: dict[str, Any],
    json_schema: pa.Schema | None,
    row_group_rows: int,
    shard_rows: int,
    on_shard: Callable[[Path, int], None] | None = None,
    log: Log = print,
) -> tuple[pa.Schema, list[Path], list[int]]:
    writer: _ShardWriter | None = None
    first_label = sources[0].label
    types = dict(csv_types)
    try:
        for src in sources:
            label = src.label
            # Same kind for all sources, but compression is per file (a.csv next to b.csv.gz).
            file_fmt = detect_format(src.name)
            if fmt.kind == "csv":
                schema, batches = _open_csv(src, file_fmt, column_types=types)
            elif fmt.kind == "jsonl":
                schema, batches = _open_jsonl(src, file_fmt, schema=json_schema)
            else:
                if src.path is None:
                    raise ValueError(f"{label}: Parquet sources are read from a local copy")
                schema, batches = _open_parquet(src.path, label=label, batch_rows=row_group_rows)
            schema = schema.remove_metadata()
            if writer is None:
                if len(schema) == 0:
                    raise InputError(f"{label} holds no columns; upload a file with a header row")
                writer = _ShardWriter(
                    outdir, schema, row_group_rows=row_group_rows, shard_rows=shard_rows, on_shard=on_shard
                )
                # Later files are read with the first file's types, so drift shows up as a
                # conversion error (widened, restart) or a schema mismatch (refused), never silently.
                types.update({f.name: f.type for f in schema if f.name not in types})
                json_schema = json_schema or schema
            elif not schema.equals(writer.schema):
                batches.close()  # type: ignore[attr-defined]
                raise _drift(first_label, label, _schema_diff(writer.schema, schema))
            progress = _Progress(src, log)
            with contextlib.closing(batches):  # type: ignore[type-var]
                for batch in batches:
                    writer.write(batch)
                    progress.rows(batch.num_rows)
        assert writer is not None  # sources is never empty
        writer.close()
        return writer.schema, writer.paths, writer.rows_per_shard
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def ingest_dataset(
    s3: Any,
    *,
    source_uri: str,
    bucket: str,
    tenant: str,
    dataset_name: str | None = None,
    workdir: Path,
    log: Log = print,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    shard_rows: int = DEFAULT_SHARD_ROWS,
) -> DatasetManifest:
    """Ingest ``source_uri`` into ``s3://<bucket>/<tenant>/datasets/<name>/<version>/``.

    :param s3: a client from :func:`aifactory.data.s3.make_client`.
    :param source_uri: one object or a folder (ending in ``/``) inside the tenant's raw area.
    :param bucket: the tenant's bucket, from the tenant spec (never from the user).
    :param tenant: the tenant id, from the tenant spec.
    :param dataset_name: defaults to the source basename, sanitised to ``[a-z0-9_-]``.
    :param workdir: local scratch; a private (0700) subfolder is created and removed afterwards.
    :param log: progress sink (``print``, a logger's ``info``).
    :param row_group_rows: rows per Parquet row group.
    :param shard_rows: rows per shard before a new ``part-NNNNN.parquet`` starts.
    :returns: the published (or already existing) manifest.
    """
    key = check_tenant_uri(source_uri, bucket=bucket, tenant=tenant)
    name = check_dataset_name(dataset_name) if dataset_name is not None else derive_dataset_name(key)
    if row_group_rows < 1 or shard_rows < 1:
        raise InputError("row_group_rows and shard_rows must be positive")

    sources, fmt = resolve_sources(s3, bucket=bucket, key=key, uri=source_uri)
    options = ingest_options(row_group_rows=row_group_rows, shard_rows=shard_rows)
    version = compute_version(sources, options)
    prefix = dataset_prefix(tenant, name, version)
    total_in = sum(s.size for s in sources)
    log(
        f"ingest: {source_uri} -> {len(sources)} {fmt.kind} object(s), {total_in} bytes; "
        f"version {version} at s3://{bucket}/{prefix}"
    )

    existing = load_manifest(s3, bucket, prefix)
    if existing is not None:
        _check_same_version(existing, tenant=tenant, name=name, version=version)
        log(
            f"ingest: version {version} already published ({existing.rows} rows, "
            f"{len(existing.files)} file(s)); reusing it, nothing converted or uploaded"
        )
        return existing

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"ingest-{version}-", dir=workdir))  # mode 0700
    try:
        inputs = [
            _source_from_store(s3, bucket, obj, index=i, srcdir=scratch / "src", fmt=fmt, log=log)
            for i, obj in enumerate(sources)
        ]

        outdir = scratch / "out"
        outdir.mkdir()
        started = time.monotonic()
        uploader = _ShardUploader(s3, bucket, prefix, log=log)
        try:
            schema, shard_paths, shard_rows_list = convert_to_parquet(
                inputs, fmt, outdir, row_group_rows=row_group_rows, shard_rows=shard_rows, log=log,
                on_shard=uploader.submit,
            )
            rows = sum(shard_rows_list)
            log(
                f"ingest: converted {rows} rows, {len(schema)} columns into {len(shard_paths)} shard(s) "
                f"in {time.monotonic() - started:.1f}s; finishing uploads"
            )
            source_entries = []
            for src, obj in zip(inputs, sources):
                size, digest = src.finish()
                source_entries.append({"uri": src.label, "etag": obj.etag, "bytes": size, "sha256": digest})
                if src.path is not None:
                    src.path.unlink(missing_ok=True)  # free scratch space
            files = uploader.finish(shard_paths, shard_rows_list)
        except BaseException:
            uploader.abort()
            raise
        log(
            f"ingest: {len(files)} shard(s), {sum(f.bytes for f in files)} bytes converted and uploaded "
            f"in {time.monotonic() - started:.1f}s"
        )

        manifest = DatasetManifest(
            tenant=tenant,
            name=name,
            version=version,
            created_at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            schema=[{"name": f.name, "type": str(f.type)} for f in schema],
            rows=rows,
            files=files,
            sources=source_entries,
            quality=None,
            options=options,
        )
        written = put_bytes(
            s3, bucket, prefix + MANIFEST_NAME, manifest.to_json().encode("utf-8"),
            content_type="application/json", if_none_match=True,
        )
        if not written:
            winner = load_manifest(s3, bucket, prefix)
            if winner is None:  # pragma: no cover - would mean the store ignores If-None-Match
                raise RuntimeError(f"s3://{bucket}/{prefix}{MANIFEST_NAME} refused but not found; retry")
            log(f"ingest: another run published {version} first; using its manifest")
            return winner
        log(
            f"ingest: published s3://{bucket}/{prefix}{MANIFEST_NAME} "
            f"({rows} rows, {len(files)} file(s), {manifest.total_bytes} bytes)"
        )
        return manifest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _source_from_store(
    s3: Any, bucket: str, obj: ObjectInfo, *, index: int, srcdir: Path, fmt: SourceFormat, log: Log
) -> SourceObject:
    """A source object of the store, pinned to the listed ETag (``If-Match``): every read gets the
    bytes the version was derived from, or an InputError if the object was replaced meanwhile.
    Text formats stream from the GET into the parser; Parquet is downloaded first (random access)."""
    label = format_s3_uri(bucket, obj.key)

    def opener() -> Any:
        try:
            return get_object(s3, bucket, obj.key, if_match=obj.etag or None)["Body"]
        except Exception as exc:  # botocore ClientError, without importing botocore here
            if is_precondition_failed(exc):
                raise InputError(
                    f"{label} changed while it was being ingested; wait for the upload to finish and run again"
                ) from None
            raise

    src = SourceObject(label, obj.key.rsplit("/", 1)[-1], opener, size=obj.size)
    if fmt.kind != "parquet":
        return src
    # Local names never derive from the key: nothing in a key can steer a local path.
    target = srcdir / f"src-{index:05d}{detect_format(obj.key).extension}"
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with src.open() as body, open(target, "wb") as fh:  # the same pinned, hashed read
        shutil.copyfileobj(body, fh, _HASH_CHUNK)
    size, _ = src.finish()
    secs = max(time.monotonic() - started, 1e-6)
    log(f"ingest: downloaded {label} ({size} bytes, {size / secs / 1e6:.1f} MB/s)")
    local = SourceObject.local(target, label)
    local.digest = src.digest
    return local


class _ShardUploader:
    """Uploads each shard as soon as it is complete, while the next one is being converted.

    A shard is hashed and uploaded from ONE open file descriptor, and the upload is recorded with
    the file's (inode, size, mtime): :meth:`finish` trusts a recorded upload only if the final
    shard is still that very file, and uploads anything else again, after every earlier upload has
    finished, so a shard rewritten by a widening restart can never be overtaken by its stale copy.
    """

    def __init__(self, s3: Any, bucket: str, prefix: str, *, log: Log) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.s3, self.bucket, self.prefix, self.log = s3, bucket, prefix, log
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-upload")
        self._futures: list[Any] = []
        self._done: dict[str, tuple[tuple[int, int, int], FileEntry]] = {}

    def submit(self, path: Path, rows: int) -> None:
        # Back-pressure: the conversion waits while an earlier shard is still uploading, so it
        # never runs more than one shard ahead (the uploads keep pace; bounded scratch space).
        for earlier in self._futures:
            earlier.result()
        self._futures.append(self._pool.submit(self._upload, path, rows))

    def _upload(self, path: Path, rows: int) -> None:
        from aifactory.data.s3 import SINGLE_PUT_LIMIT

        started = time.monotonic()
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
            if st.st_size > SINGLE_PUT_LIMIT:
                digest = sha256_file(path)
                size = upload_file(self.s3, path, self.bucket, self.prefix + path.name)
            else:
                # The sha256 the PUT was signed with (and the store checked): no second pass.
                digest = put_file(self.s3, self.bucket, self.prefix + path.name, fh, st.st_size)
                size = st.st_size
        self._done[path.name] = (ident, FileEntry(path=path.name, bytes=size, sha256=digest, rows=rows))
        secs = max(time.monotonic() - started, 1e-6)
        self.log(f"ingest: uploaded {path.name} ({size} bytes, {rows} rows, {size / secs / 1e6:.0f} MB/s)")

    def finish(self, paths: list[Path], rows: list[int]) -> list[FileEntry]:
        from aifactory.data.s3 import head

        for f in self._futures:
            f.result()
        self._pool.shutdown()
        files: list[FileEntry] = []
        for path, n in zip(paths, rows):
            st = os.stat(path)
            rec = self._done.get(path.name)
            if rec is None or rec[0] != (st.st_ino, st.st_size, st.st_mtime_ns) or rec[1].rows != n:
                self._upload(path, n)
                rec = self._done[path.name]
            files.append(rec[1])
        for f in files:  # the store holds what we hashed (size check; sha256 is ours, in the manifest)
            info = head(self.s3, self.bucket, self.prefix + f.path)
            if info is None or info.size != f.bytes:
                raise OSError(
                    f"upload of {f.path} to s3://{self.bucket}/{self.prefix}{f.path} did not verify "
                    f"(local {f.bytes} bytes, remote {info.size if info else 'missing'}); retry the task"
                )
        return files

    def abort(self) -> None:
        """Stop, wait for uploads in flight, and delete what was uploaded: nothing half-built stays."""
        import contextlib

        for f in self._futures:
            f.cancel()
        self._pool.shutdown(wait=True)
        for name in list(self._done):
            with contextlib.suppress(Exception):
                self.s3.delete_object(Bucket=self.bucket, Key=self.prefix + name)


def _check_same_version(m: DatasetManifest, *, tenant: str, name: str, version: str) -> None:
    if (m.tenant, m.name, m.version) != (tenant, name, version):
        raise InputError(
            f"manifest at {dataset_prefix(tenant, name, version)} describes "
            f"{m.tenant}/{m.name}/{m.version}; the dataset area was tampered with - ask the platform team"
        )
