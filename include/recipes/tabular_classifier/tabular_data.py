"""Data of the tabular classifier: numeric features from Parquet record batches, the first-pass statistics.

* **Data in batches.** The Parquet files are read in record batches (only the label and feature
  columns, ``read_batch_rows`` rows at a time); at most one shuffle buffer
  (``shuffle_buffer_rows``) of training rows is in memory, never the whole dataset. A first pass
  computes the feature means and standard deviations of the training split and the classes.
* **Held-out split fixed by the seed.** Row ``i`` of the dataset (counted across the sorted files)
  is a test row when ``splitmix64(i + seed * GOLDEN) / 2**64 < test_fraction``
  (:func:`test_mask`): the split does not depend on batch sizes, the number of ranks or restarts,
  and anyone holding the dataset can recompute it (the end-to-end test does).

The files, the record batches, the split and the shuffled global batches are the job runtime's
(:mod:`aifp_runtime.data`, the same for every recipe); this module turns record batches into
features.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifp_runtime import BadInput
from aifp_runtime.data import (
    MAX_CLASSES,
    class_key,
    dataset_files,
    file_order,
    iter_record_batches,
    label_ids,
    shuffled_global_batches,
    steps_per_epoch,
    test_mask,
)
from aifp_runtime.text import shown, shown_list

__all__ = ["Chunk", "DataStats", "check_schema", "dataset_files", "iter_chunks", "iter_global_batches",
           "iter_test_rows", "scan_dataset", "steps_per_epoch", "test_mask"]


def check_schema(files: list[Path], label: str, features: list[str]) -> None:
    """Every file has the columns; every feature column is numeric. Reads footers only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for f in files:
        schema = pq.read_schema(f)
        missing = [c for c in [label, *features] if c not in schema.names]
        if missing:
            raise BadInput(
                f"column(s) {shown_list(missing)} not found in {f.name}; available columns: {shown_list(schema.names)}. "
                "Fix hyperparameters.label_column/feature_columns"
            )
        for col in features:
            typ = schema.field(col).type
            if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)
                    or pa.types.is_decimal(typ)):
                raise BadInput(
                    f"feature column {shown(col)} has type {typ}, not numeric; remove it from "
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

    for rows in iter_record_batches(files, [label, *features], read_rows, order):
        batch = rows.batch
        x = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False).astype("float64") for c in features])
        if not np.isfinite(x).all():
            raise BadInput(f"feature columns contain NaN or infinite values in {rows.file.name}; clean the data")
        yield Chunk(index=rows.index, x=x, y=batch.column(label).to_pylist())


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
            raise BadInput(f"label column {shown(label)} has more than {MAX_CLASSES} classes; is it really a label?")
    if n_rows == 0:
        raise BadInput("the dataset has no rows")
    if len(classes) < 2:
        raise BadInput(f"hyperparameters.label_column {shown(label)} has only one class; "
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


def iter_global_batches(files: list[Path], hp: dict[str, Any], stats: DataStats, epoch: int,
                        world: int) -> Iterator[tuple[Any, Any]]:
    """Yield the epoch's global batches ``(x normalised float32, y int64)`` of training rows.

    Files are visited in an order drawn from ``(seed, epoch)``; the runtime's shuffle buffer
    (:func:`aifp_runtime.data.shuffled_global_batches`) cuts them into global batches of
    ``batch_size * world`` rows. Deterministic for a given world size.
    """
    seed, frac = int(hp["seed"]), float(hp["test_fraction"])
    label, features = hp["label_column"], list(hp["feature_columns"])
    index = {c: i for i, c in enumerate(stats.classes)}

    def train_rows() -> Iterator[tuple[Any, Any]]:
        for chunk in iter_chunks(files, label, features, int(hp["read_batch_rows"]),
                                 file_order(seed, epoch, len(files))):
            train = ~test_mask(chunk.index, seed, frac)
            if train.any():
                yield ((chunk.x[train] - stats.mean) / stats.std).astype("float32"), label_ids(chunk.y, train, index)

    yield from shuffled_global_batches(train_rows(), seed=seed, epoch=epoch, batch_size=int(hp["batch_size"]),
                                       world=world, buffer_rows=int(hp["shuffle_buffer_rows"]))


def iter_test_rows(files: list[Path], hp: dict[str, Any], stats: DataStats) -> Iterator[tuple[Any, Any]]:
    """Yield the held-out rows in file order as ``(raw float32 features, int64 labels)`` batches."""
    index = {c: i for i, c in enumerate(stats.classes)}
    for chunk in iter_chunks(files, hp["label_column"], list(hp["feature_columns"]), int(hp["read_batch_rows"])):
        test = test_mask(chunk.index, int(hp["seed"]), float(hp["test_fraction"]))
        if test.any():
            yield chunk.x[test].astype("float32"), label_ids(chunk.y, test, index)
