"""The recipe contract: the completion marker a job writes last, defined once.

A job proves its outputs with one small JSON file, :data:`aifactory.layout.COMPLETION_MARKER`, in
its output directory, written last (``docs/failure-modes.md``, section 11: COMPLETED in sacct is
not enough). The same module is used by three parties:

* the **job** on the cluster writes it (through ``aifp_runtime.outputs.write_marker``, which
  parses what it wrote with :func:`parse_marker` before renaming it into place);
* the **Slurm engine** reads it to accept a finished job, and to adopt one only when
  ``params_sha256`` equals :func:`params_digest` of this run's ``params.json`` bytes;
* **export** publishes exactly the files and formats it declares, after checking each sha256.

Standard library only: :mod:`aifactory.models.bundle` ships this file, with ``layout.py`` and
``errors.py``, into the run directory as the package ``aifp_runtime``, where ``aifactory`` is
not installed. One definition, three readers.

Schema version 1 (JSON object)::

    {
      "schema_version": 1,
      "files": [{"path": "model.onnx", "sha256": "<64 hex>", "bytes": 1234}, ...],
      "formats": {"onnx": "model.onnx", "pytorch": "model.pt", ...},   # each names a listed file
      "metrics": {"test_accuracy": 0.97, ...},                         # JSON object
      "params_sha256": "<64 hex>",   # sha256 of the params.json bytes the job ran with
      "job_id": "123",               # SLURM_JOB_ID (null outside Slurm)
      "recipe": "tabular_classifier",
      "restart_count": 0, "world_size": 2, "finished_at": "2026-01-01T00:00:00Z",
      "details": {...}               # recipe-specific JSON (e.g. the ONNX parity check)
    }

A file path is relative to the output directory: segments of :data:`layout.SAFE_FILE_RE` (no
``..``, no hidden files, no absolute path), never one of the names export writes itself
(``manifest.json``, the model card) nor the marker.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

if __package__ == "aifp_runtime":  # in a run directory, shipped by aifactory.models.bundle
    from aifp_runtime import layout  # type: ignore[import-not-found,no-redef]
    from aifp_runtime.errors import FactoryError  # type: ignore[import-not-found,no-redef]
else:
    from aifactory import layout
    from aifactory.errors import FactoryError

__all__ = [
    "MARKER_MAX_BYTES",
    "MARKER_SCHEMA_VERSION",
    "CompletionMarker",
    "MarkerError",
    "MarkerFile",
    "ONNX_CHECK_FILE",
    "parse_marker",
    "params_digest",
    "RESERVED_NAMES",
]

#: The schema this module writes and reads. A reader refuses any other version.
MARKER_SCHEMA_VERSION = 1
#: A marker is small; a larger file is refused unread.
MARKER_MAX_BYTES = 1_000_000
#: At most this many files per marker.
MAX_FILES = 1000
#: A marker declaring the ``onnx`` format must list this file too: the job's ONNX Runtime parity
#: check (tolerance, a synthetic probe's inputs and PyTorch's logits for them), which export re-runs.
ONNX_CHECK_FILE = "onnx_check.json"
#: Names a marker may not declare: export writes them itself, or they are the marker.
RESERVED_NAMES = frozenset({layout.MANIFEST_NAME, layout.MODEL_CARD_MD, layout.MODEL_CARD_JSON,
                            layout.COMPLETION_MARKER})
_HEX = frozenset("0123456789abcdef")


class MarkerError(FactoryError):
    """A completion marker that cannot be trusted: the message names the field and the problem."""


def params_digest(params_json_bytes: bytes) -> str:
    """sha256 (hex) of the exact ``params.json`` bytes a job runs with: its parameters' identity."""
    return hashlib.sha256(bytes(params_json_bytes)).hexdigest()


@dataclass(frozen=True)
class MarkerFile:
    """One output file: its path relative to the output directory, sha256 and size."""

    path: str
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class CompletionMarker:
    """A parsed, checked completion marker (see the module docstring for the JSON form)."""

    files: tuple[MarkerFile, ...]
    params_sha256: str
    formats: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    recipe: str = ""
    restart_count: int = 0
    world_size: int = 1
    finished_at: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    schema_version: int = MARKER_SCHEMA_VERSION

    def file(self, path: str) -> MarkerFile | None:
        return next((f for f in self.files if f.path == path), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "files": [f.to_dict() for f in self.files],
            "formats": dict(self.formats),
            "metrics": dict(self.metrics),
            "params_sha256": self.params_sha256,
            "job_id": self.job_id,
            "recipe": self.recipe,
            "restart_count": self.restart_count,
            "world_size": self.world_size,
            "finished_at": self.finished_at,
            "details": dict(self.details),
        }

    def to_json(self) -> bytes:
        """The bytes a job writes (strict JSON: NaN and infinities are refused)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False).encode()


def _hex64(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise MarkerError(f"completion marker: {what} must be 64 lower-case hex digits (a sha256), got {value!r:.80}")
    return value


def _int(value: Any, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise MarkerError(f"completion marker: {what} must be an integer >= {low}, got {value!r:.40}")
    return value


def _json_object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise MarkerError(f"completion marker: {what} must be a JSON object")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MarkerError(f"completion marker: {what} is not plain JSON ({exc})") from None
    return dict(value)


def check_output_path(path: Any, output_dir: str) -> str:
    """``path`` if it names a file inside ``output_dir`` that a marker may declare; MarkerError otherwise."""
    if not isinstance(path, str) or not path:
        raise MarkerError(f"completion marker: a file path must be a non-empty string, got {path!r:.80}")
    shown = json.dumps(path[:120])
    if path in RESERVED_NAMES:
        raise MarkerError(f"completion marker names {shown}, a file only the platform writes "
                          f"({', '.join(sorted(RESERVED_NAMES))}); the job may not declare it")
    if path.startswith("/"):
        raise MarkerError(f"completion marker names the absolute path {shown}; paths must be relative "
                          "to the job's output directory")
    parts = path.split("/")
    if ".." in parts or "." in parts or "" in parts:
        raise MarkerError(f"completion marker names {shown}, which leaves or re-enters the output directory "
                          "('..', '.' or an empty segment); nothing is published from it")
    bad = [p for p in parts if not layout.SAFE_FILE_RE.fullmatch(p)]
    if bad:
        raise MarkerError(f"completion marker names {shown}: segment {json.dumps(bad[0][:60])} is not a plain "
                          f"file name ({layout.SAFE_FILE_RE.pattern})")
    full = posixpath.join(output_dir, path)
    if not layout.path_inside(full, output_dir):
        raise MarkerError(f"completion marker names {shown}, which is outside the output directory {output_dir}")
    return path


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_marker(raw: bytes | str | Mapping[str, Any], *, output_dir: str) -> CompletionMarker:
    """Parse and check a completion marker of the job whose output directory is ``output_dir``.

    :raises MarkerError: naming what is wrong (not JSON, unknown schema version, a path that is
        absolute, has ``..`` or names ``manifest.json``, a bad digest, a format naming no listed file).
    """
    if not isinstance(output_dir, str) or not layout.path_inside(output_dir, "/"):
        raise MarkerError(f"output directory {output_dir!r:.120} must be a normalised absolute path")
    if isinstance(raw, Mapping):
        data: Any = raw
    else:
        if len(raw) > MARKER_MAX_BYTES:
            raise MarkerError(f"completion marker is {len(raw)} bytes, over the {MARKER_MAX_BYTES} allowed")
        try:
            data = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MarkerError(f"completion marker is not JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise MarkerError("completion marker is not a JSON object")
    version = data.get("schema_version")
    if version != MARKER_SCHEMA_VERSION or isinstance(version, bool):
        raise MarkerError(
            f"completion marker has schema_version {version!r:.40}; this platform reads version "
            f"{MARKER_SCHEMA_VERSION} only (a marker without one was written before the recipe contract). "
            "Clear the train task to run the job again"
        )
    files_raw = data.get("files")
    if not isinstance(files_raw, list) or not files_raw:
        raise MarkerError("completion marker: files must be a non-empty list of {path, sha256, bytes}")
    if len(files_raw) > MAX_FILES:
        raise MarkerError(f"completion marker lists {len(files_raw)} files, over the {MAX_FILES} allowed")
    files: list[MarkerFile] = []
    seen: set[str] = set()
    for i, entry in enumerate(files_raw):
        if not isinstance(entry, Mapping):
            raise MarkerError(f"completion marker: files[{i}] must be an object {{path, sha256, bytes}}")
        path = check_output_path(entry.get("path"), output_dir)
        if path in seen:
            raise MarkerError(f"completion marker lists {json.dumps(path)} twice")
        seen.add(path)
        files.append(MarkerFile(path, _hex64(entry.get("sha256"), f"files[{i}].sha256"),
                                _int(entry.get("bytes"), f"files[{i}].bytes")))
    formats_raw = data.get("formats") or {}
    if not isinstance(formats_raw, Mapping):
        raise MarkerError("completion marker: formats must be an object {format name: file path}")
    formats: dict[str, str] = {}
    for name, path in formats_raw.items():
        if not isinstance(name, str) or not layout.NAME_RE.fullmatch(name):
            raise MarkerError(f"completion marker: format name {name!r:.60} must match {layout.NAME_RE.pattern}")
        if path not in seen:
            raise MarkerError(f"completion marker: format {name} names {json.dumps(str(path)[:120])}, "
                              "which is not among its files")
        formats[name] = path
    job_id = data.get("job_id")
    if job_id is not None and not (isinstance(job_id, str) and job_id.isdigit() and len(job_id) <= 20):
        raise MarkerError(f"completion marker: job_id must be a Slurm job id (digits) or null, got {job_id!r:.40}")
    recipe = data.get("recipe", "")
    if not isinstance(recipe, str) or (recipe and not layout.NAME_RE.fullmatch(recipe)):
        raise MarkerError(f"completion marker: recipe {recipe!r:.60} must match {layout.NAME_RE.pattern}")
    finished_at = data.get("finished_at", "")
    if not isinstance(finished_at, str) or len(finished_at) > 64:
        raise MarkerError("completion marker: finished_at must be a short string (ISO 8601)")
    metrics = _json_object(data.get("metrics"), "metrics")
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise MarkerError(f"completion marker: metrics.{key} is not a finite number")
    return CompletionMarker(
        files=tuple(files),
        params_sha256=_hex64(data.get("params_sha256"), "params_sha256"),
        formats=formats,
        metrics=metrics,
        job_id=job_id,
        recipe=recipe,
        restart_count=_int(data.get("restart_count", 0), "restart_count"),
        world_size=_int(data.get("world_size", 1), "world_size", 1),
        finished_at=finished_at,
        details=_json_object(data.get("details"), "details"),
    )
