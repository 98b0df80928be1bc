"""Publish a trained model from the HPC side to object storage, atomically.

The training job writes its outputs and, last, a completion marker ``_COMPLETED.json`` listing
every output file with its sha256 (FAILURE-MODES 11: a COMPLETED job is not enough, the job must
prove its outputs). Export fetches those files, checks each digest, writes a model card, uploads
everything under ``<tenant>/models/<model>/<version>/`` and only then ``manifest.json``, with a
conditional write so that a published version is never overwritten. A version without
``manifest.json`` is not published; a rerun for the same run finds the manifest and publishes
nothing new.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from aifactory.errors import FactoryError
from aifactory.remote import RemoteShell, join
from aifactory.s3 import is_precondition_failed, object_exists

COMPLETION_MARKER = "_COMPLETED.json"
MODEL_MANIFEST = "manifest.json"
CARD_MD = "MODEL_CARD.md"
CARD_JSON = "model_card.json"


class ExportError(FactoryError):
    """The job's outputs cannot be published as they are (missing marker, checksum mismatch)."""


@dataclass(frozen=True)
class CardContext:
    """What the model card records beyond the job's own outputs."""

    tenant: str
    model: str
    version: str
    dag_id: str
    run_id: str
    recipe: str
    hyperparameters: dict[str, Any]
    dataset: dict[str, Any]  # name, version, uri, manifest_sha256, rows
    quality: dict[str, Any]  # verdict and compact summary
    slurm: dict[str, Any]  # job_id(s), state, accounting (elapsed, cpu_hours, gpu_hours, tres)
    code_version: str


def model_version(run_id: str, dag_id: str) -> str:
    """Deterministic per DAG run, so re-running export targets the same version."""
    return "v-" + hashlib.sha256(f"{dag_id}\0{run_id}".encode()).hexdigest()[:12]


def render_card_markdown(card: dict[str, Any]) -> str:
    ds, q, sl, m = card["dataset"], card["quality"], card["slurm"], card["metrics"]
    lines = [
        f"# Model card: {card['model']} ({card['version']})",
        "",
        f"Tenant **{card['tenant']}**; produced by pipeline `{card['dag_id']}`, run `{card['run_id']}`,"
        f" published {card['published_at']}.",
        "",
        "## Data",
        f"- dataset: `{ds.get('name')}` version `{ds.get('version')}` ({ds.get('rows')} rows)",
        f"- source: `{ds.get('uri')}`",
        f"- dataset manifest sha256: `{ds.get('manifest_sha256')}`",
        f"- quality verdict: **{q.get('verdict')}** ({q.get('expectations', '?')} expectations, "
        f"{q.get('failed', 0)} failed) with suite `{q.get('suite')}`",
        "",
        "## Training",
        f"- recipe: `{card['recipe']}`",
        f"- code version: `{card['code_version']}`",
        "- hyperparameters:",
        "",
        "```json",
        json.dumps(card["hyperparameters"], indent=2, sort_keys=True),
        "```",
        "",
        "## Compute",
        f"- Slurm job id(s): {', '.join(str(j) for j in sl.get('job_ids', []))}",
        f"- final state: {sl.get('state')}",
        f"- elapsed: {sl.get('elapsed_s')} s; CPU-hours: {sl.get('cpu_hours')}; GPU-hours: {sl.get('gpu_hours')}",
        f"- allocated TRES: `{sl.get('alloc_tres')}`",
        "",
        "## Metrics (held-out split)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in sorted(m):
        lines.append(f"| {key} | {m[key]} |")
    lines += ["", "## Files", "", "| file | bytes | sha256 |", "|---|---|---|"]
    for f in card["files"]:
        lines.append(f"| {f['path']} | {f['bytes']} | `{f['sha256']}` |")
    return "\n".join(lines) + "\n"


def _read_remote_json(sftp: Any, path: str, what: str) -> dict[str, Any]:
    try:
        with sftp.open(path, "rb") as fh:
            return json.loads(fh.read())
    except FileNotFoundError as exc:
        raise ExportError(f"{what} not found at {path} on the HPC side; the job did not finish its outputs") from exc
    except (OSError, ValueError) as exc:
        if "No such file" in str(exc):
            raise ExportError(f"{what} not found at {path} on the HPC side; the job did not finish its outputs") from exc
        raise ExportError(f"cannot read {what} at {path}: {exc}") from exc


def export_model(
    s3: Any,
    shell: RemoteShell,
    *,
    bucket: str,
    model_prefix: str,
    output_dir: str,
    card: CardContext,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Verify the job's outputs and publish them with ``manifest.json`` last; idempotent per version."""
    uri = f"s3://{bucket}/{model_prefix}"
    manifest_key = model_prefix + MODEL_MANIFEST
    if object_exists(s3, bucket, manifest_key):
        published = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
        log(f"{uri} is already published (manifest.json exists): nothing to do")
        return {"model_uri": uri, "published": False, "metrics": published.get("metrics", {}), "files": published["files"]}

    sftp = shell.sftp_client()
    marker = _read_remote_json(sftp, join(output_dir, COMPLETION_MARKER), "completion marker")
    # The recipe's contract: {"files": {"<name>": {"sha256": ..., "bytes": ...}, ...}, ...}
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        raise ExportError(f"completion marker in {output_dir} lists no files; the job's outputs are incomplete")
    entries = [{"path": name, **(meta if isinstance(meta, dict) else {})} for name, meta in sorted(files.items())]

    uploaded: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="aifp-export-") as tmp:
        for entry in entries:
            name = str(entry["path"])
            if "/" in name or name in ("", ".", "..") or name.startswith("."):
                raise ExportError(f"completion marker names an unsafe file {name!r}")
            local = Path(tmp) / name
            sftp.get(join(output_dir, name), str(local))
            digest = hashlib.sha256(local.read_bytes()).hexdigest()
            if digest != entry.get("sha256"):
                raise ExportError(
                    f"{name}: sha256 on the worker {digest[:12]}… differs from the job's marker "
                    f"{str(entry.get('sha256'))[:12]}…; the HPC copy is damaged or was changed after the job. "
                    "Nothing was published; rerun the train stage."
                )
            if name == "metrics.json":
                metrics = json.loads(local.read_bytes())
            uploaded.append({"path": name, "bytes": local.stat().st_size, "sha256": digest})

        if not metrics:
            raise ExportError(f"metrics.json missing from the job's outputs in {output_dir}")
        card_data: dict[str, Any] = {
            "tenant": card.tenant,
            "model": card.model,
            "version": card.version,
            "dag_id": card.dag_id,
            "run_id": card.run_id,
            "recipe": card.recipe,
            "hyperparameters": card.hyperparameters,
            "dataset": card.dataset,
            "quality": card.quality,
            "slurm": card.slurm,
            "code_version": card.code_version,
            "metrics": metrics,
            "files": list(uploaded),
            "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        generated = {
            CARD_JSON: json.dumps(card_data, indent=2, sort_keys=True).encode(),
            CARD_MD: render_card_markdown(card_data).encode(),
        }
        for name, data in generated.items():
            (Path(tmp) / name).write_bytes(data)
            uploaded.append({"path": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})

        # every file first ...
        for i, f in enumerate(uploaded, 1):
            with open(Path(tmp) / f["path"], "rb") as fh:
                s3.put_object(Bucket=bucket, Key=model_prefix + f["path"], Body=fh)
            log(f"uploaded {f['path']} ({i}/{len(uploaded)}, {f['bytes']} B)")

    # ... and the manifest last, never over an existing one (conditional write)
    manifest = {
        "format": 1,
        "model_uri": uri,
        "tenant": card.tenant,
        "model": card.model,
        "version": card.version,
        "files": uploaded,
        "metrics": metrics,
        "dataset": card.dataset,
        "slurm": card.slurm,
    }
    try:
        s3.put_object(
            Bucket=bucket,
            Key=manifest_key,
            Body=json.dumps(manifest, indent=2, sort_keys=True).encode(),
            ContentType="application/json",
            IfNoneMatch="*",
        )
    except Exception as exc:  # botocore ClientError; keep botocore out of the signature
        if is_precondition_failed(exc):
            log(f"{uri} was published concurrently by another attempt; keeping that version")
            return {"model_uri": uri, "published": False, "metrics": metrics, "files": uploaded}
        raise
    log(f"published {uri} ({len(uploaded)} files, manifest.json last)")
    return {"model_uri": uri, "published": True, "metrics": metrics, "files": uploaded}
