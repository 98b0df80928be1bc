"""The Slurm engine under trouble, through the real scheduler and triggerer of the local stack.

Each test starts a demo run whose training job lasts about a minute (the platform's test-only
``layout.slow_steps_switch_path``), waits until the train task is deferred and its job runs, then
breaks something: the triggerer, the Slurm controller, or a user marks the task failed. Every check reads Slurm's own accounting.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import faults
import pytest

from aifactory import layout
from aifactory.hpc.slurm import job_name
from aifactory.local.airflow_api import AirflowClient
from aifactory.tenants import load_tenant

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "factory_demo"
SPEC = load_tenant("demo")
STACK = ["bash", str(REPO / "include" / "stack" / "stack.sh")]



def start_long_run(api: AirflowClient, s3) -> tuple[str, str]:
    """Trigger a run whose job trains for about a minute; return (run id, job name) once it runs."""
    key = f"demo/raw/e2e/resilience-{time.time_ns()}.csv"
    s3.put_object(Bucket=SPEC.bucket, Key=key, Body=(REPO / "include/sample_data/iris.csv").read_bytes())
    hp = {**SPEC.defaults["hyperparameters"], "epochs": 30}
    conf = {**SPEC.defaults, "dataset_uri": f"s3://{SPEC.bucket}/{key}", "hyperparameters": hp,
            "time_limit_minutes": 15}
    run_id = api.trigger(DAG_ID, conf)["dag_run_id"]
    name = job_name(SPEC.tenant, DAG_ID, run_id, "train", -1)
    faults.slow_steps(name, 1.0)  # before the job starts: validate, ingest, quality and stage come first
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


def test_triggerer_killed_mid_job_and_restarted(api, s3_client):
    run_id, name = start_long_run(api, s3_client)
    os.killpg(faults.pid_of("airflow-triggerer"), signal.SIGKILL)  # a crash: no cleanup runs at all
    time.sleep(3)
    subprocess.run([*STACK, "up"], check=True, capture_output=True)  # a new triggerer process
    run = api.wait_for_run(DAG_ID, run_id, timeout=600)
    assert run["state"] == "success"
    jobs = faults.slurm_jobs(name)
    assert len(jobs) == 1 and jobs[0][1] == "COMPLETED"  # same job, never cancelled, never resubmitted


def _steps_after(log: str, line: str) -> list[int]:
    """The step numbers the job logged after ``line`` (``step=<n>/<total>`` lines)."""
    return [int(m.group(1)) for m in re.finditer(r"^step=(\d+)/", log.split(line, 1)[1], re.M)]


def test_node_down_then_controller_down_for_a_minute_mid_job(api, s3_client):
    """One job lives through both (``docs/fault-suite.md``): its compute node is set DOWN after a
    checkpoint (Slurm requeues it, JobRequeue=1; it restarts on the other node and resumes from that
    checkpoint, not from step 0), then slurmctld is stopped for 60 s while it trains on. The run
    succeeds with one job id, one dataset version and one model version."""
    # iris: 120 training rows, 8 steps an epoch at batch 16; 25 epochs = 200 steps, paused 0.5 s each
    hp = {**SPEC.defaults["hyperparameters"], "epochs": 25, "batch_size": 16, "log_every_steps": 1,
          "checkpoint_every_steps": 10}
    run_id, key = faults.trigger(api, s3_client, "slurm", hyperparameters=hp, time_limit_minutes=15)
    name = faults.train_job_name(run_id)
    faults.slow_steps(name, 0.5)  # before the job starts: validate, ingest, quality and stage come first
    job_id, node = faults.wait_for(lambda: next((tuple(line.split("|")) for line in subprocess.run(
        ["squeue", "-h", f"--name={name}", "-t", "RUNNING", "-o", "%i|%N"], capture_output=True,
        text=True).stdout.split()), None), 300, f"job {name} to run")
    faults.wait_for(lambda: "checkpoint: step=10 reason=periodic" in faults.job_log(name, job_id), 120,
                    "the job's first checkpoint")

    # -- the node fails: Slurm kills the job there and requeues it. The node stays drained until the
    # killed instance is gone, as a failed node would, so the job restarts on the other node.
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=fault-suite"], check=True)
    try:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=fault-suite"],
                       capture_output=True)
        faults.wait_for(lambda: "PENDING" in subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"],
                                                            capture_output=True, text=True).stdout,
                        60, "the requeued job")
        faults.wait_for(lambda: f"[{job_id}." not in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                                                      text=True).stdout,
                        60, "the killed instance to exit")
        # Slurm holds a requeued job back (BeginTime) for two minutes; an admin lifts that
        subprocess.run(["scontrol", "update", f"jobid={job_id}", "starttime=now"], check=True)
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
    resumed = faults.wait_for(lambda: re.search(r"^resume: from checkpoint step=(\d+)", faults.job_log(name, job_id),
                                                re.M), 180, "the job to resume from its checkpoint")

    # -- the controller is away for a minute while the resumed job trains
    with faults.component_down("slurmctld"):
        time.sleep(60)  # the figure; nothing to poll: the outage itself is the test
        assert subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout.count("DOWN") >= 1
    run = api.wait_for_run(DAG_ID, run_id, timeout=600)
    assert run["state"] == "success", run
    export = faults.assert_one_of_each(api, s3_client, run_id, key)

    records = [state for _, state in faults.slurm_jobs(name, records=True)]
    assert records == ["NODE_FAIL", "COMPLETED"], records  # one job id, requeued once
    log = faults.job_log(name, job_id)
    checkpoint = int(resumed.group(1))
    before = log.split(resumed.group(0), 1)[0]
    trained_before = [int(n) for n in re.findall(r"^step=(\d+)/", before, re.M)]
    # The checkpoint it resumed from: the last periodic one, or the one Slurm's SIGTERM let it
    # write at the next step. That one's log line may be lost: srun's output path ends with the
    # node ("srun: error: Node failure on n1" comes first; measured).
    assert "Node failure" in before and 10 <= checkpoint <= max(trained_before), log[-3000:]
    assert f"checkpoint: step={checkpoint} reason=" in before or checkpoint == max(trained_before), log[-3000:]
    total = int(re.search(r"^step=\d+/(\d+)", log, re.M).group(1))
    # every step after the checkpoint once, none before it again: resumed, not from step 0
    assert _steps_after(log, resumed.group(0)) == list(range(checkpoint + 1, total + 1)), log[-3000:]
    assert "Slurm job" in api.task_log(DAG_ID, run_id, "train")
    assert export["published"] is True


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
        jobs = faults.slurm_jobs(name)
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
