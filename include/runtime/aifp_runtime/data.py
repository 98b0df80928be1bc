"""Reading a staged dataset the same way in every recipe: files, the held-out split, batches.

numpy and pyarrow are imported where they are used (the rest of the runtime is standard library).

* **Files.** A dataset version is its sorted ``part-*.parquet`` shards (:func:`dataset_files`);
  row ``i`` is the ``i``-th row counted across them.
* **Held-out split fixed by the seed.** Row ``i`` is a test row when
  ``splitmix64(i + seed * GOLDEN) / 2**64 < test_fraction`` (:func:`test_mask`): the split does not
  depend on batch sizes, the number of ranks or restarts, and anyone holding the dataset can
  recompute it (the end-to-end tests do).
* **Record batches.** :func:`iter_record_batches` reads only the named columns, a bounded number
  of rows at a time, and refuses nulls (the quality gate should have caught them).
* **Global batches.** :func:`shuffled_global_batches` gathers training rows into a shuffle buffer,
  shuffles it with ``(seed, epoch, buffer number)`` and cuts it into global batches of
  ``batch_size * world`` rows; rank ``r`` trains on rows ``r::world`` of each.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from aifp_runtime.job import BadInput
from aifp_runtime.text import shown

#: The split hash (splitmix64) constants.
GOLDEN = 0x9E3779B97F4A7C15
#: A label column with more distinct values than this is not a label.
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


def class_key(v: Any) -> tuple[str, Any]:
    """Sort classes by (type name, value) so mixed types cannot crash and the order is stable."""
    return (type(v).__name__, v)


def steps_per_epoch(n_train: int, batch: int, world: int) -> int:
    """Global steps of one epoch: full global batches, plus a last one if every rank gets a row."""
    full, rest = divmod(n_train, batch * world)
    return full + (1 if rest >= world else 0)


def file_order(seed: int, epoch: int, n_files: int) -> list[int]:
    """The order an epoch visits the files in, drawn from ``(seed, epoch)``."""
    import numpy as np

    return [int(i) for i in np.random.default_rng([seed, epoch]).permutation(n_files)]


class Rows(NamedTuple):
    """One record batch of a dataset file: the file, the rows' global indices (int64), the batch."""

    file: Path
    index: Any
    batch: Any


def iter_record_batches(files: list[Path], columns: list[str], read_rows: int,
                        order: list[int] | None = None) -> Iterator[Rows]:
    """Yield :class:`Rows` of at most ``read_rows`` rows, only ``columns``, file by file.

    ``order`` permutes the files (their global row offsets stay those of the sorted order, so the
    split never moves). A null in any of the columns is refused, naming the column and the file.
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
        for batch in handles[i].iter_batches(batch_size=read_rows, columns=columns):
            n = batch.num_rows
            for col in columns:
                if batch.column(col).null_count:
                    raise BadInput(f"column {shown(col)} has null values in {files[i].name}; clean the data "
                                   "(the quality gate should have caught this)")
            yield Rows(files[i], np.arange(start, start + n, dtype=np.int64), batch)
            start += n


def shuffled_global_batches(parts: Iterable[tuple[Any, Any]], *, seed: int, epoch: int, batch_size: int,
                            world: int, buffer_rows: int) -> Iterator[tuple[Any, Any]]:
    """Yield the epoch's global batches ``(x, y)`` from ``parts``, arrays of training rows in file order.

    Rows are gathered into a shuffle buffer of at least ``buffer_rows`` rows, shuffled with
    ``(seed, epoch, buffer number)`` and cut into global batches of ``batch_size * world`` rows; a
    last, shorter batch is yielded only if every rank gets a row. Deterministic for a given world
    size; at most one buffer of rows is in memory.
    """
    import numpy as np

    step_rows = int(batch_size) * world
    buffer_rows = max(int(buffer_rows), step_rows)
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

    for x, y in parts:
        if not len(y):
            continue
        xs.append(x)
        ys.append(y)
        held += len(y)
        if held >= buffer_rows:
            yield from drain(final=False)
    yield from drain(final=True)


def label_ids(values: list[Any], keep: Any, index: dict[Any, int]) -> Any:
    """``index[v]`` (int64) for each value of ``values`` where ``keep`` is true."""
    import numpy as np

    return np.array([index[v] for v, k in zip(values, keep, strict=True) if k], dtype="int64")


def split_config(seed: int, test_fraction: float) -> dict[str, Any]:
    """How the held-out split was drawn (:func:`test_mask`), for a model's ``model_config.json``."""
    return {"method": "splitmix64(row_index + seed * 0x9E3779B97F4A7C15) / 2**64 < test_fraction",
            "row_index": "position in the dataset's sorted part-*.parquet files",
            "seed": int(seed), "test_fraction": float(test_fraction)}
