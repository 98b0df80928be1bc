"""The content-addressed version of a dataset and the options that shape it.

A version is ``v-`` + 16 hex of sha256 over the sorted source keys, their ETags and sizes, and
the ingest options: re-ingesting the same upload with the same options finds the published
version. Bump :data:`CONVERTER_VERSION` when the conversion changes what it writes.
"""

from __future__ import annotations

import json
from typing import Any

from aifactory.data.manifest import sha256_bytes
from aifactory.data.s3 import ObjectInfo

#: Bump when the conversion changes in a way that should produce a new version for the same input.
CONVERTER_VERSION = 3  # 2: dictionary encoding only where it pays; 3: byte-stream-split floats
DEFAULT_ROW_GROUP_ROWS = 128 * 1024
DEFAULT_SHARD_ROWS = 8 * DEFAULT_ROW_GROUP_ROWS  # ~1M rows per shard


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
