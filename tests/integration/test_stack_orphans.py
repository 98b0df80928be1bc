"""The issue's case on the real stack: the scheduler is SIGKILLed (its process only, as a crash or
the OOM killer does) while its LocalExecutor workers and log server exist; they are reparented to
init, renamed ("airflow worker -- LocalExecutor: <idle>") and deaf to SIGTERM. ``stack.sh
orphans`` names them, and after ``stack.sh up`` (or the supervisor, whichever comes first: both
start the scheduler the same way, leftovers first) none of them is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from aifactory.local.localstack import state_dir

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STACK = ["bash", str(REPO / "include" / "stack" / "stack.sh")]


def pid_of(component: str) -> int:
    return int((state_dir() / "run" / f"{component}.pid").read_text())


def live(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> dict[int, str]:
    """The direct children of ``pid`` and their command lines (as they renamed themselves)."""
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(line.split(None, 1)[0]): line.split(None, 1)[1] for line in out.splitlines() if line.strip()}


def stack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STACK, *args], capture_output=True, text=True, timeout=600)


def test_a_sigkilled_schedulers_workers_are_named_then_ended_by_up(stack_env):
    if not (state_dir() / "run" / "airflow-scheduler.sid").is_file():
        assert stack("up").returncode == 0  # a scheduler from before sessions were recorded: adopted
    scheduler = pid_of("airflow-scheduler")
    workers = children(scheduler)
    assert sum("LocalExecutor" in c for c in workers.values()) >= 2, workers  # the pre-forked pool
    os.kill(scheduler, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while live(scheduler) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(live(p) for p in workers), "the workers died with the scheduler: nothing to test"
    found = stack("orphans")
    assert found.returncode == 1, found.stdout
    assert all(str(p) in found.stdout for p in workers), (workers, found.stdout)

    up = stack("up")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    left = {p: c for p, c in workers.items() if live(p)}
    assert not left, f"still running after up: {left}"
    assert pid_of("airflow-scheduler") != scheduler and live(pid_of("airflow-scheduler"))
    # who ended them says so: up's own output, or the supervisor's log if it came first
    said = up.stdout + (state_dir() / "log" / "supervisor.log").read_text(errors="replace")
    assert "airflow-scheduler died and left" in said, up.stdout[-2000:]
    assert stack("orphans").returncode == 0
