"""Train a small MLP classifier on tabular Parquet data. Runs on the cluster, inside a Slurm job.

This file imports nothing of the factory's: it is copied into the run directory and run by the
cluster's training Python (``requirements-train.txt``: torch, pyarrow, numpy).

Usage::

    python train.py --params params.json

``params.json`` (written by the SlurmJobOperator, never by a shell)::

    {
      "dataset_dir": "/srv/aifactory/<tenant>/datasets/<name>/<version>",   # part-*.parquet files
      "output_dir":  "/srv/aifactory/<tenant>/runs/<run_key>/output",       # created if missing
      "hyperparameters": {"label_column": "species", "feature_columns": [...], "epochs": 30,
                          "hidden_units": 32, "learning_rate": 0.01, "batch_size": 64,
                          "test_fraction": 0.2, "seed": 42},
      "job": {...}   # metadata (tenant, dag_id, run_id, task_id, job_name, recipe); copied to outputs
    }

Outputs in ``output_dir``: ``model.pt`` (state_dict), ``model_config.json``, ``metrics.json`` and,
written LAST, ``_COMPLETED.json`` listing every output with its sha256. A stale marker is removed
first, so a marker on disk always belongs to a finished run of this script.

Exit status: 0 success; 2 bad input (missing column, non-numeric feature, one class, too few rows,
bad params), with one ``ERROR: ...`` line on stderr that says what to fix; 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

MARKER = "_COMPLETED.json"
OUTPUT_FILES = ("model.pt", "model_config.json", "metrics.json")
DEFAULTS = {
    "epochs": 20,
    "hidden_units": 32,
    "learning_rate": 0.01,
    "batch_size": 64,
    "test_fraction": 0.2,
    "seed": 42,
}


class BadInput(Exception):
    """The data or the parameters cannot be trained on; the message says what to fix."""


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


def load_params(path: Path) -> dict[str, Any]:
    try:
        params = json.loads(path.read_text())
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
    params["hyperparameters"] = hp
    return params


def load_dataset(dataset_dir: Path, label: str, features: list[str]):
    """Read the needed columns of every Parquet file; check types. Returns (X float32, y raw list)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(dataset_dir.glob("part-*.parquet")) or sorted(dataset_dir.glob("*.parquet"))
    if not files:
        raise BadInput(f"no Parquet files (part-*.parquet) in dataset dir {dataset_dir}")
    wanted = [label, *features]
    tables = []
    for f in files:
        schema = pq.read_schema(f)
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise BadInput(
                f"column(s) {missing} not found in {f.name}; available columns: {schema.names}. "
                "Fix label_column/feature_columns"
            )
        tables.append(pq.read_table(f, columns=wanted))
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise BadInput(f"the Parquet files of {dataset_dir} disagree on column types: {exc}") from exc
    if table.num_rows == 0:
        raise BadInput(f"dataset {dataset_dir} has no rows")
    for col in features:
        typ = table.schema.field(col).type
        if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)
                or pa.types.is_decimal(typ)):
            raise BadInput(
                f"feature column {col!r} has type {typ}, not numeric; remove it from feature_columns "
                "or encode it as numbers"
            )
    for col in wanted:
        nulls = table.column(col).null_count
        if nulls:
            raise BadInput(f"column {col!r} has {nulls} null value(s) of {table.num_rows}; clean the data")
    x = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype("float64") for c in features])
    if not np.isfinite(x).all():
        raise BadInput("feature columns contain NaN or infinite values; clean the data")
    y = table.column(label).to_pylist()
    return x.astype("float32"), y, [f.name for f in files]


def train(params: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    hp = params["hyperparameters"]
    dataset_dir = Path(params["dataset_dir"])
    output_dir = Path(params["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / MARKER).unlink(missing_ok=True)

    started = time.time()
    threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "1") or 1)
    torch.set_num_threads(max(1, threads))
    seed = int(hp["seed"])
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)

    label, features = hp["label_column"], list(hp["feature_columns"])
    x, y_raw, files = load_dataset(dataset_dir, label, features)
    # Sort classes by (type name, value) so mixed types cannot crash and the order is stable.
    classes = sorted(set(y_raw), key=lambda v: (type(v).__name__, v))
    if len(classes) < 2:
        raise BadInput(f"label column {label!r} has only one class ({classes!r}); need at least two")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[v] for v in y_raw], dtype="int64")

    n = len(y)
    if n < 2:
        raise BadInput(f"dataset has {n} row(s); need at least 2 (one to train, one to test)")
    n_test = int(round(n * float(hp["test_fraction"])))
    n_test = min(max(n_test, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    mean = x[train_idx].mean(axis=0)
    std = x[train_idx].std(axis=0)
    std[std == 0] = 1.0  # a constant feature carries no information; avoid dividing by zero
    xn = (x - mean) / std

    x_train = torch.from_numpy(xn[train_idx].astype("float32"))
    y_train = torch.from_numpy(y[train_idx])
    x_test = torch.from_numpy(xn[test_idx].astype("float32"))
    y_test = torch.from_numpy(y[test_idx])

    hidden = int(hp["hidden_units"])
    model = torch.nn.Sequential(
        torch.nn.Linear(len(features), hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, len(classes)),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=float(hp["learning_rate"]))
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = int(hp["batch_size"])
    epochs = int(hp["epochs"])
    shuffle = torch.Generator().manual_seed(seed)

    log(
        f"data: rows={n} train={len(train_idx)} test={n_test} features={len(features)} "
        f"classes={len(classes)} files={len(files)} threads={threads}"
    )
    step = 0
    epoch_loss = float("nan")
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_idx), generator=shuffle)
        total, seen = 0.0, 0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            optimiser.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimiser.step()
            step += 1
            total += loss.item() * len(idx)
            seen += len(idx)
        epoch_loss = total / seen
        with torch.no_grad():
            model.eval()
            test_acc = float((model(x_test).argmax(1) == y_test).float().mean())
        log(f"epoch={epoch}/{epochs} step={step} loss={epoch_loss:.4f} test_accuracy={test_acc:.4f}")

    with torch.no_grad():
        model.eval()
        train_acc = float((model(x_train).argmax(1) == y_train).float().mean())
        test_logits = model(x_test)
        test_acc = float((test_logits.argmax(1) == y_test).float().mean())
        test_loss = float(loss_fn(test_logits, y_test))

    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    write_atomic(output_dir / "model.pt", buf.getvalue())
    config = {
        "architecture": "mlp-1-hidden",
        "input_dim": len(features),
        "hidden_units": hidden,
        "num_classes": len(classes),
        "classes": classes,
        "feature_columns": features,
        "label_column": label,
        "normalisation": {"mean": mean.tolist(), "std": std.tolist()},
        "torch_version": torch.__version__,
    }
    write_atomic(output_dir / "model_config.json", json.dumps(config, indent=2).encode())
    metrics = {
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "loss": epoch_loss,
        "test_loss": test_loss,
        "n_train": int(len(train_idx)),
        "n_test": int(n_test),
        "epochs": epochs,
        "steps": step,
        "seed": seed,
        "duration_s": round(time.time() - started, 3),
    }
    write_atomic(output_dir / "metrics.json", json.dumps(metrics, indent=2).encode())

    # The completion marker goes last: COMPLETED in sacct plus this file means the outputs are
    # whole and visible (FAILURE-MODES 11).
    marker = {
        "files": {name: {"sha256": sha256_file(output_dir / name), "bytes": (output_dir / name).stat().st_size}
                  for name in OUTPUT_FILES},
        "metrics": metrics,
        "dataset_dir": str(dataset_dir),
        "dataset_files": files,
        "hyperparameters": hp,
        "job": params.get("job", {}),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "host": socket.gethostname(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomic(output_dir / MARKER, json.dumps(marker, indent=2, default=str).encode())
    log(f"done: test_accuracy={test_acc:.4f} train_accuracy={train_acc:.4f} outputs={output_dir}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, type=Path, help="path of params.json")
    args = parser.parse_args(argv)
    try:
        train(load_params(args.params))
    except BadInput as exc:
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
