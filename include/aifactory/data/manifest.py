"""Dataset manifests: the only proof that a dataset version exists.

A dataset version lives under ``<tenant>/datasets/<name>/<version>/`` as ``part-NNNNN.parquet``
shards plus ``manifest.json``, and the manifest is written **last** (FAILURE-MODES 13): a version
without a manifest does not exist, so a crash mid-upload never publishes partial data.

The manifest carries our own sha256 of every shard and every source object, because an S3 ETag is
not a content checksum for multipart or encrypted uploads (FAILURE-MODES 12). Staging to the
cluster verifies files against these digests.

JSON is written with sorted keys and a fixed indent so the same manifest always serialises to the
same bytes, which makes :meth:`DatasetManifest.manifest_sha256` a stable identity.

The quality gate's **verdict** is the one field that changes after publication: the gate writes its
full result beside the version (``quality.json``) and then sets ``quality`` in ``manifest.json``
with a conditional write (``If-Match`` on the ETag it read, retried on a race), see
:func:`record_quality_verdict`. ``manifest_sha256`` is computed with ``quality`` left out, so the
identity that ingest returned, staging records and export cites never changes when a version is
(re)validated; the verdict carries the sha256 of the report it summarises.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aifactory.errors import InputError

MANIFEST_NAME = "manifest.json"
QUALITY_NAME = "quality.json"
#: Bump when the manifest's meaning changes; readers refuse versions newer than they know.
MANIFEST_FORMAT = 1
_SAFE_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def sha256_file(path: Path | str, bufsize: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``bufsize`` chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dataset_prefix(tenant: str, name: str, version: str) -> str:
    """Key prefix (ending in ``/``) of one dataset version inside the tenant's bucket."""
    return f"{tenant}/datasets/{name}/{version}/"


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
    :param quality: the quality gate's compact summary once validated, else ``None``.
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
        """The version's identity: sha256 of the manifest JSON with the (mutable) verdict left out."""
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
            if not _SAFE_FILE_RE.match(f.path) or f.path in (".", ".."):
                raise InputError(
                    f"dataset manifest lists an unsafe file name {f.path!r}; only plain names such "
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

    try:
        raw = get_bytes(s3, bucket, prefix + MANIFEST_NAME)
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise
    return DatasetManifest.from_json(raw)


def record_quality_verdict(
    s3: Any, bucket: str, prefix: str, verdict: dict[str, Any], *, attempts: int = 5
) -> DatasetManifest:
    """Set ``quality`` in ``<prefix>manifest.json`` to ``verdict`` without losing a concurrent write.

    Read the manifest and its ETag, write it back with ``If-Match: <etag>``; if another writer got
    there first, read again and retry. Only ``quality`` changes, so ``manifest_sha256`` is stable.
    """
    from botocore.exceptions import ClientError

    from aifactory.data.s3 import is_precondition_failed

    key = prefix + MANIFEST_NAME
    for _ in range(max(1, attempts)):
        resp = s3.get_object(Bucket=bucket, Key=key)
        etag = resp["ETag"]
        manifest = DatasetManifest.from_json(resp["Body"].read())
        manifest.quality = dict(verdict)
        try:
            s3.put_object(
                Bucket=bucket, Key=key, Body=manifest.to_json().encode("utf-8"),
                ContentType="application/json", IfMatch=etag,
            )
            return manifest
        except ClientError as exc:
            if not is_precondition_failed(exc):
                raise
    raise RuntimeError(
        f"s3://{bucket}/{key} kept changing while the quality verdict was recorded; run the quality task again"
    )
