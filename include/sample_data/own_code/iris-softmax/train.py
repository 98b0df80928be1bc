"""A startup's own training code: softmax regression over numeric columns, on the platform's job runtime.

It imports the startup's own library (``tenant_features``, installed from the locked wheel into the
environment the factory builds for ``requirements.lock``) and leaves distribution, checkpoints,
requeue, export and the completion marker to ``aifp_runtime``, as every recipe does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the run directory: aifp_runtime

import tenant_features  # noqa: E402  (the locked wheel, from the code's own environment)
from aifp_runtime import BadInput, Job, run, write_atomic  # noqa: E402
from aifp_runtime.contract import ONNX_CHECK_FILE  # noqa: E402
from aifp_runtime.data import dataset_files, test_mask  # noqa: E402
from aifp_runtime.export import FORMATS, OnnxSignature, export_artifacts  # noqa: E402
from aifp_runtime.job import log  # noqa: E402
from aifp_runtime.training import fit, hp_digest, seed_torch  # noqa: E402

DEFAULTS: dict[str, Any] = {"epochs": 60, "learning_rate": 0.1, "batch_size": 32, "test_fraction": 0.2,
                            "seed": 42, "max_requeues": 3}


def load(files: list[Path], hp: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
    import numpy as np
    import pyarrow.parquet as pq

    columns = [*hp["feature_columns"], hp["label_column"]]
    try:
        table = pq.ParquetDataset([str(f) for f in files]).read(columns=columns)
    except (KeyError, ValueError) as exc:
        raise BadInput(f"the dataset lacks a column of {columns}: {exc}") from exc
    x = np.stack([table.column(c).to_numpy().astype("float32") for c in hp["feature_columns"]], axis=1)
    labels = table.column(hp["label_column"]).to_pylist()
    classes = sorted(set(labels), key=str)
    return x, np.array([classes.index(v) for v in labels], dtype="int64"), classes


def main(job: Job) -> int:
    import numpy as np
    import torch

    hp = job.params.hyperparameters
    dist = job.distributed()
    job.prepare_outputs()
    seed = int(hp["seed"])
    seed_torch(seed)
    log(f"tenant_features {tenant_features.__version__} from {Path(tenant_features.__file__).parent}")
    x, y, classes = load(dataset_files(job.params.dataset_dir), hp)
    held_out = test_mask(np.arange(len(y)), seed, float(hp["test_fraction"]))
    mean, std = tenant_features.column_stats(x[~held_out])
    batch = int(hp["batch_size"]) * dist.world
    train_idx = np.flatnonzero(~held_out)
    per_epoch = max(1, len(train_idx) // batch)

    def batches(epoch: int):
        order = np.random.default_rng((seed, epoch)).permutation(train_idx)
        for i in range(per_epoch):
            rows = order[i * batch:(i + 1) * batch]
            yield tenant_features.standardise(x[rows], mean, std), y[rows]

    model = torch.nn.Linear(x.shape[1], len(classes)).to(dist.device)
    optimiser = torch.optim.SGD(model.parameters(), lr=float(hp["learning_rate"]))
    trained = fit(job, dist, model, optimiser, batches=batches, per_epoch=per_epoch, epochs=int(hp["epochs"]),
                  digest=hp_digest(hp, tuple(sorted(hp))), seed=seed, log_every=50)
    if trained.exit_code is not None or not dist.main:
        return trained.exit_code or 0

    class Exported(torch.nn.Module):  # raw features in: the standardisation is part of the graph
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean))
            self.register_buffer("std", torch.tensor(std))
            self.linear = model.cpu().eval()

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.linear((features - self.mean) / self.std)

    exported = Exported().eval()
    test_x, test_y = x[held_out], y[held_out]
    with torch.no_grad():
        accuracy = float((exported(torch.from_numpy(test_x)).argmax(1).numpy() == test_y).mean())
    check = export_artifacts(job.params.output_dir, weights=model, exported=exported,
                             signature=OnnxSignature("features", torch.zeros(2, x.shape[1])),
                             metadata={"classes": json.dumps(classes, default=str)},
                             heldout=[(test_x, test_y)], probe=(mean + std).reshape(1, -1).astype("float32"))
    metrics = {"test_accuracy": accuracy, "onnx_test_accuracy": check["heldout_accuracy_onnx"],
               "n_train": int(len(train_idx)), "n_test": int(held_out.sum()), "steps": trained.step,
               "tenant_features": tenant_features.__version__}
    write_atomic(job.params.output_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
    job.write_outputs((*FORMATS.values(), ONNX_CHECK_FILE, "metrics.json"), formats=FORMATS, metrics=metrics,
                      details={"onnx_check": {k: v for k, v in check.items() if k != "probe"}})
    log(f"done: test_accuracy={accuracy:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, defaults=DEFAULTS, description=(__doc__ or "").splitlines()[0]))
