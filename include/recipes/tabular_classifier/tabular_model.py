"""Model of the tabular classifier: a one-hidden-layer MLP, and its export as PyTorch, safetensors and ONNX.

The ONNX graph takes raw features (the normalisation is part of it); ONNX Runtime's outputs are
checked against PyTorch's on every held-out row and on a synthetic probe, within
``|ort - torch| <= ONNX_ATOL + ONNX_RTOL * |torch|``; export re-runs the probe.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from aifp_runtime import write_atomic
from aifp_runtime.contract import ONNX_CHECK_FILE
from aifp_runtime.job import JobFailed, log
from tabular_data import DataStats, iter_test_rows

#: ONNX Runtime must reproduce PyTorch's logits within |ort - torch| <= ATOL + RTOL * |torch|.
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-4
ONNX_OPSET = 17
EXIT_ONNX_MISMATCH = 3
#: the model files, by format name (the completion marker declares them; export publishes them)
FORMATS = {"pytorch": "model.pt", "safetensors": "model.safetensors", "onnx": "model.onnx"}


class OnnxMismatch(JobFailed):
    """ONNX Runtime's outputs differ from PyTorch's beyond the stated tolerance."""

    exit_code = EXIT_ONNX_MISMATCH

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}; the model was not published. Report it with the job log")


def build_model(n_features: int, hidden: int, n_classes: int) -> Any:
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(n_features, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, n_classes),
    )


def export_module(mlp: Any, mean: Any, std: Any) -> Any:
    """Raw features -> logits: the normalisation becomes part of the exported graph."""
    import torch

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
            self.mlp = mlp

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.mlp((features - self.mean) / self.std)

    return Exported().eval()


def export_artifacts(model: Any, stats: DataStats, hp: dict[str, Any], files: list[Path],
                     output_dir: Path) -> dict[str, Any]:
    """Write model.pt, model.safetensors, model.onnx and onnx_check.json; return the parity check."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from safetensors.torch import save_file

    mlp = model.module if hasattr(model, "module") else model
    mlp = mlp.cpu().eval()
    buf = io.BytesIO()
    torch.save(mlp.state_dict(), buf)
    write_atomic(output_dir / "model.pt", buf.getvalue())

    exported = export_module(mlp, stats.mean, stats.std)
    tensors = {k: v.detach().contiguous().clone() for k, v in exported.state_dict().items()}
    meta = {"format": "pt", "classes": json.dumps(stats.classes, default=str),
            "feature_columns": json.dumps(hp["feature_columns"]), "input": "raw features (normalisation included)"}
    tmp = output_dir / ".model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, output_dir / "model.safetensors")

    n_features = len(hp["feature_columns"])
    tmp = output_dir / ".model.onnx.tmp"
    import warnings

    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) needs no onnxscript; torch warns that it is legacy.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            exported, (torch.zeros(2, n_features),), str(tmp), input_names=["features"], output_names=["logits"],
            dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET,
            dynamo=False,
        )
    os.replace(tmp, output_dir / "model.onnx")

    # Parity: ONNX Runtime against PyTorch on every held-out row and on a synthetic probe.
    session = ort.InferenceSession(str(output_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    max_abs = 0.0
    rows = disagree = 0
    correct_torch = correct_ort = 0
    with torch.no_grad():
        for x, y in iter_test_rows(files, hp, stats):
            t = exported(torch.from_numpy(x)).numpy()
            o = session.run(["logits"], {"features": x})[0]
            if not np.allclose(o, t, atol=ONNX_ATOL, rtol=ONNX_RTOL):
                raise OnnxMismatch(f"ONNX Runtime differs from PyTorch by up to {float(np.abs(o - t).max()):.3g} "
                                   f"(tolerance atol={ONNX_ATOL}, rtol={ONNX_RTOL}) on the held-out rows")
            max_abs = max(max_abs, float(np.abs(o - t).max()))
            rows += len(y)
            disagree += int((o.argmax(1) != t.argmax(1)).sum())
            correct_torch += int((t.argmax(1) == y).sum())
            correct_ort += int((o.argmax(1) == y).sum())
        # A synthetic probe (no data values): the export stage re-runs it with ONNX Runtime.
        probe = (np.random.default_rng(int(hp["seed"])).standard_normal((16, n_features)) * stats.std
                 + stats.mean).astype("float32")
        probe_logits = exported(torch.from_numpy(probe)).numpy()
    probe_ort = session.run(["logits"], {"features": probe})[0]
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
        "probe": {"features": probe.tolist(), "logits": probe_logits.tolist()},
        "passed": True,
    }
    write_atomic(output_dir / ONNX_CHECK_FILE, json.dumps(check, indent=2).encode())
    log(f"onnx: parity ok on {rows} held-out rows (max |diff| {max_abs:.2e} <= atol {ONNX_ATOL} + rtol {ONNX_RTOL})")
    return check
