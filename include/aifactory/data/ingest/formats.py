"""Source formats (from the extension) and dataset names (derived from the source, or checked)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aifactory.errors import InputError
from aifactory.layout import NAME_RE
from aifactory.text import shown

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
        f"cannot tell the format of {shown(key)} from its extension; supported: {known}. "
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
            f"cannot derive a dataset name from {shown(raw)}; pass dataset_name (letters, digits, '_', '-')"
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
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(
            f"dataset_name {shown(name)} is not allowed: use 1-64 characters from a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name
