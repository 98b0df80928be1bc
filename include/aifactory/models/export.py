"""Publish a trained model from the HPC side to object storage, atomically.

The training job writes its outputs and, last, a completion marker (``layout.COMPLETION_MARKER``,
schema :mod:`aifactory.models.contract`) listing every output file with its sha256 and declaring
its model formats (``docs/failure-modes.md``, section 11: a COMPLETED job is not enough, the job
must prove its outputs). Export publishes exactly what the marker declares: it refuses a marker
that names ``manifest.json``, the model card or any path outside the job's output directory before
anything is fetched or published, fetches each declared file, checks its sha256 and size,
re-checks the declared formats (``onnx`` with ONNX Runtime against the PyTorch logits the job
recorded in ``onnx_check.json``; ``safetensors`` by reading its header), writes a model card
(:mod:`aifactory.models.modelcard`) that lists the marker's formats, uploads everything under
``layout.model_prefix(...)`` and only then ``manifest.json``, with a conditional write so that a
published version is never overwritten. A version without ``manifest.json`` is not published (an
export killed midway leaves none); a rerun for the same run finds the manifest and publishes
nothing new.

The ONNX export itself happens in the training job, where torch is (the Airflow side has no torch);
ONNX Runtime is small enough to re-check here.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifactory import layout
from aifactory.data.s3 import object_exists, put_if_absent
from aifactory.errors import FactoryError
from aifactory.hpc.remote import RemoteShell, join
from aifactory.models.contract import (
    MARKER_MAX_BYTES,
    ONNX_CHECK_FILE,
    CompletionMarker,
    MarkerError,
    parse_marker,
)
from aifactory.models.modelcard import CardContext, build_card, missing_fields, render_card_markdown

__all__ = [
    "CardContext",
    "ExportError",
    "export_model",
    "model_version",
    "recheck_onnx",
    "render_card_markdown",
    "safetensors_summary",
]


_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: ONNX Runtime's input type names -> the numpy dtype the probe is fed as
_ORT_INPUT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64",
                     "tensor(int32)": "int32"}


class ExportError(FactoryError):
    """The job's outputs cannot be published as they are (missing marker, checksum mismatch)."""


def model_version(run_id: str, dag_id: str, params_sha256: object) -> str:
    """Deterministic per DAG run and parameters, so re-running export targets the same version.

    The params digest is part of it: a deleted run triggered again under the same run id with new
    hyperparameters trains a new model (the engine submits anew), and that model must get a version
    of its own instead of meeting the old one's ``manifest.json`` and being dropped as "already
    published".
    """
    if not isinstance(params_sha256, str) or not _SHA256_RE.fullmatch(params_sha256):
        raise ExportError(
            "the train task's result carries no valid params digest (params_sha256); clear the train task "
            "so that it records the job it ran"
        )
    return "v-" + hashlib.sha256(f"{dag_id}\0{run_id}\0{params_sha256}".encode()).hexdigest()[:12]


def recheck_onnx(onnx_path: Path, check_path: Path) -> dict[str, Any]:
    """Run ``model.onnx`` with ONNX Runtime on the job's synthetic probe; compare with PyTorch's logits.

    The job wrote ``onnx_check.json`` with the probe inputs, PyTorch's logits for them and the
    tolerance (``|ort - torch| <= atol + rtol * |torch|``). The probe is fed in the dtype the
    graph's input declares (float32 features of the tabular recipe, int64 token ids of the text
    recipe). Returns the job's check plus ``export_recheck_max_abs_diff``.

    :raises ExportError: if the check file is missing or malformed, or the outputs differ.
    """
    import numpy as np
    import onnxruntime as ort

    try:
        check = json.loads(Path(check_path).read_text())
        tol = check["tolerance"]
        atol, rtol = float(tol["atol"]), float(tol["rtol"])
        probe_values = check["probe"]["features"]
        expected = np.asarray(check["probe"]["logits"], dtype="float32")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"onnx_check.json is missing or malformed ({exc}); the job did not check its ONNX "
                          "export. Rerun the train stage") from exc
    if not check.get("passed"):
        raise ExportError("the job's ONNX check did not pass (onnx_check.json); nothing was published")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    graph_input = session.get_inputs()[0]
    # the probe is fed in the dtype the graph declares (float features, int64 token ids), never the check's say
    dtype = _ORT_INPUT_DTYPES.get(graph_input.type)
    if dtype is None:
        raise ExportError(f"model.onnx takes {graph_input.type}; export re-checks only "
                          f"{', '.join(sorted(_ORT_INPUT_DTYPES))} inputs. Nothing was published; fix the recipe")
    try:
        probe = np.asarray(probe_values, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ExportError(f"onnx_check.json: the probe is not a {dtype} array ({exc}); nothing was published. "
                          "Rerun the train stage") from exc
    try:
        got = session.run(None, {graph_input.name: probe})[0]
    except Exception as exc:  # onnxruntime raises its own types (a shape or a token id the graph refuses)
        raise ExportError(f"model.onnx: ONNX Runtime cannot run the job's probe ({str(exc)[:300]}); nothing was "
                          "published. Rerun the train stage") from exc
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


def read_marker(sftp: Any, output_dir: str) -> CompletionMarker:
    """The job's completion marker, parsed and checked (:func:`contract.parse_marker`); ExportError if not."""
    path = join(output_dir, layout.COMPLETION_MARKER)
    try:
        with sftp.open(path, "rb") as fh:
            raw = fh.read(MARKER_MAX_BYTES + 1)
    except FileNotFoundError as exc:
        raise ExportError(f"completion marker not found at {path} on the HPC side; the job did not finish "
                          "its outputs. Check the train task's log") from exc
    except OSError as exc:
        if "No such file" in str(exc):
            raise ExportError(f"completion marker not found at {path} on the HPC side; the job did not finish "
                              "its outputs. Check the train task's log") from exc
        raise ExportError(f"cannot read the completion marker at {path}: {exc}") from exc
    try:
        return parse_marker(raw, output_dir=output_dir)
    except MarkerError as exc:
        raise ExportError(f"{exc} (in {path}); nothing was published") from exc


def _fetch_verified(sftp: Any, output_dir: str, marker: CompletionMarker, tmp: Path) -> list[dict[str, Any]]:
    """Fetch every file the marker declares into ``tmp`` and check its size and sha256 against it."""
    fetched: list[dict[str, Any]] = []
    for entry in marker.files:
        local = tmp.joinpath(*entry.path.split("/"))
        local.parent.mkdir(parents=True, exist_ok=True)
        sftp.get(join(output_dir, entry.path), str(local))
        digest = hashlib.sha256(local.read_bytes()).hexdigest()
        size = local.stat().st_size
        if digest != entry.sha256 or size != entry.bytes:
            raise ExportError(
                f"{entry.path}: sha256 {digest[:12]}… ({size} B) on the worker differs from the job's marker "
                f"{entry.sha256[:12]}… ({entry.bytes} B); the HPC copy is damaged or was changed after the job. "
                "Nothing was published; rerun the train stage."
            )
        fetched.append({"path": entry.path, "bytes": size, "sha256": digest})
    return fetched


def _check_formats(marker: CompletionMarker, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Re-check the declared formats export knows (onnx, safetensors); returns the ONNX check summary."""
    onnx_check: dict[str, Any] = {}
    if "onnx" in marker.formats:
        if marker.file(ONNX_CHECK_FILE) is None:
            raise ExportError(f"the marker declares an ONNX model but no {ONNX_CHECK_FILE}: the job did not check "
                              "its ONNX export against PyTorch. Nothing was published; fix the recipe")
        onnx_check = recheck_onnx(tmp / marker.formats["onnx"], tmp / ONNX_CHECK_FILE)
        log(f"{marker.formats['onnx']} re-checked with ONNX Runtime: "
            f"max |diff| {onnx_check['export_recheck_max_abs_diff']:.2e}")
    if "safetensors" in marker.formats:
        tensors = safetensors_summary(tmp / marker.formats["safetensors"])["tensors"]
        log(f"{marker.formats['safetensors']} holds {len(tensors)} tensors")
    return onnx_check


def export_model(
    s3: Any,
    shell: RemoteShell,
    *,
    bucket: str,
    model_prefix: str,
    output_dir: str,
    card: CardContext,
    params_sha256: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Verify the job's outputs and publish what its marker declares, ``manifest.json`` last; idempotent.

    :param params_sha256: when given, the marker must record it (the outputs are this run's).
    :raises ExportError: before anything is published, when the marker is missing, malformed, names
        a platform file or a path outside ``output_dir``, or a file differs from it.
    """
    uri = layout.s3_uri(bucket, model_prefix)
    manifest_key = model_prefix + layout.MANIFEST_NAME
    if object_exists(s3, bucket, manifest_key):
        published = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
        log(f"{uri} is already published ({layout.MANIFEST_NAME} exists): nothing to do")
        return {"model_uri": uri, "model": card.model, "version": card.version, "published": False,
                "metrics": published.get("metrics", {}), "files": published["files"]}

    sftp = shell.sftp_client()
    marker = read_marker(sftp, output_dir)
    if params_sha256 is not None and marker.params_sha256 != params_sha256:
        raise ExportError(f"the completion marker in {output_dir} records params digest {marker.params_sha256[:12]}…, "
                          f"not this run's {params_sha256[:12]}…: the outputs are another run's. Nothing was "
                          "published; clear the train task")
    with tempfile.TemporaryDirectory(prefix="aifp-export-") as tmp_name:
        tmp = Path(tmp_name)
        uploaded = _fetch_verified(sftp, output_dir, marker, tmp)
        onnx_check = _check_formats(marker, tmp, log)
        card_data = build_card(
            card,
            metrics=dict(marker.metrics),
            files=list(uploaded),
            published_at=datetime.now(UTC).isoformat(timespec="seconds"),
            formats=dict(marker.formats),
            onnx_check=onnx_check,
            job={"restart_count": marker.restart_count, "world_size": marker.world_size},
        )
        lacking = missing_fields(card_data)
        if lacking:
            raise ExportError(f"the model card lacks {', '.join(lacking)}; nothing was published. "
                              "The train/quality/ingest stages' results are incomplete")
        generated = {
            layout.MODEL_CARD_JSON: json.dumps(card_data, indent=2, sort_keys=True).encode(),
            layout.MODEL_CARD_MD: render_card_markdown(card_data).encode(),
        }
        for name, data in generated.items():
            (tmp / name).write_bytes(data)
            uploaded.append({"path": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})

        # every file first ...
        for i, f in enumerate(uploaded, 1):
            with open(tmp.joinpath(*f["path"].split("/")), "rb") as fh:
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
        "metrics": dict(marker.metrics),
        "dataset": card.dataset,
        "slurm": card_data["slurm"],
        "formats": card_data["formats"],
        "params_sha256": marker.params_sha256,
    }
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    if not put_if_absent(s3, bucket, manifest_key, body, content_type="application/json"):
        log(f"{uri} was published concurrently by another attempt; keeping that version")
        return {"model_uri": uri, "model": card.model, "version": card.version, "published": False,
                "metrics": dict(marker.metrics), "files": uploaded}
    log(f"published {uri} ({len(uploaded)} files, {layout.MANIFEST_NAME} last)")
    return {"model_uri": uri, "model": card.model, "version": card.version, "published": True,
            "metrics": dict(marker.metrics), "files": uploaded}
