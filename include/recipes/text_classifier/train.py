"""Train a small transformer text classifier from scratch on Parquet text. The recipe's entry point, run inside a Slurm job.

This folder holds only the model code: ``text_tokenizer.py`` (the word vocabulary, standard
library only), ``text_data.py`` (texts to token ids, statistics), ``text_model.py`` (the
transformer and its export) and this file. Everything else a job does - distributed setup,
signals and requeue, checkpoints and resume, the training loop, reading the dataset and its
held-out split, the PyTorch/safetensors/ONNX files and their parity check, the completion marker -
is the platform's job runtime (``aifp_runtime``, shipped beside this file by
``aifactory.models.bundle``), the same as the tabular classifier's. Nothing here imports the
factory's core package, and nothing is downloaded: the vocabulary is built from the training split.

Usage (in a run directory)::

    python train.py --params params.json            # one process, or one rank per srun task
    srun python train.py --params params.json       # DDP: one rank per task (SLURM_PROCID/NTASKS)

* **Deterministic.** The split, the vocabulary, the initial weights, every shuffle and every
  dropout mask follow from the seed (``torch.use_deterministic_algorithms(True)``).
* **Distributed data parallel** (:func:`aifp_runtime.training.fit`): gloo on CPU, nccl on CUDA,
  one rank per GPU; every rank builds the same vocabulary from the same split.
* **Checkpoints** every ``checkpoint_every_steps`` steps or ``checkpoint_every_minutes`` minutes;
  a checkpoint of other hyperparameters or another vocabulary is not resumed.
* **Preemption.** On SIGTERM or SIGUSR1 every rank stops after its current step, rank 0
  checkpoints and the runtime requeues the job (at most ``max_requeues`` times); the requeued job
  resumes without training a step twice.

Outputs in ``output_dir`` (rank 0): ``model.pt`` (state_dict), ``model.safetensors`` (the same
weights), ``model.onnx`` (int64 token ids in, logits out), ``tokenizer.json`` (text to token ids),
``onnx_check.json``, ``model_config.json``, ``metrics.json`` and, written LAST by the runtime, the
completion marker listing them with their sha256 and declaring the formats.

Exit status: 0 success (or stopped and requeued); 2 bad input (missing column, a text column that
is not text, one class, too few rows); 3 ONNX Runtime disagrees with PyTorch beyond the tolerance;
143 stopped by SIGTERM without a requeue (cancelled); 1 anything unexpected.
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
from text_data import (  # noqa: E402
    check_schema,
    dataset_files,
    iter_global_batches,
    iter_test_rows,
    scan_dataset,
    steps_per_epoch,
)
from text_model import FORMATS, ONNX_INPUT, ONNX_OPSET, build_model, export_model_files  # noqa: E402
from text_tokenizer import PAD_ID, TOKEN_PATTERN, TOKENIZER_FILE, UNK_ID  # noqa: E402

DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "max_length": 32,
    "vocab_size": 20000,
    "min_token_count": 2,
    "num_layers": 2,
    "num_heads": 4,
    "head_dim": 16,
    "feedforward_dim": 128,
    "dropout": 0.1,
    "learning_rate": 0.001,
    "batch_size": 32,
    "test_fraction": 0.2,
    "seed": 42,
    "checkpoint_every_steps": 100,
    "checkpoint_every_minutes": 5.0,
    "log_every_steps": 10,
    "max_requeues": 5,
    "read_batch_rows": 8192,
    "shuffle_buffer_rows": 65536,
}
OUTPUT_FILES = (*FORMATS.values(), TOKENIZER_FILE, ONNX_CHECK_FILE, "model_config.json", "metrics.json")
#: the hyperparameters that decide what is trained (with the vocabulary): a checkpoint of others is never resumed
TRAINED_BY = ("text_column", "label_column", "epochs", "max_length", "vocab_size", "min_token_count", "num_layers",
              "num_heads", "head_dim", "feedforward_dim", "dropout", "learning_rate", "batch_size", "test_fraction",
              "seed", "shuffle_buffer_rows")


def check_hyperparameters(hp: dict[str, Any]) -> None:
    """The schema in recipe.yaml was checked before submission; these are the rules the code relies on."""
    for key in ("text_column", "label_column"):
        if not isinstance(hp.get(key), str) or not hp[key]:
            raise BadInput(f"hyperparameters.{key} must be a non-empty string")
    if hp["text_column"] == hp["label_column"]:
        raise BadInput(f"text column {shown(hp['text_column'])} is also the label column; name two columns")
    if not 0 < float(hp["test_fraction"]) < 1:
        raise BadInput("hyperparameters.test_fraction must be between 0 and 1")
    if not 0 <= float(hp["dropout"]) < 1:
        raise BadInput("hyperparameters.dropout must be at least 0 and below 1")
    for key in ("epochs", "max_length", "vocab_size", "min_token_count", "num_layers", "num_heads", "head_dim",
                "feedforward_dim", "batch_size", "checkpoint_every_steps", "log_every_steps", "read_batch_rows",
                "shuffle_buffer_rows"):
        if not isinstance(hp[key], int) or isinstance(hp[key], bool) or hp[key] < 1:
            raise BadInput(f"hyperparameters.{key} must be a positive integer, got {hp[key]!r}")
    if hp["vocab_size"] < 3:
        raise BadInput("hyperparameters.vocab_size must leave room for a word beside [PAD] and [UNK] (at least 3)")


def main(job: Job) -> int:
    """Build the vocabulary, train (resuming from the latest checkpoint), then (rank 0) write the outputs."""
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

    text, label = hp["text_column"], hp["label_column"]
    files = dataset_files(job.params.dataset_dir)
    check_schema(files, text, label)
    stats = scan_dataset(files, hp)
    tok = stats.tokenizer
    batch, epochs = int(hp["batch_size"]), int(hp["epochs"])
    per_epoch = steps_per_epoch(stats.n_train, batch, world)
    total_steps = per_epoch * epochs
    log(f"rank={rank}/{world} node={dist_info.node} local_rank={dist_info.local_rank} host={socket.gethostname()} "
        f"backend={dist_info.backend} device={dist_info.device} threads={threads} restart={restart_count()}")
    if dist_info.main:
        log(f"data: rows={stats.n_rows} train={stats.n_train} test={stats.n_test} classes={len(stats.classes)} "
            f"vocab={tok.vocab_size} mean_tokens={stats.mean_tokens:.1f} truncated={stats.n_truncated} "
            f"files={len(files)} steps_per_epoch={per_epoch} total_steps={total_steps}")

    model = build_model(tok.vocab_size, tok.max_length, len(stats.classes), hp).to(dist_info.device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=float(hp["learning_rate"]))
    trained = fit(job, dist_info, model, optimiser,
                  batches=lambda epoch: iter_global_batches(files, hp, stats, epoch, world),
                  per_epoch=per_epoch, epochs=epochs, digest=hp_digest({**hp, "vocabulary": tok.sha256},
                                                                       (*TRAINED_BY, "vocabulary")),
                  seed=seed, log_every=int(hp["log_every_steps"]))
    if trained.exit_code is not None:
        return trained.exit_code
    if not dist_info.main:
        return 0

    # ---- rank 0: evaluate on the held-out split and write the outputs (marker last) ----
    model = model.cpu().eval()
    scores = evaluate(model, iter_test_rows(files, hp, stats), model, iter_global_batches(files, hp, stats, 0, 1))
    test_acc = scores.test_accuracy
    write_atomic(output_dir / TOKENIZER_FILE, tok.to_json())
    check = export_model_files(model, stats, hp, files, output_dir)
    config = {
        "architecture": "transformer-encoder-mean-pool",
        "vocab_size": tok.vocab_size,
        "max_length": tok.max_length,
        "num_layers": int(hp["num_layers"]),
        "num_heads": int(hp["num_heads"]),
        "head_dim": int(hp["head_dim"]),
        "embedding_dim": int(hp["num_heads"]) * int(hp["head_dim"]),
        "feedforward_dim": int(hp["feedforward_dim"]),
        "num_classes": len(stats.classes),
        "classes": stats.classes,
        "text_column": text,
        "label_column": label,
        "tokenizer": {"file": TOKENIZER_FILE, "sha256": tok.sha256, "kind": "word-level, built from the training split",
                      "pattern": TOKEN_PATTERN, "pad_id": PAD_ID, "unk_id": UNK_ID},
        "split": split_config(seed, hp["test_fraction"]),
        "onnx": {"file": FORMATS["onnx"], "input": ONNX_INPUT, "input_shape": ["batch", "sequence"],
                 "input_dtype": "int64", "max_sequence": tok.max_length, "output": "logits", "opset": ONNX_OPSET,
                 "tokenizer_included": False},
        "safetensors": {"file": FORMATS["safetensors"]},
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
        "vocab_size": tok.vocab_size,
        "mean_tokens": round(stats.mean_tokens, 3),
        "truncated_rows": stats.n_truncated,
        "epochs": epochs,
        "steps": trained.step,
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
    log(f"done: test_accuracy={test_acc:.4f} steps={trained.step} outputs={output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, defaults=DEFAULTS, description=(__doc__ or "").splitlines()[0]))
