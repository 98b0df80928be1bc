"""Read-ahead: run a producer (network reads, file reads) in a background thread, a few items
ahead of the consumer, so that waiting for bytes overlaps with using them."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def prefetched(items: Iterator[T], depth: int, *, name: str = "read-ahead") -> Iterator[T]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead of the consumer.

    Items and the producer's exception arrive in order; closing the returned generator (or
    leaving a ``for`` loop over it early and letting it close) stops and joins the thread.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer
            put(("error", exc))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "item":
                yield value
            elif kind == "end":
                return
            else:
                raise value
    finally:
        stop.set()
        thread.join()


def chunks(stream: Any, size: int) -> Iterator[bytes]:
    """``stream.read(size)`` until it returns nothing."""
    while chunk := stream.read(size):
        yield chunk
