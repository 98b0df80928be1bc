"""Data of the tabular classifier: the held-out split, batched Parquet reading, the first-pass statistics.

* **Data in batches.** The Parquet files are read with ``pyarrow.parquet.ParquetFile.iter_batches``
  (only the label and feature columns, ``read_batch_rows`` rows at a time); at most one shuffle
  buffer (``shuffle_buffer_rows``) of training rows is in memory, never the whole dataset. A first
  pass computes the feature means and standard deviations of the training split and the classes.
* **Held-out split fixed by the seed.** Row ``i`` of the dataset (counted across the sorted files)
  is a test row when ``splitmix64(i + seed * GOLDEN) / 2**64 < test_fraction``
  (:func:`test_mask`): the split does not depend on batch sizes, the number of ranks or restarts,
  and anyone holding the dataset can recompute it (the end-to-end test does).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifp_runtime import BadInput
from aifp_runtime.text import shown, shown_list

#: The split hash (splitmix64) constants.
GOLDEN = 0x9E3779B97F4A7C15
MAX_CLASSES = 10_000


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
                    raise BadInput(f"column {shown(col)} has null values in {files[i].name}; clean the data "
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
        ys.append(np.array([index[v] for v, keep in zip(chunk.y, train, strict=True) if keep], dtype="int64"))
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
                   np.array([index[v] for v, keep in zip(chunk.y, test, strict=True) if keep], dtype="int64"))
