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

Where each step lives (one module each, in the order a run goes through them):

=====================  ====================================================================
``pipeline``           :func:`ingest_dataset`: the stage, from source URI to published manifest
``formats``            source format from the extension; dataset names (derived or checked)
``versions``           the content-addressed version and the options that shape the output
``sources``            resolving the URI to objects; the pinned, hashed reader of each source
``csv_reader``         CSV segments, type inference and widening signals
``jsonl_reader``       JSON Lines
``parquet_reader``     Parquet sources (from their local copy)
``schema``             the type-widening ladder, schema drift, Arrow messages without values
``convert``            sources -> shards, restarted with wider types when a block does not fit
``shards``             the shard writer and its per-column encodings
``upload``             shards uploaded while the next converts; sizes checked in the store
``limits``             block sizes, queue depths and caps (tuned: see ``bench/``)
=====================  ====================================================================
"""

from __future__ import annotations

from aifactory.data.ingest import limits
from aifactory.data.ingest.convert import PROGRESS_SECONDS, convert_to_parquet
from aifactory.data.ingest.formats import (
    SourceFormat,
    check_dataset_name,
    derive_dataset_name,
    detect_format,
    sanitize_dataset_name,
)
from aifactory.data.ingest.pipeline import ingest_dataset
from aifactory.data.ingest.shards import (
    DICTIONARY_MAX_DISTINCT_SHARE,
    byte_stream_split_columns,
    dictionary_columns,
)
from aifactory.data.ingest.sources import Log, SourceObject, SourceReadError, resolve_sources
from aifactory.data.ingest.versions import (
    CONVERTER_VERSION,
    DEFAULT_ROW_GROUP_ROWS,
    DEFAULT_SHARD_ROWS,
    compute_version,
    ingest_options,
)

__all__ = [
    "CONVERTER_VERSION",
    "DEFAULT_ROW_GROUP_ROWS",
    "DEFAULT_SHARD_ROWS",
    "DICTIONARY_MAX_DISTINCT_SHARE",
    "PROGRESS_SECONDS",
    "Log",
    "SourceFormat",
    "SourceObject",
    "SourceReadError",
    "byte_stream_split_columns",
    "check_dataset_name",
    "compute_version",
    "convert_to_parquet",
    "derive_dataset_name",
    "detect_format",
    "dictionary_columns",
    "ingest_dataset",
    "ingest_options",
    "limits",
    "resolve_sources",
    "sanitize_dataset_name",
]
