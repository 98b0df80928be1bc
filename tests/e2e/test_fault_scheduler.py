"""The scheduler SIGKILLed mid-run (docs/operations.md): nobody runs ``stack.sh up``; the stack's
supervisor sees the process gone, ends what it left (its LocalExecutor workers and log server,
renamed and reparented to init) and starts a new scheduler, which carries the run on.

The kill comes while the train task is deferred and its Slurm job runs: the job finishes without
the scheduler, the trigger (triggerer) fires, and the new scheduler resumes the task. The run ends
with one Slurm job, one dataset version and one model version (faults.assert_one_of_each), and
``stack.sh orphans`` finds nothing left.
"""

from __future__ import annotations

import os
import signal

import pytest
from faults import DAG_ID, assert_one_of_each, slow_steps, train_job_name, trigger, wait_for, wait_task

from aifactory.local.localstack import state_dir
from tests.integration.test_stack_orphans import children, live, pid_of, stack

pytestmark = pytest.mark.e2e


def current_scheduler(old: int) -> int | None:
    try:
        pid = pid_of("airflow-scheduler")
    except (OSError, ValueError):
        return None
    return pid if pid != old and live(pid) else None


def test_scheduler_sigkilled_mid_run_is_restarted_by_the_supervisor(api, s3_client):
    supervisor_log = state_dir() / "log" / "supervisor.log"
    assert live(pid_of("supervisor")), "no supervisor running: stack.sh up starts it"
    run_id, key = trigger(api, s3_client, "scheduler")
    name = train_job_name(run_id)
    slow_steps(name, 1.0)  # the job runs a few seconds longer: the kill comes while it runs
    wait_task(api, run_id, "train", {"deferred"}, timeout=300)

    scheduler = pid_of("airflow-scheduler")
    workers = children(scheduler)
    assert any("LocalExecutor" in c for c in workers.values()), workers
    seen = supervisor_log.stat().st_size
    os.kill(scheduler, signal.SIGKILL)  # the process only, as a crash: its children live on

    wait_for(lambda: current_scheduler(scheduler), 90, "the supervisor to start a new scheduler")
    wait_for(lambda: not any(live(p) for p in workers), 60, f"the killed scheduler's processes {workers} to end")
    with supervisor_log.open(errors="replace") as f:
        f.seek(seen)
        said = f.read()
    assert f"restarting airflow-scheduler: dead (process {scheduler} is gone)" in said, said
    assert "airflow-scheduler died and left" in said, said

    run = api.wait_for_run(DAG_ID, run_id, timeout=600)
    assert run["state"] == "success", run
    assert_one_of_each(api, s3_client, run_id, key)
    left = stack("orphans")
    assert left.returncode == 0, left.stdout
