"""Parquet sources: read from their local copy in record batches; their types must match exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from aifactory.data.ingest.schema import _clean_arrow_message
from aifactory.errors import InputError
from aifactory.text import shown

if TYPE_CHECKING:
    import pyarrow as pa


def _open_parquet(path: Path, *, label: str, batch_rows: int) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def failure(exc: Exception) -> InputError:
        return InputError(
            f"{shown(label)} is not a readable Parquet file ({_clean_arrow_message(str(exc))}); "
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
