"""The Slurm engine under trouble, through the real scheduler and triggerer of the local stack.

Each test starts a demo run whose training job lasts about a minute (the platform's test-only
``layout.slow_steps_switch_path``), waits until the train task is deferred and its job runs, then
breaks something: the triggerer, the Slurm controller, or a user marks the task failed. Every check reads Slurm's own accounting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.hpc.slurm import job_name
from aifactory.local.airflow_api import AirflowClient
from aifactory.local.localstack import state_dir
from aifactory.tenants import load_tenant

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "factory_demo"
SPEC = load_tenant("demo")
STACK = ["bash", str(REPO / "include" / "stack" / "stack.sh")]



def sacct(name: str) -> list[tuple[str, str]]:
    out = subprocess.run(["sacct", "-n", "-X", "--parsable2", "-S", "now-1days", f"--name={name}", "-o",
                          "JobID,State"], capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def slow_steps(name: str, seconds: float) -> None:
    """The platform's test-only switch: the job of ``name`` pauses ``seconds`` after each step."""
    runs = Path(os.environ["AIFP_HPC_ROOT"]) / SPEC.tenant / "runs"
    switch = Path(layout.slow_steps_switch_path(str(runs / name)))
    switch.parent.mkdir(mode=0o700, exist_ok=True)
    switch.write_text(f"{seconds}\n")
    owner = runs.stat()
    for path in (switch.parent, switch):  # the job runs as the service account, which owns the area
        os.chown(path, owner.st_uid, owner.st_gid)


def start_long_run(api: AirflowClient, s3) -> tuple[str, str]:
    """Trigger a run whose job trains for about a minute; return (run id, job name) once it runs."""
    key = f"demo/raw/e2e/resilience-{time.time_ns()}.csv"
    s3.put_object(Bucket=SPEC.bucket, Key=key, Body=(REPO / "include/sample_data/iris.csv").read_bytes())
    hp = {**SPEC.defaults["hyperparameters"], "epochs": 30}
    conf = {**SPEC.defaults, "dataset_uri": f"s3://{SPEC.bucket}/{key}", "hyperparameters": hp,
            "time_limit_minutes": 15}
    run_id = api.trigger(DAG_ID, conf)["dag_run_id"]
    name = job_name(SPEC.tenant, DAG_ID, run_id, "train", -1)
    slow_steps(name, 1.0)  # before the job starts: validate, ingest, quality and stage come first
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        states = {t["task_id"]: t["state"] for t in api.task_instances(DAG_ID, run_id)}
        assert "failed" not in states.values(), states
        running = subprocess.run(["squeue", "-h", f"--name={name}", "-t", "RUNNING", "-o", "%i"],
                                 capture_output=True, text=True).stdout.strip()
        if states.get("train") == "deferred" and running:
            return run_id, name
        time.sleep(2)
    raise AssertionError(f"run {run_id} never reached a deferred train task with a running job")


def pid_of(component: str) -> int:
    return int((state_dir() / "run" / f"{component}.pid").read_text())


def test_triggerer_killed_mid_job_and_restarted(api, s3_client):
    run_id, name = start_long_run(api, s3_client)
    os.killpg(pid_of("airflow-triggerer"), signal.SIGKILL)  # a crash: no cleanup runs at all
    time.sleep(3)
    subprocess.run([*STACK, "up"], check=True, capture_output=True)  # a new triggerer process
    run = api.wait_for_run(DAG_ID, run_id, timeout=600)
    assert run["state"] == "success"
    jobs = sacct(name)
    assert len(jobs) == 1 and jobs[0][1] == "COMPLETED"  # same job, never cancelled, never resubmitted


def wait_training_started(name: str) -> None:
    """Wait until the job's training step runs (its first rank line is in the job log).

    The batch script starts the step with ``srun``, which needs the controller: stopped before
    that, the step cannot start at all (a job-start outage, not the mid-job one tested here)."""
    job = subprocess.run(["squeue", "-h", f"--name={name}", "-o", "%i"], capture_output=True, text=True).stdout.strip()
    log = Path(os.environ["AIFP_HPC_ROOT"]) / SPEC.tenant / "runs" / name / f"slurm-{job}.out"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if log.is_file() and "rank=0/" in log.read_text(errors="replace"):
            return
        time.sleep(1)
    raise AssertionError(f"job {job} never started training ({log})")


def test_slurm_controller_down_for_a_minute_mid_job(api, s3_client):
    run_id, name = start_long_run(api, s3_client)
    wait_training_started(name)
    os.kill(pid_of("slurmctld"), signal.SIGTERM)
    try:
        time.sleep(60)
        assert subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout.count("DOWN") >= 1
    finally:
        subprocess.run([*STACK, "up"], check=True, capture_output=True)
    run = api.wait_for_run(DAG_ID, run_id, timeout=600)
    assert run["state"] == "success"
    jobs = sacct(name)
    assert len(jobs) == 1 and jobs[0][1] == "COMPLETED"
    log = api.task_log(DAG_ID, run_id, "train")
    assert "Slurm job" in log


def wait_watched(api: AirflowClient, run_id: str, name: str) -> None:
    """Wait until the triggerer runs the train task's trigger (its first poll is in the task log).

    A user action reaches a trigger only once the triggerer has picked it up (every few seconds);
    before that there is nothing to call ``on_kill`` on; the orphan sweep covers that window
    (test_sweep_cancels_jobs_of_ended_tasks_only)."""
    job = subprocess.run(["squeue", "-h", f"--name={name}", "-o", "%i"], capture_output=True, text=True).stdout.strip()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if f"Slurm job {job} is running" in api.task_log(DAG_ID, run_id, "train"):
            return
        time.sleep(2)
    raise AssertionError(f"the trigger of run {run_id} never reported job {job} running")


def test_marking_the_deferred_task_failed_cancels_the_job(api, s3_client):
    run_id, name = start_long_run(api, s3_client)
    wait_watched(api, run_id, name)
    api.set_task_state(DAG_ID, run_id, "train", "failed")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = sacct(name)
        if jobs and jobs[0][1].startswith("CANCELLED"):
            break
        time.sleep(2)
    assert len(jobs) == 1 and jobs[0][1].startswith("CANCELLED"), jobs
    assert api.wait_for_run(DAG_ID, run_id, timeout=120)["state"] == "failed"


def test_sweep_cancels_jobs_of_ended_tasks_only(api, s3_client, ssh_client):
    """The orphan sweep (platform_slurm_sweep_local): a job left behind by a task that has ended is
    cancelled; a job of a run this Airflow does not know is not."""
    import secrets

    from aifactory.hpc.remote import ParamikoShell, q
    from aifactory.hpc.slurm import job_comment

    conf = {**SPEC.defaults, "dataset_uri": f"s3://{SPEC.bucket}/demo/raw/e2e/absent-{secrets.token_hex(3)}.csv"}
    run_id = api.trigger(DAG_ID, conf)["dag_run_id"]
    assert api.wait_for_run(DAG_ID, run_id, timeout=300)["state"] == "failed"  # train: upstream_failed
    shell = ParamikoShell(ssh_client)

    def sbatch(run: str) -> str:
        name, comment = job_name(SPEC.tenant, DAG_ID, run, "train", -1), job_comment(SPEC.tenant, DAG_ID, run, "train")
        rc, out, err = shell.run(q("sbatch", "--parsable", f"--job-name={name}", f"--comment={comment}",
                                   f"--account={SPEC.slurm_account}", "--time=10", "--output=/dev/null",
                                   "--wrap=sleep 300"))
        assert rc == 0, err
        return out.strip().split(";")[0]

    orphan, stranger = sbatch(run_id), sbatch(f"manual__unknown-{secrets.token_hex(3)}")
    try:
        sweep = layout.sweep_dag_id("local")
        api.wait_for_dag(sweep)
        api.unpause(sweep)
        try:
            sweep_run = api.trigger(sweep, {})["dag_run_id"]
            assert api.wait_for_run(sweep, sweep_run, timeout=300)["state"] == "success"
        finally:
            api.pause(sweep)
        states = {}
        for _ in range(15):
            out = subprocess.run(["sacct", "-n", "-X", "--parsable2", "-j", f"{orphan},{stranger}", "-o", "JobID,State"],
                                 capture_output=True, text=True).stdout
            states = dict(line.split("|")[:2] for line in out.splitlines() if line.strip())
            if states.get(orphan, "").startswith("CANCELLED"):
                break
            time.sleep(2)
        assert states[orphan].startswith("CANCELLED"), states
        assert states[stranger] in ("PENDING", "RUNNING"), states
        # (unpausing also starts the schedule's own run, which may have cancelled the orphan first)
        assert stranger not in api.xcom(sweep, sweep_run, "sweep")["cancelled"]
    finally:
        shell.run(q("scancel", orphan, stranger))
