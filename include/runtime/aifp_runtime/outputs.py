"""Atomic output files and the completion marker (schema: ``aifp_runtime.contract``)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aifp_runtime import contract, layout


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def marker_path(output_dir: Path) -> Path:
    return Path(output_dir) / layout.COMPLETION_MARKER


def remove_stale_marker(output_dir: Path) -> None:
    """A marker on disk must always belong to a finished run of this job: drop an earlier one first."""
    marker_path(output_dir).unlink(missing_ok=True)


def write_marker(
    output_dir: Path,
    files: Iterable[str],
    *,
    params_sha256: str,
    formats: Mapping[str, str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
    recipe: str = "",
    world_size: int = 1,
) -> contract.CompletionMarker:
    """Write the completion marker LAST, listing ``files`` (paths relative to ``output_dir``) with sha256.

    What is written is parsed back with :func:`contract.parse_marker` first, so a job can never
    write a marker the platform refuses (a bad path, NaN in the metrics) and still report success.
    """
    output_dir = Path(output_dir)
    entries = [contract.MarkerFile(name, sha256_file(output_dir / name), (output_dir / name).stat().st_size)
               for name in files]
    restarts = os.environ.get("SLURM_RESTART_COUNT") or "0"
    marker = contract.CompletionMarker(
        files=tuple(entries),
        params_sha256=params_sha256,
        formats=dict(formats or {}),
        metrics=dict(metrics or {}),
        job_id=os.environ.get("SLURM_JOB_ID") or None,
        recipe=recipe,
        restart_count=int(restarts) if restarts.isdigit() else 0,
        world_size=int(world_size),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        details=dict(details or {}),
    )
    data = marker.to_json()
    contract.parse_marker(data, output_dir=os.path.normpath(os.path.abspath(output_dir)))
    write_atomic(marker_path(output_dir), data)
    return marker
