"""Dataset-wide uniqueness: columns hash-partitioned into spill files, checked bucket by bucket."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

#: Rows per uniqueness bucket (bounds GX's memory for dataset-wide uniqueness).
UNIQUE_BUCKET_ROWS = 1_000_000


class UniqueSpill:
    """Hash-partitions the columns of one uniqueness expectation into ``buckets`` spill files.

    Equal values hash to the same bucket, so "unique within every bucket" is exactly "unique in
    the whole dataset", and each bucket holds ~1/buckets of the column: GX then validates bucket by
    bucket with bounded memory, and unexpected counts add up correctly across shards.
    """

    def __init__(self, directory: Path, index: int, columns: list[str], buckets: int) -> None:
        self.directory, self.index, self.columns, self.buckets = directory, index, columns, buckets
        self.writers: dict[int, Any] = {}
        self.paths: dict[int, Path] = {}
        self._lock = threading.Lock()  # shards are added from the loading threads

    def add(self, df: Any) -> None:
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        part = df[self.columns]
        bucket = pd.util.hash_pandas_object(part, index=False).to_numpy() % self.buckets
        tables = {}
        for b in range(self.buckets):
            chunk = part[bucket == b]
            if not chunk.empty:
                tables[b] = pa.Table.from_pandas(chunk, preserve_index=False)
        with self._lock:
            for b, table in tables.items():
                if b not in self.writers:
                    self.paths[b] = self.directory / f"unique-{self.index}-{b}.parquet"
                    self.writers[b] = pq.ParquetWriter(self.paths[b], table.schema, compression="none")
                self.writers[b].write_table(table.cast(self.writers[b].schema))

    def frames(self) -> Any:
        import pyarrow.parquet as pq

        for w in self.writers.values():
            w.close()
        self.writers.clear()
        for b in sorted(self.paths):
            df = pq.read_table(self.paths[b]).to_pandas()
            self.paths[b].unlink()
            yield b, df

