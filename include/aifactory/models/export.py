"""Publish a trained model from the HPC side to object storage, atomically.

The training job writes its outputs and, last, a completion marker ``_COMPLETED.json`` listing
every output file with its sha256 (FAILURE-MODES 11: a COMPLETED job is not enough, the job must
prove its outputs). Export fetches those files, checks each digest, re-checks the model formats
(``model.onnx`` with ONNX Runtime against the PyTorch logits the job recorded in
``onnx_check.json``; ``model.safetensors`` by reading its header), writes a model card
(:mod:`aifactory.models.modelcard`), uploads everything under ``<tenant>/models/<model>/<version>/`` and
only then ``manifest.json``, with a conditional write so that a published version is never
overwritten. A version without ``manifest.json`` is not published (an export killed midway leaves
none); a rerun for the same run finds the manifest and publishes nothing new.

The ONNX export itself happens in the training job, where torch is (the Airflow side has no torch);
ONNX Runtime is small enough to re-check here.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from aifactory.errors import FactoryError
from aifactory.models.modelcard import CardContext, build_card, missing_fields, render_card_markdown
from aifactory.hpc.remote import RemoteShell, join
from aifactory.data.s3 import object_exists, put_if_absent

__all__ = [
    "CardContext",
    "ExportError",
    "export_model",
    "model_version",
    "recheck_onnx",
    "render_card_markdown",
    "safetensors_summary",
]

COMPLETION_MARKER = "_COMPLETED.json"
MODEL_MANIFEST = "manifest.json"
CARD_MD = "MODEL_CARD.md"
CARD_JSON = "model_card.json"


class ExportError(FactoryError):
    """The job's outputs cannot be published as they are (missing marker, checksum mismatch)."""


def model_version(run_id: str, dag_id: str) -> str:
    """Deterministic per DAG run, so re-running export targets the same version."""
    return "v-" + hashlib.sha256(f"{dag_id}\0{run_id}".encode()).hexdigest()[:12]


#: Model files a recipe may produce, by format name (shown in the card).
FORMATS = {"model.pt": "pytorch", "model.safetensors": "safetensors", "model.onnx": "onnx"}


def recheck_onnx(onnx_path: Path, check_path: Path) -> dict[str, Any]:
    """Run ``model.onnx`` with ONNX Runtime on the job's synthetic probe; compare with PyTorch's logits.

    The job wrote ``onnx_check.json`` with the probe inputs, PyTorch's logits for them and the
    tolerance (``|ort - torch| <= atol + rtol * |torch|``). Returns the job's check plus
    ``export_recheck_max_abs_diff``.

    :raises ExportError: if the check file is missing or malformed, or the outputs differ.
    """
    import numpy as np
    import onnxruntime as ort

    try:
        check = json.loads(Path(check_path).read_text())
        tol = check["tolerance"]
        atol, rtol = float(tol["atol"]), float(tol["rtol"])
        probe = np.asarray(check["probe"]["features"], dtype="float32")
        expected = np.asarray(check["probe"]["logits"], dtype="float32")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"onnx_check.json is missing or malformed ({exc}); the job did not check its ONNX "
                          "export. Rerun the train stage") from exc
    if not check.get("passed"):
        raise ExportError("the job's ONNX check did not pass (onnx_check.json); nothing was published")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = session.run(None, {name: probe})[0]
    if got.shape != expected.shape or not np.allclose(got, expected, atol=atol, rtol=rtol):
        diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        raise ExportError(
            f"model.onnx: ONNX Runtime {ort.__version__} on this worker differs from the job's PyTorch logits by "
            f"{diff:.3g} (tolerance atol={atol}, rtol={rtol}); nothing was published. Check the onnxruntime "
            "versions of requirements.txt and requirements-train.txt"
        )
    summary = {k: v for k, v in check.items() if k != "probe"}
    summary["export_recheck_max_abs_diff"] = float(np.abs(got - expected).max())
    summary["export_onnxruntime_version"] = ort.__version__
    return summary


def safetensors_summary(path: Path) -> dict[str, Any]:
    """Tensor names and shapes of a safetensors file (reads the header only); ExportError if unreadable."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            return {"tensors": {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()},
                    "metadata": dict(fh.metadata() or {})}
    except Exception as exc:  # safetensors raises its own error types
        raise ExportError(f"model.safetensors cannot be read ({exc}); nothing was published. "
                          "Rerun the train stage") from exc


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
        return {"model_uri": uri, "model": card.model, "version": card.version, "published": False,
                "metrics": published.get("metrics", {}), "files": published["files"]}

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
        names = {f["path"] for f in uploaded}
        onnx_check: dict[str, Any] = {}
        if "model.onnx" in names:
            onnx_check = recheck_onnx(Path(tmp) / "model.onnx", Path(tmp) / "onnx_check.json")
            log(f"model.onnx re-checked with ONNX Runtime: max |diff| {onnx_check['export_recheck_max_abs_diff']:.2e}")
        if "model.safetensors" in names:
            tensors = safetensors_summary(Path(tmp) / "model.safetensors")["tensors"]
            log(f"model.safetensors holds {len(tensors)} tensors")
        card_data = build_card(
            card,
            metrics=metrics,
            files=list(uploaded),
            published_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            formats={FORMATS[n]: n for n in sorted(names) if n in FORMATS},
            onnx_check=onnx_check,
            job=marker,
        )
        lacking = missing_fields(card_data)
        if lacking:
            raise ExportError(f"the model card lacks {', '.join(lacking)}; nothing was published. "
                              "The train/quality/ingest stages' results are incomplete")
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
        "slurm": card_data["slurm"],
        "formats": card_data["formats"],
    }
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    if not put_if_absent(s3, bucket, manifest_key, body, content_type="application/json"):
        log(f"{uri} was published concurrently by another attempt; keeping that version")
        return {"model_uri": uri, "model": card.model, "version": card.version, "published": False,
                "metrics": metrics, "files": uploaded}
    log(f"published {uri} ({len(uploaded)} files, manifest.json last)")
    return {"model_uri": uri, "model": card.model, "version": card.version, "published": True,
            "metrics": metrics, "files": uploaded}
