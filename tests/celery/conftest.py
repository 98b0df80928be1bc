"""The Celery phase of ``make test`` (docs/operations.md): the same stack switched to the
CeleryExecutor (``make up EXECUTOR=celery``: Redis and two Celery workers), then back. Fixtures of
the end-to-end tests (``api``) and their fault helpers are shared."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parents[1] / "e2e"
sys.path.insert(0, str(E2E))  # faults.py, the fault suite's helpers
_spec = importlib.util.spec_from_file_location("e2e_conftest", E2E / "conftest.py")
_e2e = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_e2e)  # type: ignore[union-attr]
api = _e2e.api  # the end-to-end tests' fixture: the platform's REST client, the demo DAG unpaused


@pytest.fixture(scope="session", autouse=True)
def celery_stack(stack_env):
    from aifactory.local.localstack import state_dir

    executor = (state_dir() / "executor").read_text().strip()
    assert executor == "celery", (f"the stack runs the {executor} executor: this phase needs the Celery one "
                                  "(make up EXECUTOR=celery; make test switches to it and back)")
