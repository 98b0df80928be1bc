"""JSON Lines: Arrow's streaming JSON reader, fields inferred from the first source's first block."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from aifactory.data.ingest import limits
from aifactory.data.ingest.formats import SourceFormat
from aifactory.data.ingest.schema import _clean_arrow_message, _Widen
from aifactory.data.ingest.sources import SourceObject, _open_stream
from aifactory.errors import InputError

if TYPE_CHECKING:
    import pyarrow as pa


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


def _open_jsonl(
    src: SourceObject, fmt: SourceFormat, *, schema: pa.Schema | None
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    import pyarrow as pa
    import pyarrow.json as pjson

    label = src.shown_label

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

    return pjson.ReadOptions(block_size=limits.READ_BLOCK_SIZE, use_threads=False)
