"""Model of the tabular classifier: a one-hidden-layer MLP, and its export as PyTorch, safetensors and ONNX.

The ONNX graph takes raw features (the normalisation is part of it). The files and the parity
check are the job runtime's (:mod:`aifp_runtime.export`, the same for every recipe): ONNX
Runtime's outputs are checked against PyTorch's on every held-out row and on a synthetic probe,
within ``|ort - torch| <= ONNX_ATOL + ONNX_RTOL * |torch|``; export re-runs the probe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aifp_runtime.export import FORMATS, ONNX_OPSET, OnnxSignature, export_artifacts
from tabular_data import DataStats, iter_test_rows

__all__ = ["FORMATS", "ONNX_OPSET", "build_model", "export_module", "export_model_files"]


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


def export_model_files(model: Any, stats: DataStats, hp: dict[str, Any], files: list[Path],
                       output_dir: Path) -> dict[str, Any]:
    """Write model.pt, model.safetensors, model.onnx and onnx_check.json; return the parity check."""
    import numpy as np
    import torch

    mlp = model.module if hasattr(model, "module") else model
    mlp = mlp.cpu().eval()
    n_features = len(hp["feature_columns"])
    meta = {"format": "pt", "classes": json.dumps(stats.classes, default=str),
            "feature_columns": json.dumps(hp["feature_columns"]), "input": "raw features (normalisation included)"}
    # A synthetic probe (no data values) on the training split's scale: the export stage re-runs it.
    probe = (np.random.default_rng(int(hp["seed"])).standard_normal((16, n_features)) * stats.std
             + stats.mean).astype("float32")
    return export_artifacts(
        output_dir, weights=mlp, exported=export_module(mlp, stats.mean, stats.std),
        signature=OnnxSignature("features", torch.zeros(2, n_features)), metadata=meta,
        heldout=iter_test_rows(files, hp, stats), probe=probe,
    )
