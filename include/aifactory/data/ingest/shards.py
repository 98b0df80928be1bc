"""Writing shards: fixed-size row groups, a new shard every ``shard_rows`` rows, zstd, and the
encodings chosen per column (dictionary where it pays, BYTE_STREAM_SPLIT for other floats)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifactory.data.ingest import limits
from aifactory.layout import shard_name

if TYPE_CHECKING:
    import pyarrow as pa


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
    for name, column in zip(table.column_names, table.columns, strict=True):
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
        while len(self._pending) >= limits.WRITE_QUEUE:
            self._pending.pop(0).result()  # back-pressure; re-raises a write error
        self._pending.append(self._pool.submit(self._write_group, group))

    def _drain(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def _write_group(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        if self._writer is None or self.rows_per_shard[-1] + table.num_rows > self.shard_rows:
            self._close_writer()
            path = self.directory / shard_name(len(self.paths))
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
