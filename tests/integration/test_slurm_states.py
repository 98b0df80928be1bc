"""Every way a job can end, on the REAL local Slurm over the real sshd, through the real operator.

The platform's probe recipe (``include/platform_recipes/probe``) ends as asked; the test acts on the job from
outside the way an admin or the cluster would (scancel, a node going down, scontrol requeue) and
checks what the Airflow task does and says. The operator runs with ``deferrable=False`` so that the
trigger's state machine runs in this process (the deferred path is the same code, covered by the
end-to-end tests through the triggerer).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from state_store import Store  # noqa: E402  (tests/integration is on sys.path under pytest)

from aifactory import layout
from aifactory.hpc.slurm import job_name
from tests.conftest import tenant_areas

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROBES = REPO / "include" / "platform_recipes"
#: the staged copy the probe jobs are told of (they read no dataset): in the demo tenant's scratch area
PROBE_DATASET = layout.hpc_dataset_dir(tenant_areas("demo"), "probe", "v1")
DAG = "itest_states"
#: the demo tenant's own SSH connection: its jobs are watched as its own login
TENANT_CONN = "aifactory_hpc_local_demo"


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=check).stdout


def squeue_by_name(name: str) -> list[tuple[str, str, str]]:
    out = sh("squeue", "-h", f"--name={name}", "-o", "%i|%T|%N", check=False)
    return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def sacct_by_name(name: str) -> list[tuple[str, str]]:
    out = sh("sacct", "-n", "-X", "-D", "--parsable2", "-S", "now-1days", f"--name={name}", "-o", "JobID,State")
    return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_running(name: str, timeout: float = 120) -> tuple[str, str]:
    def running() -> tuple[str, str] | None:
        for job_id, state, node in squeue_by_name(name):
            if state == "RUNNING":
                return job_id, node
        return None

    return wait_for(running, timeout, f"job {name} to run")


def probe(hp: dict[str, Any], resources: dict[str, Any] | None = None,
          action: Callable[[str], None] | None = None) -> tuple[str, Any, str]:
    """Run the probe recipe through SlurmJobOperator; ``action(job_name)`` acts from outside.

    Returns ``(outcome, result or message, job name)``.
    """
    from airflow.providers.common.compat.sdk import AirflowException

    from operators.slurm import SlurmJobOperator

    key = uuid.uuid4().hex[:10]
    op = SlurmJobOperator(
        task_id="train", tenant="demo", recipe="probe", recipes_root=PROBES,
        dataset_dir=PROBE_DATASET, hyperparameters=hp,
        slurm_resources=resources or {"cpus_per_task": 1, "mem_gb": 1, "time_limit_minutes": 5},
        deferrable=False, poll_interval=2,
    )
    ti = SimpleNamespace(dag_id=DAG, run_id=f"manual__{key}", task_id="train", map_index=-1, try_number=1)
    name = job_name("demo", DAG, ti.run_id, "train", -1)
    errors: list[BaseException] = []
    actor = None
    if action is not None:
        def act() -> None:
            try:
                action(name)
            except BaseException as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

        actor = threading.Thread(target=act, daemon=True)
        actor.start()
    try:
        outcome: tuple[str, Any, str] = ("succeeded", op.execute({"ti": ti, "task_state_store": Store()}), name)
    except AirflowException as exc:
        outcome = ("failed", str(exc), name)
    if actor is not None:
        actor.join(timeout=60)
    assert not errors, errors
    return outcome


@pytest.fixture(scope="module", autouse=True)
def _cluster(stack_env):
    yield
    # leave every node in service for the tests after these
    for node in ("n1", "n2"):
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)


def test_completed():
    outcome, result, name = probe({"mode": "ok"})
    assert outcome == "succeeded" and result["state"] == "COMPLETED" and result["exit_code"] == 0
    assert result["accounting"]["account"] == "demo" and result["accounting"]["elapsed_s"] is not None
    assert sacct_by_name(name) == [(result["job_id"], "COMPLETED")]


def test_failed_names_exit_code_and_shows_log_tail():
    outcome, message, _ = probe({"mode": "fail", "exit_code": 3})
    assert outcome == "failed"
    assert "exited with code 3" in message and "probe: failing on purpose" in message


def test_timeout():
    outcome, message, _ = probe({"mode": "sleep", "seconds": 300},
                                {"cpus_per_task": 1, "mem_gb": 1, "time_limit_minutes": 1})
    assert outcome == "failed"
    assert "hit its time limit of 1 min" in message and "time_limit_minutes" in message


def test_cancelled_from_outside():
    def cancel(name: str) -> None:
        job_id, _ = wait_running(name)
        sh("scancel", job_id)

    outcome, message, _ = probe({"mode": "sleep", "seconds": 300}, action=cancel)
    assert outcome == "failed"
    assert "was cancelled by uid 0" in message and "clear the task" in message


def test_out_of_memory():
    outcome, message, _ = probe({"mode": "oom", "seconds": 60})
    assert outcome == "failed"
    assert "ran out of memory (1 GB per node)" in message and "mem_gb" in message


def test_requeue_keeps_waiting_on_the_same_job():
    seen: list[str] = []

    def requeue(name: str) -> None:
        job_id, _ = wait_running(name)
        seen.append(job_id)
        sh("scontrol", "requeue", job_id)
        # a requeued job waits ~2 min (BeginTime) before it may start again; an admin may lift that
        wait_for(lambda: any(s == "PENDING" for _, s, _ in squeue_by_name(name)), 30, "the requeued job")
        sh("scontrol", "update", f"jobid={job_id}", "starttime=now")

    outcome, result, name = probe({"mode": "sleep_then_ok", "seconds": 120}, action=requeue)
    assert outcome == "succeeded" and result["job_id"] == seen[0]
    assert result["metrics"]["restart_count"] == 1
    states = [s for _, s in sacct_by_name(name)]
    assert states == ["REQUEUED", "COMPLETED"]  # one job id, two records (sacct -D)


def test_node_failure_requeues_and_the_same_job_completes():
    seen: list[str] = []

    def fail_node(name: str) -> None:
        job_id, node = wait_running(name)
        seen.append(job_id)
        # The node "fails": Slurm kills the job there and requeues it (JobRequeue=1). The node is
        # kept drained until the killed instance is gone, as a failed node would be, so the job
        # restarts on the other node instead of racing its own remains.
        sh("scontrol", "update", f"nodename={node}", "state=down", "reason=itest-node-failure")
        sh("scontrol", "update", f"nodename={node}", "state=drain", "reason=itest-node-failure", check=False)
        try:
            wait_for(lambda: any(s == "PENDING" for _, s, _ in squeue_by_name(name)), 60, "the requeued job")
            wait_for(lambda: f"[{job_id}." not in sh("ps", "-eo", "args", check=False), 60,
                     "the killed instance to exit")
            sh("scontrol", "update", f"jobid={job_id}", "starttime=now")
        finally:
            sh("scontrol", "update", f"nodename={node}", "state=resume", check=False)

    outcome, result, name = probe({"mode": "sleep_then_ok", "seconds": 120}, action=fail_node)
    assert outcome == "succeeded" and result["job_id"] == seen[0]
    assert [s for _, s in sacct_by_name(name)] == ["NODE_FAIL", "COMPLETED"]


def test_completion_is_found_through_sacct_once_squeue_forgot_the_job():
    """MinJobAge is small on the local stack: a finished job leaves squeue within seconds."""
    import asyncio

    from operators.triggers import SlurmJobTrigger

    min_job_age = int(sh("scontrol", "show", "config").split("MinJobAge", 1)[1].split("=", 1)[1].split()[0])
    assert min_job_age <= 10
    outcome, result, name = probe({"mode": "ok"})
    assert outcome == "succeeded"
    wait_for(lambda: not squeue_by_name(name) and not sh("squeue", "-h", "-j", result["job_id"], check=False).strip(),
             180, "squeue to forget the job")
    trigger = SlurmJobTrigger(ssh_conn_id=TENANT_CONN, job_id=result["job_id"], job_name=name,
                              log_path=result["log_path"], poll_interval=2, batched=False)

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("no event")

    event = asyncio.run(asyncio.wait_for(first(), timeout=120))
    assert event["status"] == "succeeded" and event["state"] == "COMPLETED"
    assert event["accounting"]["account"] == "demo"  # the record came from sacct


WORKER = textwrap.dedent(
    """
    import os, sys
    from types import SimpleNamespace
    from operators import hooks
    original = hooks.FactorySSHHook.run

    def run(self, command, timeout=60.0):
        out = original(self, command, timeout)
        if command.startswith("sbatch "):
            print("sbatch returned; the worker dies now", out, flush=True)
            os._exit(137)  # killed right after sbatch returned, before the job id was saved
        return out

    hooks.FactorySSHHook.run = run
    from operators.slurm import SlurmJobOperator
    op = SlurmJobOperator(task_id="train", tenant="demo", recipe="probe", recipes_root=sys.argv[1],
                          dataset_dir=sys.argv[3],
                          hyperparameters={"mode": "sleep", "seconds": 15}, deferrable=False, poll_interval=2)
    ti = SimpleNamespace(dag_id="itest_states", run_id=sys.argv[2], task_id="train", map_index=-1, try_number=1)
    op.execute({"ti": ti, "task_state_store": None})
    """
)


def test_worker_killed_right_after_sbatch_retry_reattaches(stack_env):
    from operators.slurm import SlurmJobOperator

    run_id = f"manual__{uuid.uuid4().hex[:10]}"
    name = job_name("demo", DAG, run_id, "train", -1)
    proc = subprocess.run([sys.executable, "-c", WORKER, str(PROBES), run_id, PROBE_DATASET], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=120)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert "sbatch returned" in proc.stdout
    # the retry, with no saved job id, finds the job by its deterministic name and re-attaches
    op = SlurmJobOperator(task_id="train", tenant="demo", recipe="probe", recipes_root=PROBES,
                          dataset_dir=PROBE_DATASET,
                          hyperparameters={"mode": "sleep", "seconds": 15}, deferrable=False, poll_interval=2)
    ti = SimpleNamespace(dag_id=DAG, run_id=run_id, task_id="train", map_index=-1, try_number=2)
    result = op.execute({"ti": ti, "task_state_store": Store()})
    assert result["state"] == "COMPLETED" and not result["adopted"]
    assert sacct_by_name(name) == [(result["job_id"], "COMPLETED")]  # exactly one job
