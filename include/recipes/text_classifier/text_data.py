"""Data of the text classifier: texts and labels from Parquet record batches, the vocabulary, token ids.

* **Data in batches.** Only the text and label columns are read, ``read_batch_rows`` rows at a
  time; at most one shuffle buffer (``shuffle_buffer_rows``) of training rows is in memory. A first
  pass counts the training split's tokens (the vocabulary, :mod:`text_tokenizer`) and the classes.
* **Held-out split fixed by the seed**: :func:`aifp_runtime.data.test_mask`, the same rule as every
  recipe's (row ``i`` of the sorted files is a test row when ``splitmix64(i + seed * GOLDEN) /
  2**64 < test_fraction``).
* **Token ids.** Each text becomes exactly ``max_length`` int64 ids (:meth:`WordTokenizer.encode`),
  the input ``model.onnx`` takes.

Files, record batches, the split and the shuffled global batches are the job runtime's
(:mod:`aifp_runtime.data`); this module turns record batches into token ids.
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
from text_tokenizer import PAD_ID, WordTokenizer, words

__all__ = ["TextStats", "check_schema", "dataset_files", "encode", "iter_chunks", "iter_global_batches",
           "iter_test_rows", "scan_dataset", "steps_per_epoch", "test_mask"]


def is_text_type(typ: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


def check_schema(files: list[Path], text: str, label: str) -> None:
    """Every file has both columns; the text column holds strings. Reads footers only."""
    import pyarrow.parquet as pq

    for f in files:
        schema = pq.read_schema(f)
        missing = [c for c in (text, label) if c not in schema.names]
        if missing:
            raise BadInput(
                f"column(s) {shown_list(missing)} not found in {f.name}; available columns: {shown_list(schema.names)}. "
                "Fix hyperparameters.text_column/label_column"
            )
        typ = schema.field(text).type
        if not is_text_type(typ):
            raise BadInput(f"text column {shown(text)} has type {typ}, not text (strings); name the column that "
                           "holds the text in hyperparameters.text_column")


@dataclass
class Chunk:
    """Rows of one record batch: global row indices, texts, raw labels."""

    index: Any
    texts: list[str]
    y: list[Any]


def iter_chunks(files: list[Path], text: str, label: str, read_rows: int,
                order: list[int] | None = None) -> Iterator[Chunk]:
    for rows in iter_record_batches(files, [text, label], read_rows, order):
        yield Chunk(index=rows.index, texts=rows.batch.column(text).to_pylist(), y=rows.batch.column(label).to_pylist())


@dataclass
class TextStats:
    """First pass over the data: the classes, the vocabulary, and what the schedule needs."""

    classes: list[Any]
    tokenizer: WordTokenizer
    n_rows: int
    n_train: int
    n_test: int
    #: training texts with more than max_length tokens (cut), and their mean length in tokens
    n_truncated: int
    mean_tokens: float
    files: list[str]


def scan_dataset(files: list[Path], hp: dict[str, Any]) -> TextStats:
    text, label = hp["text_column"], hp["label_column"]
    seed, frac, max_length = int(hp["seed"]), float(hp["test_fraction"]), int(hp["max_length"])
    counts: dict[str, int] = {}
    classes: set[Any] = set()
    n_rows = n_train = n_truncated = n_tokens = 0
    for chunk in iter_chunks(files, text, label, int(hp["read_batch_rows"])):
        test = test_mask(chunk.index, seed, frac)
        for t, is_test in zip(chunk.texts, test, strict=True):
            if is_test:
                continue
            tokens = words(t, max_length + 1)
            n_truncated += len(tokens) > max_length
            n_tokens += min(len(tokens), max_length)
            for token in tokens[:max_length]:
                counts[token] = counts.get(token, 0) + 1
        n_train += int((~test).sum())
        n_rows += len(chunk.index)
        classes.update(chunk.y)
        if len(classes) > MAX_CLASSES:
            raise BadInput(f"label column {shown(label)} has more than {MAX_CLASSES} classes; is it really a label?")
    if n_rows == 0:
        raise BadInput("the dataset has no rows")
    if len(classes) < 2:
        raise BadInput(f"hyperparameters.label_column {shown(label)} has only one class; need at least two")
    n_test = n_rows - n_train
    if n_train < 1 or n_test < 1:
        raise BadInput(f"the split by hyperparameters.test_fraction={frac} and seed={seed} leaves {n_train} training "
                       f"and {n_test} test row(s) of {n_rows}; use more data or another test_fraction")
    tokenizer = WordTokenizer.build(counts, vocab_size=int(hp["vocab_size"]), min_count=int(hp["min_token_count"]),
                                    max_length=max_length)
    if tokenizer.vocab_size <= 2:
        raise BadInput(f"no token of text column {shown(text)} occurs hyperparameters.min_token_count="
                       f"{hp['min_token_count']} times in the training split; lower it or use more data")
    return TextStats(classes=sorted(classes, key=class_key), tokenizer=tokenizer, n_rows=n_rows, n_train=n_train,
                     n_test=n_test, n_truncated=n_truncated, mean_tokens=n_tokens / n_train, files=[f.name for f in files])


def encode(tokenizer: WordTokenizer, texts: list[str]) -> Any:
    """``[len(texts), max_length]`` int64 token ids."""
    import numpy as np

    out = np.full((len(texts), tokenizer.max_length), PAD_ID, dtype=np.int64)
    for i, t in enumerate(texts):
        ids = tokenizer.ids(t)
        out[i, : len(ids)] = ids
    return out


def _rows(chunk: Chunk, keep: Any) -> list[str]:
    return [t for t, k in zip(chunk.texts, keep, strict=True) if k]


def iter_global_batches(files: list[Path], hp: dict[str, Any], stats: TextStats, epoch: int,
                        world: int) -> Iterator[tuple[Any, Any]]:
    """Yield the epoch's global batches ``(token ids int64, y int64)`` of training rows.

    Files are visited in an order drawn from ``(seed, epoch)``; the runtime's shuffle buffer
    (:func:`aifp_runtime.data.shuffled_global_batches`) cuts them into global batches of
    ``batch_size * world`` rows. Deterministic for a given world size.
    """
    seed, frac = int(hp["seed"]), float(hp["test_fraction"])
    index = {c: i for i, c in enumerate(stats.classes)}

    def train_rows() -> Iterator[tuple[Any, Any]]:
        for chunk in iter_chunks(files, hp["text_column"], hp["label_column"], int(hp["read_batch_rows"]),
                                 file_order(seed, epoch, len(files))):
            train = ~test_mask(chunk.index, seed, frac)
            if train.any():
                yield encode(stats.tokenizer, _rows(chunk, train)), label_ids(chunk.y, train, index)

    yield from shuffled_global_batches(train_rows(), seed=seed, epoch=epoch, batch_size=int(hp["batch_size"]),
                                       world=world, buffer_rows=int(hp["shuffle_buffer_rows"]))


def iter_test_rows(files: list[Path], hp: dict[str, Any], stats: TextStats) -> Iterator[tuple[Any, Any]]:
    """Yield the held-out rows in file order as ``(token ids int64, int64 labels)`` batches."""
    index = {c: i for i, c in enumerate(stats.classes)}
    for chunk in iter_chunks(files, hp["text_column"], hp["label_column"], int(hp["read_batch_rows"])):
        test = test_mask(chunk.index, int(hp["seed"]), float(hp["test_fraction"]))
        if test.any():
            yield encode(stats.tokenizer, _rows(chunk, test)), label_ids(chunk.y, test, index)
