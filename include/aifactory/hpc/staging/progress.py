"""Progress lines of a transfer: bytes, percentage and throughput every few seconds."""

from __future__ import annotations

import threading
import time

from aifactory.hpc.staging.options import Log

#: Seconds between progress lines.
PROGRESS_EVERY_S = 5.0


class _Progress:
    """Thread-safe byte counter that logs bytes, percentage and throughput every few seconds."""

    def __init__(self, total_bytes: int, total_files: int, log: Log, what: str) -> None:
        self.total_bytes, self.total_files, self.log, self.what = total_bytes, total_files, log, what
        self.bytes = 0
        self.files = 0
        self.started = time.monotonic()
        self._last = self.started
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            now = time.monotonic()
            if now - self._last < PROGRESS_EVERY_S:
                return
            self._last = now
        self.report()

    def set(self, done_bytes: int, done_files: int) -> None:
        with self._lock:
            self.bytes, self.files = done_bytes, done_files
        self.report()

    def file_done(self) -> None:
        with self._lock:
            self.files += 1

    def report(self) -> None:
        secs = max(time.monotonic() - self.started, 1e-6)
        pct = 100.0 * self.bytes / self.total_bytes if self.total_bytes else 100.0
        self.log(
            f"stage: {self.what} {self.bytes}/{self.total_bytes} B ({pct:.0f}%), {self.files}/{self.total_files} "
            f"file(s), {self.bytes / secs / 1e6:.1f} MB/s"
        )
