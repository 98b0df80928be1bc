"""Train a small MLP classifier on tabular Parquet data. The recipe's entry point, run inside a Slurm job.

This folder holds only the model code: ``tabular_data.py`` (numeric features, statistics),
``tabular_model.py`` (the MLP and its export) and this file. Everything else a job does - distributed
setup, signals and requeue, checkpoints and resume, the training loop, reading the dataset and its
held-out split, the PyTorch/safetensors/ONNX files and their parity check, the completion marker -
is the platform's job runtime (``aifp_runtime``, shipped beside this file by
``aifactory.models.bundle``). Nothing here imports the factory's core package.

Usage (in a run directory)::

    python train.py --params params.json            # one process, or one rank per srun task
    srun python train.py --params params.json       # DDP: one rank per task (SLURM_PROCID/NTASKS)

* **Deterministic.** Seeds fix the initial weights and every shuffle (``(seed, epoch, buffer)``);
  ``torch.use_deterministic_algorithms(True)``.
* **Distributed data parallel** (:func:`aifp_runtime.training.fit`). A global step is
  ``batch_size * world_size`` rows; rank ``r`` trains on rows ``r::world_size`` of it, and
  ``DistributedDataParallel`` averages the gradients.
* **Checkpoints** every ``checkpoint_every_steps`` steps or ``checkpoint_every_minutes`` minutes.
* **Preemption.** On SIGTERM or SIGUSR1 every rank stops after its current step, rank 0
  checkpoints and the runtime requeues the job (at most ``max_requeues`` times). On restart the
  job resumes from the latest checkpoint: finished steps are skipped (their batches are read, not
  trained again), so every step number appears once in the log (``step=<n>`` lines).

Outputs in ``output_dir`` (rank 0): ``model.pt`` (state_dict), ``model.safetensors`` (the same
weights plus the normalisation), ``model.onnx`` (raw features in, logits out), ``onnx_check.json``,
``model_config.json``, ``metrics.json`` and, written LAST by the runtime, the completion marker
listing them with their sha256 and declaring the formats.

Exit status: 0 success (or stopped and requeued); 2 bad input (missing column, non-numeric feature,
one class, too few rows); 3 ONNX Runtime disagrees with PyTorch beyond the tolerance; 143 stopped
by SIGTERM without a requeue (cancelled); 1 anything unexpected.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the run directory: aifp_runtime and this recipe

from aifp_runtime import BadInput, Job, run, write_atomic  # noqa: E402
from aifp_runtime.contract import ONNX_CHECK_FILE  # noqa: E402
from aifp_runtime.data import split_config  # noqa: E402
from aifp_runtime.job import log  # noqa: E402
from aifp_runtime.signals import restart_count  # noqa: E402
from aifp_runtime.text import shown  # noqa: E402
from aifp_runtime.training import evaluate, fit, hp_digest, seed_torch  # noqa: E402
from tabular_data import (  # noqa: E402
    check_schema,
    dataset_files,
    iter_global_batches,
    iter_test_rows,
    scan_dataset,
    steps_per_epoch,
)
from tabular_model import FORMATS, ONNX_OPSET, build_model, export_model_files, export_module  # noqa: E402

DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "hidden_units": 32,
    "learning_rate": 0.01,
    "batch_size": 64,
    "test_fraction": 0.2,
    "seed": 42,
    "checkpoint_every_steps": 100,
    "checkpoint_every_minutes": 5.0,
    "log_every_steps": 10,
    "max_requeues": 5,
    "read_batch_rows": 8192,
    "shuffle_buffer_rows": 65536,
}
OUTPUT_FILES = (*FORMATS.values(), ONNX_CHECK_FILE, "model_config.json", "metrics.json")


def check_hyperparameters(hp: dict[str, Any]) -> None:
    """The schema in recipe.yaml was checked before submission; these are the rules the code relies on."""
    if not isinstance(hp.get("label_column"), str) or not hp["label_column"]:
        raise BadInput("hyperparameters.label_column must be a non-empty string")
    feats = hp.get("feature_columns")
    if not isinstance(feats, list) or not feats or not all(isinstance(f, str) and f for f in feats):
        raise BadInput("hyperparameters.feature_columns must be a non-empty list of column names")
    if hp["label_column"] in feats:
        raise BadInput(f"label column {shown(hp['label_column'])} is also listed in feature_columns; remove it")
    if not 0 < float(hp["test_fraction"]) < 1:
        raise BadInput("hyperparameters.test_fraction must be between 0 and 1")
    for key in ("epochs", "hidden_units", "batch_size", "checkpoint_every_steps", "log_every_steps",
                "read_batch_rows", "shuffle_buffer_rows"):
        if not isinstance(hp[key], int) or isinstance(hp[key], bool) or hp[key] < 1:
            raise BadInput(f"hyperparameters.{key} must be a positive integer, got {hp[key]!r}")


#: the hyperparameters that decide what is trained: a checkpoint of others is never resumed
TRAINED_BY = ("label_column", "feature_columns", "epochs", "hidden_units", "learning_rate", "batch_size",
              "test_fraction", "seed", "shuffle_buffer_rows")


def main(job: Job) -> int:
    """Train (resuming from the latest checkpoint), then (rank 0) write the outputs."""
    import torch

    hp = job.params.hyperparameters
    check_hyperparameters(hp)
    if job.params.dataset_dir is None:
        raise BadInput("params.json names no dataset_dir; this recipe trains on a staged dataset")
    dist_info = job.distributed()
    world, rank = dist_info.world, dist_info.rank
    job.prepare_outputs()
    output_dir = job.params.output_dir
    seed = int(hp["seed"])
    threads = seed_torch(seed)

    label, features = hp["label_column"], list(hp["feature_columns"])
    files = dataset_files(job.params.dataset_dir)
    check_schema(files, label, features)
    stats = scan_dataset(files, hp)
    batch, epochs = int(hp["batch_size"]), int(hp["epochs"])
    per_epoch = steps_per_epoch(stats.n_train, batch, world)
    total_steps = per_epoch * epochs
    log(f"rank={rank}/{world} node={dist_info.node} local_rank={dist_info.local_rank} host={socket.gethostname()} "
        f"backend={dist_info.backend} device={dist_info.device} threads={threads} restart={restart_count()}")
    if dist_info.main:
        log(f"data: rows={stats.n_rows} train={stats.n_train} test={stats.n_test} features={len(features)} "
            f"classes={len(stats.classes)} files={len(files)} steps_per_epoch={per_epoch} total_steps={total_steps}")

    model = build_model(len(features), int(hp["hidden_units"]), len(stats.classes)).to(dist_info.device)
    optimiser = torch.optim.Adam(model.parameters(), lr=float(hp["learning_rate"]))
    trained = fit(job, dist_info, model, optimiser,
                  batches=lambda epoch: iter_global_batches(files, hp, stats, epoch, world),
                  per_epoch=per_epoch, epochs=epochs, digest=hp_digest(hp, TRAINED_BY), seed=seed,
                  log_every=int(hp["log_every_steps"]))
    if trained.exit_code is not None:
        return trained.exit_code
    if not dist_info.main:
        return 0
    step = trained.step

    # ---- rank 0: evaluate on the held-out split and write the outputs (marker last) ----
    model.eval()
    exported = export_module(model.cpu(), stats.mean, stats.std)
    scores = evaluate(exported, iter_test_rows(files, hp, stats), model, iter_global_batches(files, hp, stats, 0, 1))
    test_acc = scores.test_accuracy
    check = export_model_files(model, stats, hp, files, output_dir)
    config = {
        "architecture": "mlp-1-hidden",
        "input_dim": len(features),
        "hidden_units": int(hp["hidden_units"]),
        "num_classes": len(stats.classes),
        "classes": stats.classes,
        "feature_columns": features,
        "label_column": label,
        "normalisation": {"mean": stats.mean.tolist(), "std": stats.std.tolist()},
        "split": split_config(seed, hp["test_fraction"]),
        "onnx": {"file": FORMATS["onnx"], "input": "features", "input_shape": ["batch", len(features)],
                 "input_dtype": "float32", "output": "logits", "opset": ONNX_OPSET,
                 "normalisation_included": True},
        "safetensors": {"file": FORMATS["safetensors"], "normalisation_included": True},
        "torch_version": torch.__version__,
    }
    write_atomic(output_dir / "model_config.json", json.dumps(config, indent=2, default=str).encode())
    metrics = {
        "test_accuracy": test_acc,
        "onnx_test_accuracy": check["heldout_accuracy_onnx"],
        "train_accuracy": scores.train_accuracy,
        "loss": trained.loss_or_none,  # None: no epoch ran after a resume
        "test_loss": scores.test_loss,
        "n_train": stats.n_train,
        "n_test": stats.n_test,
        "epochs": epochs,
        "steps": step,
        "world_size": world,
        "seed": seed,
        "restarts": restart_count(),
        "duration_s": round(time.time() - job.started, 3),
    }
    write_atomic(output_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
    job.write_outputs(
        OUTPUT_FILES,
        formats=FORMATS,
        metrics=metrics,
        details={"onnx_check": {k: v for k, v in check.items() if k != "probe"},
                 "dataset_files": stats.files, "host": socket.gethostname()},
    )
    log(f"done: test_accuracy={test_acc:.4f} steps={step} outputs={output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, defaults=DEFAULTS, description=(__doc__ or "").splitlines()[0]))
