"""The ingest stage: resolve, version, convert, upload, and publish the manifest last."""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifactory.data.ingest.convert import convert_to_parquet
from aifactory.data.ingest.formats import check_dataset_name, derive_dataset_name
from aifactory.data.ingest.sources import Log, _source_from_store, resolve_sources
from aifactory.data.ingest.upload import _ShardUploader
from aifactory.data.ingest.versions import (
    DEFAULT_ROW_GROUP_ROWS,
    DEFAULT_SHARD_ROWS,
    compute_version,
    ingest_options,
)
from aifactory.data.manifest import DatasetManifest, load_manifest
from aifactory.data.s3 import check_tenant_uri, put_if_absent
from aifactory.errors import InputError
from aifactory.layout import dataset_manifest_key, dataset_prefix, s3_uri
from aifactory.text import shown


def ingest_dataset(
    s3: Any,
    *,
    source_uri: str,
    bucket: str,
    tenant: str,
    dataset_name: str | None = None,
    workdir: Path,
    log: Log = print,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    shard_rows: int = DEFAULT_SHARD_ROWS,
) -> DatasetManifest:
    """Ingest ``source_uri`` into ``s3://<bucket>/<tenant>/datasets/<name>/<version>/``.

    :param s3: a client from :func:`aifactory.data.s3.make_client`.
    :param source_uri: one object or a folder (ending in ``/``) inside the tenant's raw area.
    :param bucket: the tenant's bucket, from the tenant spec (never from the user).
    :param tenant: the tenant id, from the tenant spec.
    :param dataset_name: defaults to the source basename, sanitised to ``[a-z0-9_-]``.
    :param workdir: local scratch; a private (0700) subfolder is created and removed afterwards.
    :param log: progress sink (``print``, a logger's ``info``).
    :param row_group_rows: rows per Parquet row group.
    :param shard_rows: rows per shard before a new shard (``layout.shard_name``) starts.
    :returns: the published (or already existing) manifest.
    """
    key = check_tenant_uri(source_uri, bucket=bucket, tenant=tenant)
    name = check_dataset_name(dataset_name) if dataset_name is not None else derive_dataset_name(key)
    if row_group_rows < 1 or shard_rows < 1:
        raise InputError("row_group_rows and shard_rows must be positive")

    sources, fmt = resolve_sources(s3, bucket=bucket, key=key, uri=source_uri)
    options = ingest_options(row_group_rows=row_group_rows, shard_rows=shard_rows)
    version = compute_version(sources, options)
    prefix = dataset_prefix(tenant, name, version)
    total_in = sum(s.size for s in sources)
    log(
        f"ingest: {shown(source_uri)} -> {len(sources)} {fmt.kind} object(s), {total_in} bytes; "
        f"version {version} at {shown(s3_uri(bucket, prefix))}"
    )

    existing = load_manifest(s3, bucket, prefix)
    if existing is not None:
        _check_same_version(existing, tenant=tenant, name=name, version=version)
        log(
            f"ingest: version {version} already published ({existing.rows} rows, "
            f"{len(existing.files)} file(s)); reusing it, nothing converted or uploaded"
        )
        return existing

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"ingest-{version}-", dir=workdir))  # mode 0700
    try:
        inputs = [
            _source_from_store(s3, bucket, obj, index=i, srcdir=scratch / "src", fmt=fmt, log=log)
            for i, obj in enumerate(sources)
        ]

        outdir = scratch / "out"
        outdir.mkdir()
        started = time.monotonic()
        uploader = _ShardUploader(s3, bucket, prefix, log=log)
        try:
            schema, shard_paths, shard_rows_list = convert_to_parquet(
                inputs, fmt, outdir, row_group_rows=row_group_rows, shard_rows=shard_rows, log=log,
                on_shard=uploader.submit,
            )
            rows = sum(shard_rows_list)
            log(
                f"ingest: converted {rows} rows, {len(schema)} columns into {len(shard_paths)} shard(s) "
                f"in {time.monotonic() - started:.1f}s; finishing uploads"
            )
            source_entries = []
            for src, obj in zip(inputs, sources, strict=True):
                size, digest = src.finish()
                source_entries.append({"uri": src.label, "etag": obj.etag, "bytes": size, "sha256": digest})
                if src.path is not None:
                    src.path.unlink(missing_ok=True)  # free scratch space
            files = uploader.finish(shard_paths, shard_rows_list)
        except BaseException:
            uploader.abort()
            raise
        log(
            f"ingest: {len(files)} shard(s), {sum(f.bytes for f in files)} bytes converted and uploaded "
            f"in {time.monotonic() - started:.1f}s"
        )

        manifest = DatasetManifest(
            tenant=tenant,
            name=name,
            version=version,
            created_at=datetime.now(UTC).replace(microsecond=0).isoformat(),
            schema=[{"name": f.name, "type": str(f.type)} for f in schema],
            rows=rows,
            files=files,
            sources=source_entries,
            options=options,
        )
        manifest_uri = shown(s3_uri(bucket, dataset_manifest_key(tenant, name, version)))
        written = put_if_absent(
            s3, bucket, dataset_manifest_key(tenant, name, version), manifest.to_json().encode("utf-8"),
            content_type="application/json",
        )
        if not written:
            winner = load_manifest(s3, bucket, prefix)
            if winner is None:  # pragma: no cover - would mean the store ignores If-None-Match
                raise RuntimeError(f"{manifest_uri} refused but not found; retry")
            log(f"ingest: another run published {version} first; using its manifest")
            return winner
        log(
            f"ingest: published {manifest_uri} "
            f"({rows} rows, {len(files)} file(s), {manifest.total_bytes} bytes)"
        )
        return manifest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_same_version(m: DatasetManifest, *, tenant: str, name: str, version: str) -> None:
    if (m.tenant, m.name, m.version) != (tenant, name, version):
        raise InputError(
            f"manifest at {shown(dataset_prefix(tenant, name, version))} describes "
            f"{shown(dataset_prefix(m.tenant, m.name, m.version))}; the dataset area was tampered with - ask the platform team"
        )
