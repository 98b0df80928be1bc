"""The conversion's sizes and limits, in one place.

Readers look these up as module attributes (``limits.READ_BLOCK_SIZE``) at the time they run, so
one setting (or one test's monkeypatch) reaches every reader. The figures are tuned: see ``bench/``
and the git log before changing one.
"""

from __future__ import annotations

import os

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
#: A source folder holding more objects than this is refused (combine them into larger files).
MAX_SOURCE_OBJECTS = 10_000
#: Restarts with a wider column type before the conversion gives up (the types keep changing).
MAX_WIDENINGS = 64
