"""A Celery worker SIGKILLed while it runs the ingest task (the Celery phase of ``make test``).

The kill takes the worker's main process only, as the OOM killer would; its pool process and the
task under it are orphaned. The supervisor restarts the worker, ending those leftovers first, so
the task's try dies without a word: the scheduler fails it once its heartbeat is missing
(``[scheduler] task_instance_heartbeat_timeout``) and the retry ingests the same content, which
is content-addressed: one dataset version. The run ends with one Slurm job, one dataset version
and one model version (faults.assert_one_of_each) and ``stack.sh orphans`` finds nothing.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from faults import DAG_ID, assert_one_of_each, task_instances, trigger, wait_for

from aifactory.local.localstack import state_dir
from tests.integration.test_stack_orphans import live, pid_of, stack

pytestmark = pytest.mark.e2e
WORKERS = ("airflow-celery-worker-1", "airflow-celery-worker-2")


def worker_of(pid: int | None) -> str | None:
    """Which Celery worker component the task process ``pid`` belongs to (its cgroup, else its session)."""
    if not pid:
        return None
    try:
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        sid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None
    for name in WORKERS:
        if cgroup.rstrip().endswith(f"/{name}"):
            return name
        sid_file = state_dir() / "run" / f"{name}.sid"
        if sid_file.is_file() and int(sid_file.read_text().split()[0]) == sid:
            return name
    return None


def test_celery_worker_killed_mid_ingest(api, s3_client):
    run_id, key = trigger(api, s3_client, "celery-kill")
    ingest = wait_for(lambda: (t := task_instances(api, run_id).get("ingest", {})).get("state") == "running" and t,
                      240, f"ingest of {run_id} to run", interval=0.1)
    victim = worker_of(ingest.get("pid"))
    victims = [victim] if victim else list(WORKERS)  # the pid not known yet: every worker
    killed = {name: pid_of(name) for name in victims}
    for pid in killed.values():
        os.kill(pid, signal.SIGKILL)
    assert task_instances(api, run_id)["ingest"]["state"] == "running", "the kill came after ingest ended"

    for name, pid in killed.items():
        wait_for(lambda n=name, p=pid: pid_of(n) != p and live(pid_of(n)), 90, f"the supervisor to restart {name}")
    run = api.wait_for_run(DAG_ID, run_id, timeout=900)
    assert run["state"] == "success", run
    tis = task_instances(api, run_id)
    assert tis["ingest"]["try_number"] == 2, tis["ingest"]  # the killed try, then the retry
    assert_one_of_each(api, s3_client, run_id, key)
    said = (state_dir() / "log" / "supervisor.log").read_text(errors="replace")
    assert all(f"restarting {name}: dead (process {pid} is gone)" in said for name, pid in killed.items()), said[-3000:]
    left = stack("orphans")
    assert left.returncode == 0, left.stdout
