"""A trained model's files, written the same way by every recipe: PyTorch, safetensors, ONNX, parity.

torch, onnxruntime and safetensors are imported where they are used (on rank 0, after training).

* ``model.pt``: the trained module's ``state_dict`` (``torch.save``).
* ``model.safetensors``: the exported module's tensors, with the recipe's metadata.
* ``model.onnx``: the exported module (legacy TorchScript exporter, opset :data:`ONNX_OPSET`),
  one input (:class:`OnnxSignature`) and one output, ``logits``.
* ``onnx_check.json`` (``contract.ONNX_CHECK_FILE``): ONNX Runtime's logits against PyTorch's on
  every held-out row and on a synthetic probe (no data values), within
  ``|ort - torch| <= ONNX_ATOL + ONNX_RTOL * |torch|``; the probe's inputs and PyTorch's logits are
  recorded, and the platform's export stage re-runs the probe (``aifactory.models.export.recheck_onnx``)
  before anything is published. A mismatch is :class:`OnnxMismatch` (exit status 3).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifp_runtime.contract import ONNX_CHECK_FILE
from aifp_runtime.job import JobFailed, log
from aifp_runtime.outputs import write_atomic

#: ONNX Runtime must reproduce PyTorch's logits within |ort - torch| <= ATOL + RTOL * |torch|.
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-4
ONNX_OPSET = 17
EXIT_ONNX_MISMATCH = 3
#: the model files, by format name (the completion marker declares them; export publishes them)
FORMATS = {"pytorch": "model.pt", "safetensors": "model.safetensors", "onnx": "model.onnx"}
#: the one output of every exported graph
OUTPUT = "logits"


class OnnxMismatch(JobFailed):
    """ONNX Runtime's outputs differ from PyTorch's beyond the stated tolerance."""

    exit_code = EXIT_ONNX_MISMATCH

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}; the model was not published. Report it with the job log")


@dataclass(frozen=True)
class OnnxSignature:
    """The exported graph's input: its name, its numpy dtype, and an example to trace with.

    :param input: the input's name (``features``, ``token_ids``).
    :param example: a tensor of the input's shape and dtype (its values do not matter).
    :param dynamic_axes: the input's axes that vary, by position (``{0: "batch"}``); the output's
        batch axis follows the input's.
    """

    input: str
    example: Any
    dynamic_axes: Mapping[int, str] = field(default_factory=lambda: {0: "batch"})

    @property
    def dtype(self) -> str:
        return str(self.example.numpy().dtype)


def write_model_files(output_dir: Path, *, weights: Any, exported: Any, signature: OnnxSignature,
                      metadata: Mapping[str, str]) -> None:
    """Write ``model.pt`` (``weights``' state_dict), ``model.safetensors`` and ``model.onnx`` (``exported``)."""
    import torch
    from safetensors.torch import save_file

    buf = io.BytesIO()
    torch.save(weights.state_dict(), buf)
    write_atomic(output_dir / FORMATS["pytorch"], buf.getvalue())

    tensors = {k: v.detach().contiguous().clone() for k, v in exported.state_dict().items()}
    tmp = output_dir / f".{FORMATS['safetensors']}.tmp"
    save_file(tensors, str(tmp), metadata=dict(metadata))
    os.replace(tmp, output_dir / FORMATS["safetensors"])

    tmp = output_dir / f".{FORMATS['onnx']}.tmp"
    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) needs no onnxscript; torch warns that it is legacy.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            exported, (signature.example,), str(tmp), input_names=[signature.input], output_names=[OUTPUT],
            dynamic_axes={signature.input: dict(signature.dynamic_axes), OUTPUT: {0: signature.dynamic_axes[0]}},
            opset_version=ONNX_OPSET, dynamo=False,
        )
    os.replace(tmp, output_dir / FORMATS["onnx"])


def check_onnx_parity(output_dir: Path, exported: Any, signature: OnnxSignature,
                      heldout: Iterable[tuple[Any, Any]], probe: Any) -> dict[str, Any]:
    """ONNX Runtime against PyTorch on every held-out batch ``(x, y)`` and on ``probe``; write onnx_check.json.

    Returns the check (with the probe), which the recipe puts in its marker's details (less the
    probe). :raises OnnxMismatch: when any logit differs beyond the tolerance.
    """
    import numpy as np
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(output_dir / FORMATS["onnx"]), providers=["CPUExecutionProvider"])
    max_abs = 0.0
    rows = disagree = 0
    correct_torch = correct_ort = 0
    with torch.no_grad():
        for x, y in heldout:
            t = exported(torch.from_numpy(x)).numpy()
            o = session.run([OUTPUT], {signature.input: x})[0]
            if not np.allclose(o, t, atol=ONNX_ATOL, rtol=ONNX_RTOL):
                raise OnnxMismatch(f"ONNX Runtime differs from PyTorch by up to {float(np.abs(o - t).max()):.3g} "
                                   f"(tolerance atol={ONNX_ATOL}, rtol={ONNX_RTOL}) on the held-out rows")
            max_abs = max(max_abs, float(np.abs(o - t).max()))
            rows += len(y)
            disagree += int((o.argmax(1) != t.argmax(1)).sum())
            correct_torch += int((t.argmax(1) == y).sum())
            correct_ort += int((o.argmax(1) == y).sum())
        # A synthetic probe (no data values): the export stage re-runs it with ONNX Runtime.
        probe_logits = exported(torch.from_numpy(probe)).numpy()
    probe_ort = session.run([OUTPUT], {signature.input: probe})[0]
    if not np.allclose(probe_ort, probe_logits, atol=ONNX_ATOL, rtol=ONNX_RTOL):
        raise OnnxMismatch("ONNX Runtime differs from PyTorch on the synthetic probe beyond the tolerance")
    check = {
        "tolerance": {"atol": ONNX_ATOL, "rtol": ONNX_RTOL, "rule": "|ort - torch| <= atol + rtol * |torch|"},
        "opset": ONNX_OPSET,
        "onnxruntime_version": ort.__version__,
        "torch_version": torch.__version__,
        "heldout_rows": rows,
        "heldout_max_abs_diff": max_abs,
        "heldout_argmax_disagreements": disagree,
        "heldout_accuracy_torch": correct_torch / rows if rows else None,
        "heldout_accuracy_onnx": correct_ort / rows if rows else None,
        # "features": the probe's inputs, in the graph's input dtype (float features, int64 token ids)
        "probe": {"features": probe.tolist(), "logits": probe_logits.tolist()},
        "passed": True,
    }
    write_atomic(output_dir / ONNX_CHECK_FILE, json.dumps(check, indent=2).encode())
    log(f"onnx: parity ok on {rows} held-out rows (max |diff| {max_abs:.2e} <= atol {ONNX_ATOL} + rtol {ONNX_RTOL})")
    return check


def export_artifacts(output_dir: Path, *, weights: Any, exported: Any, signature: OnnxSignature,
                     metadata: Mapping[str, str], heldout: Iterable[tuple[Any, Any]], probe: Any) -> dict[str, Any]:
    """:func:`write_model_files`, then :func:`check_onnx_parity`; return the parity check.

    :param weights: the trained module (``model.pt`` holds its state_dict).
    :param exported: the module that is exported (``weights`` itself, or it wrapped with its
        preprocessing), in eval mode on the CPU.
    :param heldout: the held-out batches ``(model input as numpy, int64 labels)``.
    :param probe: synthetic model inputs (numpy, the signature's dtype) holding no data values.
    """
    output_dir = Path(output_dir)
    write_model_files(output_dir, weights=weights, exported=exported, signature=signature, metadata=metadata)
    return check_onnx_parity(output_dir, exported, signature, heldout, probe)
