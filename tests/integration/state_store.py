"""A stand-in for Airflow's ``task_state_store`` for operator tests that run outside a worker.

The Slurm job is real; only the store in which the operator saves the job id is this dict.
"""

from __future__ import annotations

from typing import Any


class Store:
    """get/set of JSON values, like ``context["task_state_store"]``."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, **_: Any) -> None:
        self.data[key] = value
