"""Dataset manifests: the only proof that a dataset version exists.

A dataset version lives under ``layout.dataset_prefix(tenant, name, version)`` as shards
(``layout.shard_name``) plus ``manifest.json``, and the manifest is written **last**
(``docs/failure-modes.md``, section 13): a version without a manifest does not exist, so a crash
mid-upload never publishes partial data.

The manifest carries our own sha256 of every shard and every source object, because an S3 ETag is
not a content checksum for multipart or encrypted uploads (``docs/failure-modes.md``, section 12).
Staging to the cluster verifies files against these digests.

JSON is written with sorted keys and a fixed indent so the same manifest always serialises to the
same bytes, which makes :meth:`DatasetManifest.manifest_sha256` a stable identity.

A manifest, once written by ingest, is **never rewritten**: a content-addressed version is shared
by every run that ingests the same input, and a verdict depends on the run's suite and label
column. Quality verdicts are stored beside the version, one per suite and suite parameters
(``layout.quality_result_key``, :mod:`aifactory.data.quality.report`). :func:`load_manifest` is
the one reader of a manifest from the object store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aifactory.errors import InputError
from aifactory.layout import MANIFEST_NAME, SAFE_FILE_RE, dataset_prefix
from aifactory.text import shown

#: Bump when the manifest's meaning changes; readers refuse versions newer than they know.
MANIFEST_FORMAT = 1


def sha256_file(path: Path | str, bufsize: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``bufsize`` chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class FileEntry:
    """One shard of a dataset version. ``path`` is relative to the version's prefix."""

    path: str
    bytes: int
    sha256: str
    rows: int | None = None


@dataclass
class DatasetManifest:
    """Everything downstream stages need to trust and locate a dataset version.

    :param schema: ``[{"name": ..., "type": ...}]`` with Arrow type names.
    :param sources: ``[{"uri", "etag", "bytes", "sha256"}]``, the raw objects it was built from.
    :param quality: always ``None`` in a manifest ingest writes (kept so that manifests written
        before verdicts moved beside the version still read, with the same identity).
    """

    tenant: str
    name: str
    version: str
    created_at: str
    schema: list[dict[str, str]]
    rows: int
    files: list[FileEntry]
    sources: list[dict[str, Any]]
    quality: dict[str, Any] | None = None
    format: int = MANIFEST_FORMAT
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return dataset_prefix(self.tenant, self.name, self.version)

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @property
    def manifest_sha256(self) -> str:
        """The version's identity: sha256 of the manifest JSON (with a legacy verdict left out)."""
        if self.quality is None:
            return sha256_bytes(self.to_json().encode("utf-8"))
        identity = DatasetManifest.from_dict({**self.to_dict(), "quality": None})
        return sha256_bytes(identity.to_json().encode("utf-8"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetManifest:
        try:
            fmt = int(data.get("format", 1))
            if fmt > MANIFEST_FORMAT:
                raise InputError(
                    f"manifest format {fmt} is newer than this code understands ({MANIFEST_FORMAT}); "
                    "upgrade the aifactory package"
                )
            return cls(
                tenant=str(data["tenant"]),
                name=str(data["name"]),
                version=str(data["version"]),
                created_at=str(data["created_at"]),
                schema=[{"name": str(c["name"]), "type": str(c["type"])} for c in data["schema"]],
                rows=int(data["rows"]),
                files=[
                    FileEntry(
                        path=str(f["path"]),
                        bytes=int(f["bytes"]),
                        sha256=str(f["sha256"]),
                        rows=None if f.get("rows") is None else int(f["rows"]),
                    )
                    for f in data["files"]
                ],
                sources=[dict(s) for s in data["sources"]],
                quality=data.get("quality"),
                format=fmt,
                options=dict(data.get("options") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"dataset manifest is malformed ({exc!r}); re-run the ingest") from exc

    def __post_init__(self) -> None:
        # File paths are joined onto the version prefix by every reader (quality, staging): a
        # path that could leave the prefix, or hide in a log, is refused wherever a manifest is
        # built or read.
        for f in self.files:
            if not SAFE_FILE_RE.match(f.path) or f.path in (".", ".."):
                raise InputError(
                    f"dataset manifest lists an unsafe file name {shown(f.path)}; only plain names such "
                    "as part-00000.parquet are allowed"
                )

    @classmethod
    def from_json(cls, text: str | bytes) -> DatasetManifest:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"dataset manifest is not valid JSON ({exc}); re-run the ingest") from exc
        if not isinstance(data, dict):
            raise InputError("dataset manifest is not a JSON object; re-run the ingest")
        return cls.from_dict(data)


def load_manifest(s3: Any, bucket: str, prefix: str) -> DatasetManifest | None:
    """Read ``<prefix>manifest.json``; ``None`` if the version does not exist (no manifest)."""
    from botocore.exceptions import ClientError

    from aifactory.data.s3 import get_bytes, is_not_found

    prefix = prefix if prefix.endswith("/") else prefix + "/"
    try:
        raw = get_bytes(s3, bucket, prefix + MANIFEST_NAME)
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise
    return DatasetManifest.from_json(raw)


def require_manifest(s3: Any, bucket: str, prefix: str) -> DatasetManifest:
    """:func:`load_manifest`, or an :class:`InputError` saying the version does not exist."""
    manifest = load_manifest(s3, bucket, prefix)
    if manifest is None:
        raise InputError(
            f"dataset version s3://{bucket}/{shown(prefix)} has no {MANIFEST_NAME}: it does not exist "
            "(was it deleted?). Clear the ingest task to build it again."
        )
    return manifest
