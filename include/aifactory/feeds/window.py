"""A training window as a real dataset version: the member partitions' shards, one manifest.

The window dataset ``<tenant>/datasets/<feed>-w<days>d/<version>/`` is what the pipeline's stage,
train and export stages take: shards (server-side copies of the members' shards, renumbered in
partition order) and ``manifest.json`` written LAST with ``If-None-Match: *`` (a version without
a manifest does not exist). Its version is :func:`~aifactory.feeds.partitions.window_version` of
the member dataset versions: building the same window again finds the published manifest and
copies nothing. The manifest's ``sources`` name each member version and its manifest digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aifactory import layout
from aifactory.data.manifest import DatasetManifest, FileEntry, load_manifest
from aifactory.data.s3 import head, put_if_absent
from aifactory.errors import InputError
from aifactory.feeds.partitions import Member, window_version
from aifactory.text import shown


def check_members(feed: str, members: Sequence[tuple[Member, DatasetManifest]]) -> None:
    """Every member is a version of the feed's dataset, and all share the first one's schema."""
    if not members:
        raise InputError(f"feed {feed}: a training window needs at least one partition")
    first_member, first = members[0]
    for member, manifest in members:
        if (manifest.name, manifest.version, manifest.manifest_sha256) != (feed, member.version,
                                                                           member.manifest_sha256):
            raise InputError(f"feed {feed}: partition {member.partition} names dataset version {member.version} "
                             f"but {shown(manifest.prefix)} holds another; clear that partition's feed run")
        if manifest.schema != first.schema:
            raise InputError(f"feed {feed}: partition {member.partition} has other columns or types than "
                             f"{first_member.partition} ({manifest.schema} vs {first.schema}); a window needs one "
                             "schema: fix the upload and clear that partition's feed run")


def build_window_dataset(s3: Any, *, bucket: str, tenant: str, feed: str, days: int,
                         members: Sequence[tuple[Member, DatasetManifest]], log: Any = print) -> DatasetManifest:
    """Publish (or find) the window dataset of ``members`` (oldest partition first) and return its manifest."""
    check_members(feed, members)
    name = layout.feed_window_dataset(feed, days)
    version = window_version(feed, [m for m, _ in members])
    prefix = layout.dataset_prefix(tenant, name, version)
    existing = load_manifest(s3, bucket, prefix)
    if existing is not None:
        log(f"window {shown(layout.s3_uri(bucket, prefix))} already published ({existing.rows} rows); "
            "nothing copied")
        return existing
    files: list[FileEntry] = []
    for member, manifest in members:
        for entry in manifest.files:
            target = layout.shard_name(len(files))
            src, dst = manifest.prefix + entry.path, prefix + target
            s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src})
            copied = head(s3, bucket, dst)
            if copied is None or copied.size != entry.bytes:
                raise InputError(f"copy of {shown(src)} to {shown(dst)} has {copied.size if copied else 'no'} bytes, "
                                 f"not {entry.bytes}; clear the window task to copy again")
            files.append(FileEntry(path=target, bytes=entry.bytes, sha256=entry.sha256, rows=entry.rows))
        log(f"window: partition {member.partition} ({manifest.rows} rows, version {member.version}) copied")
    manifest = DatasetManifest(
        tenant=tenant, name=name, version=version,
        created_at=datetime.now(UTC).replace(microsecond=0).isoformat(),
        schema=members[0][1].schema,
        rows=sum(m.rows for _, m in members),
        files=files,
        sources=[{"uri": layout.s3_uri(bucket, m.prefix), "partition": member.partition, "etag": m.version,
                  "bytes": m.total_bytes, "sha256": m.manifest_sha256} for member, m in members],
        options={"window_of": feed, "window_days": int(days)},
    )
    key = prefix + layout.MANIFEST_NAME
    if not put_if_absent(s3, bucket, key, manifest.to_json().encode("utf-8"), content_type="application/json"):
        winner = load_manifest(s3, bucket, prefix)
        if winner is None:  # pragma: no cover - would mean the store ignores If-None-Match
            raise RuntimeError(f"{shown(key)} refused but not found; retry")
        return winner
    log(f"window: published {shown(layout.s3_uri(bucket, key))} ({manifest.rows} rows, {len(files)} file(s))")
    return manifest
