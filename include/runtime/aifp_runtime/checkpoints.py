"""Checkpoints: ``ckpt-<step>.pt`` files and ``latest.json`` naming the newest step; rank 0 writes.

Loading is safe: the file loaded is always one whose name the runtime builds from an integer step
(``latest.json`` holds only that number, never a file name), and ``torch.load`` runs with
``weights_only=True``, so a checkpoint can hold tensors and plain data, never code.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aifp_runtime.outputs import write_atomic

POINTER = "latest.json"
_MAX_STEP = 10**12


class Checkpoints:
    """Save and load the job's checkpoints in ``directory`` (kept beside ``output/``, never published)."""

    def __init__(self, directory: Path, *, keep: int = 2, every_steps: int = 0, every_s: float = 0.0) -> None:
        self.dir = Path(directory)
        self.keep = keep
        self.every_steps = int(every_steps)
        self.every_s = float(every_s)
        self._last_step = 0
        self._last_time = time.monotonic()

    def path(self, step: int) -> Path:
        """The one file name a checkpoint of ``step`` can have."""
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < _MAX_STEP:
            raise ValueError(f"checkpoint step must be an integer in 0..{_MAX_STEP - 1}, got {step!r:.40}")
        return self.dir / f"ckpt-{step:09d}.pt"

    def latest_step(self) -> int | None:
        pointer = self.dir / POINTER
        if not pointer.is_file():
            return None
        try:
            step = json.loads(pointer.read_text())["step"]
            self.path(step)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # an unreadable pointer: start afresh rather than load something else
        return int(step)

    def load(self) -> dict[str, Any] | None:
        """The latest checkpoint's state (tensors and plain data only), or None when there is none."""
        import torch

        step = self.latest_step()
        if step is None or not self.path(step).is_file():
            return None
        state = torch.load(self.path(step), map_location="cpu", weights_only=True)
        self._last_step = step
        return state if isinstance(state, dict) else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        import torch

        self.dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({**state, "step": step}, buf)
        path = self.path(step)
        write_atomic(path, buf.getvalue())
        write_atomic(self.dir / POINTER, json.dumps({"step": step}).encode())
        for old in sorted(self.dir.glob("ckpt-*.pt"))[: -self.keep]:
            old.unlink(missing_ok=True)
        self._last_step, self._last_time = step, time.monotonic()
        return path

    def due(self, step: int) -> bool:
        """Every ``every_steps`` steps or ``every_s`` seconds since the last checkpoint."""
        return ((self.every_steps > 0 and step - self._last_step >= self.every_steps)
                or (self.every_s > 0 and time.monotonic() - self._last_time >= self.every_s))

    def unsaved(self, step: int) -> bool:
        return step > self._last_step

    def save_if_due(self, step: int, state: Callable[[], dict[str, Any]]) -> Path | None:
        return self.save(step, state()) if self.due(step) else None
