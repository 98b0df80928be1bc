"""CSV: cut into line-aligned segments read ahead, parsed by Arrow's multi-threaded reader with the
types inferred from the first segment imposed on the rest (a value that does not fit widens the
column and the conversion restarts). Error paths name the row and the column, never a value."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aifactory.data.ingest import limits
from aifactory.data.ingest.formats import SourceFormat
from aifactory.data.ingest.schema import _clean_arrow_message, _next_wider, _type_named, _Widen
from aifactory.data.ingest.sources import SourceObject, SourceReadError, _open_stream, _open_text
from aifactory.data.readahead import prefetched
from aifactory.errors import InputError
from aifactory.text import shown_list

if TYPE_CHECKING:
    import pyarrow as pa


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
    in files that have no ``\\n`` at all. ``label`` names the source in messages, as shown.
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
            if len(buf) > limits.MAX_LINE_BYTES:
                raise InputError(
                    f"{label} has a line longer than {limits.MAX_LINE_BYTES // (1024 * 1024)} MiB; a CSV "
                    "file holds one record per line - check the file's format"
                )
            carry = buf
            continue
        carry = buf[cut + 1 :]
        yield buf[: cut + 1]


def _open_csv(
    src: SourceObject, fmt: SourceFormat, *, column_types: dict[str, Any]
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    label = src.shown_label
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

    read_opts = pcsv.ReadOptions(block_size=limits.PARSE_BLOCK_SIZE, use_threads=True)
    parse_opts = pcsv.ParseOptions(invalid_row_handler=on_invalid_row)

    def parse(segment: bytes, types: dict[str, Any], names: list[str] | None) -> pa.Table:
        opts = read_opts if names is None else pcsv.ReadOptions(
            block_size=limits.PARSE_BLOCK_SIZE, use_threads=True, column_names=names
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
    segments = prefetched(_csv_segments(stream, limits.READ_BLOCK_SIZE, label=label), depth=2, name="ingest-read")

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
            f"{label}: column(s) {shown_list(binary)} are not valid UTF-8 text; save the file as "
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
