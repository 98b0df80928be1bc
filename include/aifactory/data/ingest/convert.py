"""Conversion: the sources, in order, into Parquet shards; restarted with wider types when a
later block does not fit the inferred ones (never silently dropping data)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifactory.data.ingest import limits
from aifactory.data.ingest.csv_reader import _open_csv
from aifactory.data.ingest.formats import SourceFormat, detect_format
from aifactory.data.ingest.jsonl_reader import _jsonl_schema, _open_jsonl
from aifactory.data.ingest.parquet_reader import _open_parquet
from aifactory.data.ingest.schema import _drift, _is_int, _schema_diff, _Widen, _widen_ints
from aifactory.data.ingest.shards import _ShardWriter
from aifactory.data.ingest.sources import Log, SourceObject
from aifactory.data.ingest.versions import DEFAULT_ROW_GROUP_ROWS, DEFAULT_SHARD_ROWS
from aifactory.errors import InputError
from aifactory.layout import SHARD_GLOB
from aifactory.text import shown

if TYPE_CHECKING:
    import pyarrow as pa


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
    when a later block of CSV/JSON does not fit the inferred ones (rule 5 of :mod:`aifactory.data.ingest`).
    ``on_shard(path, rows)`` is called as each shard is complete (ingest starts uploading it);
    after a restart, shards of the same name are written and handed on again.
    """
    csv_types: dict[str, Any] = {}
    json_schema: pa.Schema | None = None
    for _attempt in range(limits.MAX_WIDENINGS):
        for stale in outdir.glob(SHARD_GLOB):
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
                        f"column {shown(widen.column)} of {sources[0].shown_label} does not parse even as text; "
                        "check the file's encoding and quoting"
                    ) from None
                csv_types[widen.column] = widen.new_type
                log(f"ingest: column {shown(widen.column)} widened to {widen.new_type}; converting again")
                continue
            first = json_schema or _jsonl_schema(sources[0], detect_format(sources[0].name))
            if not any(_is_int(f.type) for f in first):
                raise InputError(
                    f"{sources[0].shown_label}: a JSON field changes type between lines; make every field hold "
                    "one type (numbers or strings) and upload again"
                ) from None
            json_schema = _widen_ints(first)
            log("ingest: integer JSON fields widened to float64; converting again")
    raise InputError("the column types of this dataset keep changing between blocks; clean the data")


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
            f"ingest: {self.src.shown_label}: {done / 1e6:.0f}{of} MB read{pct}, {self.count} rows converted, "
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
                    raise ValueError(f"{shown(label)}: Parquet sources are read from a local copy")
                schema, batches = _open_parquet(src.path, label=label, batch_rows=row_group_rows)
            schema = schema.remove_metadata()
            if writer is None:
                if len(schema) == 0:
                    raise InputError(f"{shown(label)} holds no columns; upload a file with a header row")
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
