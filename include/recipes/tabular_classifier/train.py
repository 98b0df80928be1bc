"""Train a small MLP classifier on tabular Parquet data. Runs on the cluster, inside a Slurm job.

This file imports nothing of the factory's: it is copied into the run directory and run by the
cluster's training Python (``requirements-train.txt``: torch, pyarrow, numpy, onnx, onnxruntime,
safetensors).

Usage::

    python train.py --params params.json            # one process, or one rank per srun task
    srun python train.py --params params.json       # DDP: one rank per task (SLURM_PROCID/NTASKS)
    torchrun --nproc-per-node=2 train.py --params params.json   # DDP: RANK/WORLD_SIZE from torchrun

``params.json`` (written by the SlurmJobOperator, never by a shell)::

    {
      "dataset_dir": "/srv/aifactory/<tenant>/datasets/<name>/<version>",   # part-*.parquet files
      "output_dir":  "/srv/aifactory/<tenant>/runs/<run_key>/output",       # created if missing
      "checkpoint_dir": "...",   # optional; default <output_dir>/../checkpoints
      "hyperparameters": {"label_column": "species", "feature_columns": [...], "epochs": 30, ...},
      "job": {...}   # metadata (tenant, dag_id, run_id, task_id, job_name, recipe); copied to outputs
    }

How it trains
=============

* **Data in batches.** The Parquet files are read with ``pyarrow.parquet.ParquetFile.iter_batches``
  (only the label and feature columns, ``read_batch_rows`` rows at a time); at most one shuffle
  buffer (``shuffle_buffer_rows``) of training rows is in memory, never the whole dataset. A first
  pass computes the feature means and standard deviations of the training split and the classes.
* **Held-out split fixed by the seed.** Row ``i`` of the dataset (counted across the sorted files)
  is a test row when ``splitmix64(i + seed * GOLDEN) / 2**64 < test_fraction``
  (:func:`test_mask`): the split does not depend on batch sizes, the number of ranks or restarts,
  and anyone holding the dataset can recompute it (the end-to-end test does).
* **Deterministic.** Seeds fix the initial weights and every shuffle (``(seed, epoch, buffer)``);
  ``torch.use_deterministic_algorithms(True)``.
* **Distributed data parallel.** With more than one rank, ``torch.distributed`` is initialised
  (``gloo`` on CPU, ``nccl`` on CUDA; the rendezvous address is ``MASTER_ADDR``/``MASTER_PORT``,
  default the node that launched the step and a port derived from the job id). A global step is
  ``batch_size * world_size`` rows; rank ``r`` trains on rows ``r::world_size`` of it, and
  ``DistributedDataParallel`` averages the gradients.
* **Checkpoints** go to the checkpoint directory every ``checkpoint_every_steps`` steps or
  ``checkpoint_every_minutes`` minutes (rank 0 writes; temporary name, fsync, rename), the
  latest two are kept.
* **Preemption.** SIGTERM (Slurm's preemption, ``scontrol requeue``, ``scancel``, the time limit)
  and SIGUSR1 (``sbatch --signal=USR1@<s>``: the time limit is near) make every rank stop after its
  current step (the ranks agree through an all-reduce) and rank 0 writes a checkpoint. On SIGUSR1
  the job **requeues itself** (``scontrol requeue $SLURM_JOB_ID``); on SIGTERM it does so only if
  nobody else is ending it (the job is still RUNNING, hit its TIMEOUT, or was PREEMPTED without a
  requeue): a cancelled job stays cancelled, and a job Slurm requeues is left to Slurm. After
  ``max_requeues`` restarts SIGUSR1 is ignored. On restart the job resumes from the latest
  checkpoint: finished steps are skipped (their batches are read, not trained again), so every
  step number appears once in the log (``step=<n>`` lines).

Outputs in ``output_dir`` (rank 0): ``model.pt`` (state_dict), ``model.safetensors`` (the same
weights plus the normalisation), ``model.onnx`` (raw features in, logits out: normalisation is
part of the graph), ``onnx_check.json`` (ONNX Runtime vs PyTorch on the held-out split and on a
synthetic probe, with the tolerance), ``model_config.json``, ``metrics.json`` and, written LAST,
``_COMPLETED.json`` listing every output with its sha256. A stale marker is removed first, so a
marker on disk always belongs to a finished run of this script.

Exit status: 0 success (or stopped and requeued); 2 bad input (missing column, non-numeric feature,
one class, too few rows, bad params), with one ``ERROR: ...`` line on stderr that says what to fix;
3 ONNX Runtime disagrees with PyTorch beyond the tolerance; 143 stopped by SIGTERM without a
requeue (cancelled); 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "_COMPLETED.json"
OUTPUT_FILES = ("model.pt", "model.safetensors", "model.onnx", "onnx_check.json", "model_config.json", "metrics.json")
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
    "step_sleep_s": 0.0,
}
#: ONNX Runtime must reproduce PyTorch's logits within |ort - torch| <= ATOL + RTOL * |torch|.
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-4
ONNX_OPSET = 17
#: The split hash (splitmix64) constants.
GOLDEN = 0x9E3779B97F4A7C15
MAX_CLASSES = 10_000
EXIT_BAD_INPUT = 2
EXIT_ONNX_MISMATCH = 3
EXIT_TERMINATED = 143


class BadInput(Exception):
    """The data or the parameters cannot be trained on; the message says what to fix."""


class OnnxMismatch(Exception):
    """ONNX Runtime's outputs differ from PyTorch's beyond the stated tolerance."""


def log(message: str) -> None:
    # Unbuffered line per event: the trigger streams the Slurm log to Airflow from a byte offset.
    print(message, flush=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------------


def load_params(path: Path) -> dict[str, Any]:
    """Read params.json and apply defaults; BadInput naming the field when something is wrong."""
    try:
        params = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read params file {path}: {exc}") from exc
    for key in ("dataset_dir", "output_dir", "hyperparameters"):
        if key not in params:
            raise BadInput(f"params file {path} lacks the key {key!r}")
    hp = {**DEFAULTS, **params["hyperparameters"]}
    if not isinstance(hp.get("label_column"), str) or not hp["label_column"]:
        raise BadInput("hyperparameters.label_column must be a non-empty string")
    feats = hp.get("feature_columns")
    if not isinstance(feats, list) or not feats or not all(isinstance(f, str) and f for f in feats):
        raise BadInput("hyperparameters.feature_columns must be a non-empty list of column names")
    if hp["label_column"] in feats:
        raise BadInput(f"label column {hp['label_column']!r} is also listed in feature_columns; remove it")
    if not 0 < float(hp["test_fraction"]) < 1:
        raise BadInput("hyperparameters.test_fraction must be between 0 and 1")
    for key in ("epochs", "hidden_units", "batch_size", "checkpoint_every_steps", "log_every_steps",
                "read_batch_rows", "shuffle_buffer_rows"):
        if not isinstance(hp[key], int) or isinstance(hp[key], bool) or hp[key] < 1:
            raise BadInput(f"hyperparameters.{key} must be a positive integer, got {hp[key]!r}")
    params["hyperparameters"] = hp
    return params


def hp_digest(hp: dict[str, Any]) -> str:
    """Identity of what is trained: a checkpoint of other hyperparameters is never resumed."""
    keep = {k: hp[k] for k in ("label_column", "feature_columns", "epochs", "hidden_units", "learning_rate",
                               "batch_size", "test_fraction", "seed", "shuffle_buffer_rows")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# Data: schema checks, the split, batched reading
# ------------------------------------------------------------------------------------------------


def test_mask(row_index: Any, seed: int, test_fraction: float) -> Any:
    """True where global row ``row_index`` (numpy int array) belongs to the held-out test split.

    splitmix64 of ``row_index + seed * GOLDEN`` (mod 2**64), compared with ``test_fraction * 2**64``:
    a fixed pseudo-random draw per row, independent of how the rows are batched.
    """
    import numpy as np

    with np.errstate(over="ignore"):
        z = np.asarray(row_index, dtype=np.uint64) + np.uint64((int(seed) * GOLDEN) % (1 << 64))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < float(test_fraction)


def dataset_files(dataset_dir: Path) -> list[Path]:
    files = sorted(Path(dataset_dir).glob("part-*.parquet")) or sorted(Path(dataset_dir).glob("*.parquet"))
    if not files:
        raise BadInput(f"no Parquet files (part-*.parquet) in dataset dir {dataset_dir}")
    return files


def check_schema(files: list[Path], label: str, features: list[str]) -> None:
    """Every file has the columns; every feature column is numeric. Reads footers only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for f in files:
        schema = pq.read_schema(f)
        missing = [c for c in [label, *features] if c not in schema.names]
        if missing:
            raise BadInput(
                f"column(s) {missing} not found in {f.name}; available columns: {schema.names}. "
                "Fix hyperparameters.label_column/feature_columns"
            )
        for col in features:
            typ = schema.field(col).type
            if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)
                    or pa.types.is_decimal(typ)):
                raise BadInput(
                    f"feature column {col!r} has type {typ}, not numeric; remove it from "
                    "hyperparameters.feature_columns or encode it as numbers"
                )


@dataclass
class Chunk:
    """Rows of one record batch: global row indices, float64 features, raw labels."""

    index: Any
    x: Any
    y: list[Any]


def iter_chunks(files: list[Path], label: str, features: list[str], read_rows: int,
                order: list[int] | None = None) -> Iterator[Chunk]:
    """Yield the dataset in record batches of at most ``read_rows`` rows (only the needed columns).

    ``order`` permutes the files (their global row offsets stay those of the sorted order, so the
    split never moves).
    """
    import numpy as np
    import pyarrow.parquet as pq

    offsets, total = [], 0
    handles = [pq.ParquetFile(f) for f in files]
    for h in handles:
        offsets.append(total)
        total += h.metadata.num_rows
    for i in order if order is not None else range(len(files)):
        start = offsets[i]
        for batch in handles[i].iter_batches(batch_size=read_rows, columns=[label, *features]):
            n = batch.num_rows
            for col in [label, *features]:
                nulls = batch.column(col).null_count
                if nulls:
                    raise BadInput(f"column {col!r} has null values in {files[i].name}; clean the data "
                                   "(the quality gate should have caught this)")
            x = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False).astype("float64") for c in features])
            if not np.isfinite(x).all():
                raise BadInput(f"feature columns contain NaN or infinite values in {files[i].name}; clean the data")
            yield Chunk(index=np.arange(start, start + n, dtype=np.int64), x=x, y=batch.column(label).to_pylist())
            start += n


@dataclass
class DataStats:
    """First pass over the data: what the model and the schedule need."""

    classes: list[Any]
    mean: Any
    std: Any
    n_rows: int
    n_train: int
    n_test: int
    files: list[str]


def class_key(v: Any) -> tuple[str, Any]:
    # Sort classes by (type name, value) so mixed types cannot crash and the order is stable.
    return (type(v).__name__, v)


def scan_dataset(files: list[Path], hp: dict[str, Any]) -> DataStats:
    import numpy as np

    label, features = hp["label_column"], list(hp["feature_columns"])
    seed, frac = int(hp["seed"]), float(hp["test_fraction"])
    total = np.zeros(len(features))
    total_sq = np.zeros(len(features))
    n_rows = n_train = 0
    classes: set[Any] = set()
    for chunk in iter_chunks(files, label, features, int(hp["read_batch_rows"])):
        test = test_mask(chunk.index, seed, frac)
        xt = chunk.x[~test]
        total += xt.sum(axis=0)
        total_sq += (xt * xt).sum(axis=0)
        n_train += int((~test).sum())
        n_rows += len(chunk.index)
        classes.update(chunk.y)
        if len(classes) > MAX_CLASSES:
            raise BadInput(f"label column {label!r} has more than {MAX_CLASSES} classes; is it really a label?")
    if n_rows == 0:
        raise BadInput("the dataset has no rows")
    if len(classes) < 2:
        raise BadInput(f"hyperparameters.label_column {label!r} has only one class ({sorted(classes, key=class_key)!r}); "
                       "need at least two")
    n_test = n_rows - n_train
    if n_train < 1 or n_test < 1:
        raise BadInput(f"the split by hyperparameters.test_fraction={frac} and seed={seed} leaves {n_train} training "
                       f"and {n_test} test row(s) of {n_rows}; use more data or another test_fraction")
    mean = total / n_train
    std = np.sqrt(np.maximum(total_sq / n_train - mean * mean, 0.0))
    std[std < 1e-12] = 1.0  # a constant feature carries no information; avoid dividing by zero
    return DataStats(classes=sorted(classes, key=class_key), mean=mean, std=std, n_rows=n_rows,
                     n_train=n_train, n_test=n_test, files=[f.name for f in files])


def steps_per_epoch(n_train: int, batch: int, world: int) -> int:
    """Global steps of one epoch: full global batches, plus a last one if every rank gets a row."""
    full, rest = divmod(n_train, batch * world)
    return full + (1 if rest >= world else 0)


def iter_global_batches(files: list[Path], hp: dict[str, Any], stats: DataStats, epoch: int,
                        world: int) -> Iterator[tuple[Any, Any]]:
    """Yield the epoch's global batches ``(x normalised float32, y int64)`` of training rows.

    Files are visited in an order drawn from ``(seed, epoch)``; training rows are gathered into a
    shuffle buffer of ``shuffle_buffer_rows`` rows, shuffled with ``(seed, epoch, buffer number)``
    and cut into global batches of ``batch_size * world`` rows. Deterministic for a given world size.
    """
    import numpy as np

    seed, frac = int(hp["seed"]), float(hp["test_fraction"])
    label, features = hp["label_column"], list(hp["feature_columns"])
    step_rows = int(hp["batch_size"]) * world
    buffer_rows = max(int(hp["shuffle_buffer_rows"]), step_rows)
    index = {c: i for i, c in enumerate(stats.classes)}
    order = [int(i) for i in np.random.default_rng([seed, epoch]).permutation(len(files))]
    xs: list[Any] = []
    ys: list[Any] = []
    held = 0
    buffer_no = 0

    def drain(final: bool) -> Iterator[tuple[Any, Any]]:
        nonlocal xs, ys, held, buffer_no
        if not held:
            return
        x = np.concatenate(xs)
        y = np.concatenate(ys)
        perm = np.random.default_rng([seed, epoch, buffer_no]).permutation(len(y))
        buffer_no += 1
        x, y = x[perm], y[perm]
        cut = len(y) if final else (len(y) // step_rows) * step_rows
        for start in range(0, cut, step_rows):
            part = slice(start, min(start + step_rows, cut))
            if part.stop - part.start >= world:
                yield x[part], y[part]
        xs, ys = ([x[cut:]], [y[cut:]]) if cut < len(y) else ([], [])
        held = len(y) - cut

    for chunk in iter_chunks(files, label, features, int(hp["read_batch_rows"]), order):
        train = ~test_mask(chunk.index, seed, frac)
        if not train.any():
            continue
        xs.append(((chunk.x[train] - stats.mean) / stats.std).astype("float32"))
        ys.append(np.array([index[v] for v, keep in zip(chunk.y, train) if keep], dtype="int64"))
        held += int(train.sum())
        if held >= buffer_rows:
            yield from drain(final=False)
    yield from drain(final=True)


def iter_test_rows(files: list[Path], hp: dict[str, Any], stats: DataStats) -> Iterator[tuple[Any, Any]]:
    """Yield the held-out rows in file order as ``(raw float32 features, int64 labels)`` batches."""
    import numpy as np

    index = {c: i for i, c in enumerate(stats.classes)}
    for chunk in iter_chunks(files, hp["label_column"], list(hp["feature_columns"]), int(hp["read_batch_rows"])):
        test = test_mask(chunk.index, int(hp["seed"]), float(hp["test_fraction"]))
        if test.any():
            yield (chunk.x[test].astype("float32"),
                   np.array([index[v] for v, keep in zip(chunk.y, test) if keep], dtype="int64"))


# ------------------------------------------------------------------------------------------------
# Distribution and signals
# ------------------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    node: str
    backend: str
    device: Any

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


RENDEZVOUS_PORTS = (20000, 32000)  # below Linux's ephemeral range (32768-60999): no client socket holds one


def rendezvous_port(job: int, restart: int) -> int:
    """The rendezvous port every rank derives alike from the job id and its restart count.

    A requeued job gets another port (the last one may still be in TIME_WAIT), and the range stays
    clear of the ephemeral ports the kernel hands to outgoing connections on the launch node.
    """
    low, high = RENDEZVOUS_PORTS
    return low + (job * 7 + restart) % (high - low)


def setup_distributed() -> Dist:
    """Ranks from torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or srun (SLURM_PROCID/NTASKS/LOCALID)."""
    import torch
    import torch.distributed as dist

    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank % max(1, torch.cuda.device_count())}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    if world > 1:
        # srun starts rank 0 on the first node, the one that launched the step.
        os.environ.setdefault("MASTER_ADDR", os.environ.get("SLURM_LAUNCH_NODE_IPADDR") or "127.0.0.1")
        job = _env_int("SLURM_JOB_ID", default=0)
        restart = _env_int("SLURM_RESTART_COUNT", default=0)
        os.environ.setdefault("MASTER_PORT", str(rendezvous_port(job, restart)))
        from datetime import timedelta

        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(minutes=5))
    return Dist(rank=rank, world=world, local_rank=local_rank, node=node, backend=backend, device=device)


class StopRequest:
    """Set by SIGTERM/SIGUSR1/SIGINT; the training loop looks at it between steps."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        # SIGTERM outranks USR1: a kill is coming, not only a warning.
        if self.signal is None or name == "SIGTERM":
            self.signal = name

    @property
    def code(self) -> int:
        return {None: 0, "SIGUSR1": 1, "SIGINT": 2, "SIGTERM": 3}[self.signal]


def slurm_job_state(job_id: str) -> str:
    """JobState of our own job per ``scontrol show job`` ("" when unknown)."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"\bJobState=(\S+)", out)
    return match.group(1) if match else ""


#: Job states in which the job requeues itself after a SIGTERM: still running (someone killed only
#: our step), its time limit hit, or preempted without Slurm requeueing it. A job being cancelled,
#: or being requeued by Slurm (``scontrol requeue``, PreemptMode=REQUEUE) shows CANCELLED,
#: COMPLETING, REQUEUED or PENDING and is left to Slurm.
SELF_REQUEUE_ON_TERM = ("RUNNING", "TIMEOUT", "PREEMPTED")


def requeue_self(signal_name: str, reason: str, max_requeues: int) -> bool:
    """Requeue this Slurm job if that is what the signal means; return True if a requeue happens.

    SIGUSR1 is ``sbatch --signal=USR1@<s>``: the time limit is near, so the job requeues itself.
    SIGTERM is ambiguous (cancel, requeue, preemption, time limit): the job requeues itself only
    in the states of :data:`SELF_REQUEUE_ON_TERM`, never when it is being cancelled.
    """
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        log(f"stop: {reason}; not running under Slurm, so not requeued: rerun to resume from the checkpoint")
        return False
    restarts = _env_int("SLURM_RESTART_COUNT", default=0)
    state = slurm_job_state(job_id)
    if signal_name != "SIGUSR1" and state not in SELF_REQUEUE_ON_TERM:
        log(f"stop: {reason}; job {job_id} is {state or 'in an unknown state'}: left to Slurm (a requeued job "
            "resumes from the checkpoint; a cancelled one resumes when the train task is cleared)")
        return False
    if restarts >= max_requeues:
        log(f"stop: {reason}; job {job_id} was already requeued {restarts} times (max_requeues={max_requeues}): "
            "not requeued again. Raise the time limit, or clear the train task to resume from the checkpoint")
        return False
    r = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=30)
    answer = (r.stderr or r.stdout).strip()
    if r.returncode != 0 and "pending" in answer.lower():
        log(f"stop: {reason}; Slurm is already requeueing job {job_id}")
        return True
    if r.returncode != 0:
        log(f"stop: {reason}; scontrol requeue {job_id} failed (state {state or '?'}): {answer[:300]}. "
            "Clear the train task to resume from the checkpoint")
        return False
    log(f"stop: {reason}; requeued job {job_id} (restart {restarts + 1}); it resumes from the checkpoint")
    return True


# ------------------------------------------------------------------------------------------------
# Model, checkpoints, export
# ------------------------------------------------------------------------------------------------


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


class Checkpoints:
    """``ckpt-<step>.pt`` files plus ``latest.json`` naming the newest; rank 0 writes."""

    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.dir = Path(directory)
        self.keep = keep

    def latest(self) -> dict[str, Any] | None:
        import torch

        pointer = self.dir / "latest.json"
        if not pointer.is_file():
            return None
        name = json.loads(pointer.read_text())["file"]
        return torch.load(self.dir / name, map_location="cpu", weights_only=False)

    def save(self, state: dict[str, Any]) -> Path:
        import torch

        self.dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(state, buf)
        path = self.dir / f"ckpt-{state['step']:09d}.pt"
        write_atomic(path, buf.getvalue())
        write_atomic(self.dir / "latest.json", json.dumps({"file": path.name, "step": state["step"]}).encode())
        for old in sorted(self.dir.glob("ckpt-*.pt"))[: -self.keep]:
            old.unlink(missing_ok=True)
        return path


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
    write_atomic(output_dir / "onnx_check.json", json.dumps(check, indent=2).encode())
    log(f"onnx: parity ok on {rows} held-out rows (max |diff| {max_abs:.2e} <= atol {ONNX_ATOL} + rtol {ONNX_RTOL})")
    return check


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def train(params: dict[str, Any], dist_info: Dist, stop: StopRequest) -> int:
    """Train (resuming from the latest checkpoint), then (rank 0) write the outputs. Returns the exit status."""
    import numpy as np
    import torch
    import torch.distributed as dist

    hp = params["hyperparameters"]
    dataset_dir = Path(params["dataset_dir"])
    output_dir = Path(params["output_dir"])
    ckpts = Checkpoints(Path(params.get("checkpoint_dir") or output_dir.parent / "checkpoints"))
    world, rank = dist_info.world, dist_info.rank
    if dist_info.main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / MARKER).unlink(missing_ok=True)

    started = time.time()
    threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "1") or 1)
    torch.set_num_threads(max(1, threads))
    seed = int(hp["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.use_deterministic_algorithms(True)

    label, features = hp["label_column"], list(hp["feature_columns"])
    files = dataset_files(dataset_dir)
    check_schema(files, label, features)
    stats = scan_dataset(files, hp)
    batch, epochs = int(hp["batch_size"]), int(hp["epochs"])
    per_epoch = steps_per_epoch(stats.n_train, batch, world)
    total_steps = per_epoch * epochs
    log(f"rank={rank}/{world} node={dist_info.node} host={socket.gethostname()} backend={dist_info.backend} "
        f"device={dist_info.device} threads={threads} job={os.environ.get('SLURM_JOB_ID', '-')} "
        f"restart={os.environ.get('SLURM_RESTART_COUNT', '0')}")
    if dist_info.main:
        log(f"data: rows={stats.n_rows} train={stats.n_train} test={stats.n_test} features={len(features)} "
            f"classes={len(stats.classes)} files={len(files)} steps_per_epoch={per_epoch} total_steps={total_steps}")

    model = build_model(len(features), int(hp["hidden_units"]), len(stats.classes)).to(dist_info.device)
    optimiser = torch.optim.Adam(model.parameters(), lr=float(hp["learning_rate"]))
    digest = hp_digest(hp)
    step = 0
    state = ckpts.latest()
    if state is not None and (state.get("hp_digest") != digest or state.get("world") != world):
        if dist_info.main:
            log(f"resume: ignoring checkpoint at step {state['step']}: it was made with other hyperparameters "
                "or another number of ranks; starting from step 0")
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step = int(state["step"])
        if dist_info.main:
            log(f"resume: from checkpoint step={step} (epoch {step // per_epoch + 1}); "
                f"steps 1..{step} are not trained again")
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    loss_fn = torch.nn.CrossEntropyLoss()

    def save_checkpoint(reason: str) -> None:
        if dist_info.main:
            path = ckpts.save({"step": step, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                               "hp_digest": digest, "world": world, "classes": stats.classes,
                               "saved_at": time.time()})
            log(f"checkpoint: step={step} reason={reason} file={path}")

    last_ckpt_time, last_ckpt_step = time.time(), step
    every_steps, every_s = int(hp["checkpoint_every_steps"]), float(hp["checkpoint_every_minutes"]) * 60
    log_every, sleep_s = int(hp["log_every_steps"]), float(hp["step_sleep_s"])
    epoch_loss = float("nan")
    stopped = False
    for epoch in range(step // per_epoch + 1, epochs + 1):
        ddp.train()
        done_in_epoch = step - (epoch - 1) * per_epoch
        total, seen = 0.0, 0
        for i, (xb, yb) in enumerate(iter_global_batches(files, hp, stats, epoch, world)):
            if i < done_in_epoch:
                continue  # finished before a restart: its data is read, not trained again
            flag = torch.tensor([stop.code], dtype=torch.int64)
            if world > 1:
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops at the same step
            if int(flag.item()):
                stopped = True
                break
            x = torch.from_numpy(xb[rank::world]).to(dist_info.device)
            y = torch.from_numpy(yb[rank::world]).to(dist_info.device)
            optimiser.zero_grad()
            loss = loss_fn(ddp(x), y)
            loss.backward()
            optimiser.step()
            step += 1
            total += loss.item() * len(y)
            seen += len(y)
            if dist_info.main and (step % log_every == 0 or step == total_steps):
                log(f"step={step}/{total_steps} epoch={epoch}/{epochs} loss={loss.item():.4f}")
            if sleep_s:
                time.sleep(sleep_s)
            if step - last_ckpt_step >= every_steps or time.time() - last_ckpt_time >= every_s:
                save_checkpoint("periodic")
                last_ckpt_time, last_ckpt_step = time.time(), step
        if stopped:
            break
        if seen:
            epoch_loss = total / seen
            if dist_info.main:
                log(f"epoch={epoch}/{epochs} step={step} loss={epoch_loss:.4f}")

    if stopped or (stop.signal and step < total_steps):
        reason = {"SIGUSR1": "time limit near (SIGUSR1)", "SIGTERM": "SIGTERM", "SIGINT": "SIGINT"}.get(
            stop.signal or "", str(stop.signal))
        save_checkpoint(f"stop-{stop.signal}")
        requeued = (requeue_self(stop.signal or "", f"{reason} at step={step}", int(hp["max_requeues"]))
                    if dist_info.main else True)
        return 0 if requeued else EXIT_TERMINATED
    if step > last_ckpt_step:
        save_checkpoint("final")  # a restart during the export below does not train again
    if world > 1:
        # Every rank leaves the process group at the same point, before rank 0 exports. A rank
        # that tears gloo down while its peer still holds the group can abort in gloo's threads
        # ("terminate called without an active exception"), failing a finished job.
        dist.barrier()
        del ddp
        dist.destroy_process_group()
    if not dist_info.main:
        return 0

    # ---- rank 0: evaluate on the held-out split and write the outputs (marker last) ----
    model.eval()
    exported = export_module(model.cpu(), stats.mean, stats.std)
    correct = n = 0
    test_loss = 0.0
    with torch.no_grad():
        for x, y in iter_test_rows(files, hp, stats):
            logits = exported(torch.from_numpy(x))
            yt = torch.from_numpy(y)
            correct += int((logits.argmax(1) == yt).sum())
            test_loss += float(loss_fn(logits, yt)) * len(y)
            n += len(y)
        correct_train = seen_train = 0
        for xb, yb in iter_global_batches(files, hp, stats, 0, 1):
            logits = model(torch.from_numpy(xb))
            correct_train += int((logits.argmax(1) == torch.from_numpy(yb)).sum())
            seen_train += len(yb)
    test_acc = correct / n
    check = export_artifacts(model, stats, hp, files, output_dir)
    config = {
        "architecture": "mlp-1-hidden",
        "input_dim": len(features),
        "hidden_units": int(hp["hidden_units"]),
        "num_classes": len(stats.classes),
        "classes": stats.classes,
        "feature_columns": features,
        "label_column": label,
        "normalisation": {"mean": stats.mean.tolist(), "std": stats.std.tolist()},
        "split": {"method": "splitmix64(row_index + seed * 0x9E3779B97F4A7C15) / 2**64 < test_fraction",
                  "row_index": "position in the dataset's sorted part-*.parquet files",
                  "seed": seed, "test_fraction": float(hp["test_fraction"])},
        "onnx": {"file": "model.onnx", "input": "features", "input_shape": ["batch", len(features)],
                 "input_dtype": "float32", "output": "logits", "opset": ONNX_OPSET,
                 "normalisation_included": True},
        "safetensors": {"file": "model.safetensors", "normalisation_included": True},
        "torch_version": torch.__version__,
    }
    write_atomic(output_dir / "model_config.json", json.dumps(config, indent=2, default=str).encode())
    metrics = {
        "test_accuracy": test_acc,
        "onnx_test_accuracy": check["heldout_accuracy_onnx"],
        "train_accuracy": correct_train / seen_train if seen_train else None,
        "loss": epoch_loss,
        "test_loss": test_loss / n,
        "n_train": stats.n_train,
        "n_test": stats.n_test,
        "epochs": epochs,
        "steps": step,
        "world_size": world,
        "seed": seed,
        "restarts": _env_int("SLURM_RESTART_COUNT", default=0),
        "duration_s": round(time.time() - started, 3),
    }
    write_atomic(output_dir / "metrics.json", json.dumps(metrics, indent=2).encode())

    # The completion marker goes last: COMPLETED in sacct plus this file means the outputs are
    # whole and visible (FAILURE-MODES 11).
    marker = {
        "files": {name: {"sha256": sha256_file(output_dir / name), "bytes": (output_dir / name).stat().st_size}
                  for name in OUTPUT_FILES},
        "metrics": metrics,
        "onnx_check": {k: v for k, v in check.items() if k != "probe"},
        "dataset_dir": str(dataset_dir),
        "dataset_files": stats.files,
        "hyperparameters": hp,
        "job": params.get("job", {}),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": _env_int("SLURM_RESTART_COUNT", default=0),
        "world_size": world,
        "host": socket.gethostname(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomic(output_dir / MARKER, json.dumps(marker, indent=2, default=str).encode())
    log(f"done: test_accuracy={test_acc:.4f} steps={step} outputs={output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--params", required=True, type=Path, help="path of params.json")
    args = parser.parse_args(argv)
    stop = StopRequest()
    stop.install()
    try:
        params = load_params(args.params)
        if (not os.environ.get("SLURM_JOB_ID")
                or _env_int("SLURM_RESTART_COUNT", default=0) >= int(params["hyperparameters"]["max_requeues"])):
            # The time-limit warning is only useful when the job can requeue itself: otherwise keep
            # training and hope to finish (every rank decides alike).
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        dist_info = setup_distributed()
    except BadInput as exc:
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    try:
        return train(params, dist_info, stop)
    except BadInput as exc:
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except OnnxMismatch as exc:
        print(f"ERROR: {exc}; the model was not published. Report it with the job log", file=sys.stderr, flush=True)
        return EXIT_ONNX_MISMATCH
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
