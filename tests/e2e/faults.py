"""Fault helpers of the end-to-end fault suite (``docs/fault-suite.md``).

Every scenario is one run of the demo pipeline triggered over REST, a real fault outside the code
under test, and the same closing checks: one Slurm job (``sacct`` by the job's deterministic name),
one dataset version and one model version (S3 listings). Components are stopped through the pid
files of the local stack (``.stack/run/<component>.pid``) and always brought back by
``include/stack/stack.sh up`` (:func:`component_down`); nothing here sleeps where a condition can
be polled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from aifactory import layout
from aifactory.hpc.slurm import job_name
from aifactory.local.airflow_api import AirflowClient
from aifactory.local.localstack import state_dir
from aifactory.tenants import load_cluster, load_tenant

REPO = Path(__file__).resolve().parents[2]
STACK = ["bash", str(REPO / "include" / "stack" / "stack.sh")]
DAG_ID = "factory_demo"
SPEC = load_tenant("demo")
RECIPE = "tabular_classifier"
IRIS = REPO / "include" / "sample_data" / "iris.csv"
#: the smallest training the recipe accepts for iris: one epoch of two steps
SMALL_HP = {**SPEC.defaults["hyperparameters"], "epochs": 1}
#: task states after which a task does not move without a clear
ENDED = frozenset({"success", "failed", "upstream_failed", "skipped"})
#: the pipeline's tasks in order (dags/factory_pipelines.py); a clear takes a task and those after it
TASKS = ("validate", "ingest", "quality", "stage", "train", "export")

T = TypeVar("T")


# -- waiting ------------------------------------------------------------------------------------

def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``predicate`` until it returns something true; that value. AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def task_instances(api: AirflowClient, run_id: str) -> dict[str, dict[str, Any]]:
    return {t["task_id"]: t for t in api.task_instances(DAG_ID, run_id)}


def wait_task(api: AirflowClient, run_id: str, task: str, states: set[str] | frozenset[str],
              timeout: float = 240) -> dict[str, Any]:
    """Wait until ``task`` of the run is in one of ``states``; its task instance. A task that ends
    in another state fails the wait at once, with every task's state."""
    def reached() -> dict[str, Any] | None:
        tis = task_instances(api, run_id)
        ti = tis.get(task) or {}
        if ti.get("state") in states:
            return ti
        if ti.get("state") in ENDED or any(t.get("state") in ("failed", "upstream_failed") and name != task
                                           for name, t in tis.items()):
            raise AssertionError(f"{task} of {run_id} did not reach {sorted(states)}: "
                                 f"{ {n: t.get('state') for n, t in tis.items()} }")
        return None

    return wait_for(reached, timeout, f"{task} of {run_id} to be {sorted(states)}", interval=1)


def wait_failed(api: AirflowClient, run_id: str, task: str, timeout: float = 240) -> str:
    """Wait until the run has failed at ``task``; the log of the task's last try (its message)."""
    ti = wait_task(api, run_id, task, {"failed"}, timeout)
    run = wait_for(lambda: (r := api.run(DAG_ID, run_id))["state"] in ("failed", "success") and r, 60,
                   f"run {run_id} to end")
    assert run["state"] == "failed", run
    return api.task_log(DAG_ID, run_id, task, int(ti["try_number"]))


def clear_from(operator: AirflowClient, run_id: str, task: str) -> None:
    """What the ``operator`` login does in the UI: clear the failed task and every task after it
    (the run then resumes from there)."""
    cleared = operator.clear_tasks(DAG_ID, run_id, list(TASKS[TASKS.index(task):]))
    assert task in {t["task_id"] for t in cleared}, cleared


# -- the stack's components ------------------------------------------------------------------------

def pid_of(component: str) -> int:
    return int((state_dir() / "run" / f"{component}.pid").read_text())


def stack_up() -> None:
    """``stack.sh up``: start whatever is not running (idempotent)."""
    proc = subprocess.run([*STACK, "up"], capture_output=True, text=True)
    assert proc.returncode == 0, f"stack.sh up failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"


def assert_no_orphans() -> None:
    """``stack.sh orphans``: no component left processes behind that ``stack.sh down`` would not see
    (the check after every scenario that stopped something)."""
    proc = subprocess.run([*STACK, "orphans"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def stop(component: str, sig: int = signal.SIGTERM) -> int:
    """Stop one component by its pid file and wait until that process is gone; its pid."""
    pid = pid_of(component)
    os.kill(pid, sig)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie is gone for every purpose here
        stat = Path(f"/proc/{pid}/stat")
        return not stat.exists() or stat.read_text().split()[2] == "Z"

    wait_for(gone, 30, f"{component} (pid {pid}) to exit", interval=0.1)
    return pid


@contextmanager
def component_down(component: str, sig: int = signal.SIGTERM) -> Iterator[int]:
    """``component`` stopped inside the block, always brought back by ``stack.sh up`` after it."""
    pid = stop(component, sig)
    try:
        yield pid
    finally:
        stack_up()
    assert_no_orphans()


def ssh_sessions(spare_pid: int, port_env: str = "AIFP_SSH_PORT") -> list[int]:
    """pids of the cluster's sshd processes (the one on ``$port_env``) that serve a connection, except
    those serving ``spare_pid``'s own (this test process's session-scoped logins, which later tests
    reuse)."""
    import psutil

    port = int(os.environ[port_env])
    conns = [c for c in psutil.net_connections("tcp") if c.raddr and c.pid]
    client_of = {c.laddr.port: c.pid for c in conns if c.raddr.port == port}
    return sorted({c.pid for c in conns if c.laddr.port == port and client_of.get(c.raddr.port) != spare_pid})


@contextmanager
def sshd_down(component: str = "sshd", port_env: str = "AIFP_SSH_PORT") -> Iterator[list[int]]:
    """One of the cluster's sshds (the login node's, or ``sshd-dtn`` with ``AIFP_DTN_PORT``: the
    data-transfer node's, where staging runs) gone inside the block, with every connection it served
    (SIGKILL, as a crash or ``systemctl restart`` with KillMode=control-group) but this process's own;
    back by ``stack.sh up`` after it. The pids of the sessions ended."""
    sessions = ssh_sessions(os.getpid(), port_env)
    stop(component)
    for pid in sessions:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        yield sessions
    finally:
        stack_up()
    assert_no_orphans()


# -- the run and what it leaves ---------------------------------------------------------------

def trigger(api: AirflowClient, s3: Any, tag: str, *, upload: bool = True, **conf: Any) -> tuple[str, str]:
    """Trigger the demo pipeline on a fresh copy of iris (its own dataset name, so its own dataset
    versions, staged copy and model); ``(run id, raw key)``. ``upload=False`` leaves the object out."""
    key = f"{SPEC.tenant}/raw/fault/{tag}-{time.time_ns()}.csv"
    if upload:
        upload_raw(s3, key)
    full = {**SPEC.defaults, "dataset_uri": layout.s3_uri(SPEC.bucket, key), "hyperparameters": SMALL_HP,
            "time_limit_minutes": 5, **conf}
    return api.trigger(DAG_ID, full)["dag_run_id"], key


def upload_raw(s3: Any, key: str) -> None:
    s3.put_object(Bucket=SPEC.bucket, Key=key, Body=IRIS.read_bytes())


def train_job_name(run_id: str) -> str:
    return job_name(SPEC.tenant, DAG_ID, run_id, "train", -1)


def slurm_jobs(name: str, *, records: bool = False) -> list[tuple[str, str]]:
    """``(job id, state)`` of every job of that name (``records``: every record, requeues included)."""
    argv = ["sacct", "-n", "-X", "--parsable2", "-S", "now-1days", f"--name={name}", "-o", "JobID,State"]
    out = subprocess.run([*argv, "-D"] if records else argv, capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")[:2]) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def versions(s3: Any, prefix: str) -> dict[str, set[str]]:
    """Version folder -> the keys in it (relative), under ``prefix`` (a dataset's or a model's folder)."""
    out: dict[str, set[str]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=SPEC.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            version, _, rest = obj["Key"][len(prefix):].partition("/")
            out.setdefault(version, set()).add(rest)
    return out


def dataset_name(raw_key: str) -> str:
    from aifactory.data.ingest.formats import derive_dataset_name

    return derive_dataset_name(raw_key)


def model_name(raw_key: str) -> str:
    return f"{dataset_name(raw_key)}-{RECIPE}".replace("_", "-")  # as ExportModelOperator names it


def assert_one_of_each(api: AirflowClient, s3: Any, run_id: str, raw_key: str, *, datasets: bool = True) -> dict[str, Any]:
    """The closing check of every scenario: the run succeeded with exactly one Slurm job, one
    dataset version (``datasets=False`` where the scenario emptied the in-memory S3 endpoint) and
    one published model version, complete (manifest last, every file it lists present); the
    export's result."""
    run = api.run(DAG_ID, run_id)
    assert run["state"] == "success", run
    jobs = slurm_jobs(train_job_name(run_id))
    assert len(jobs) == 1 and jobs[0][1] == "COMPLETED", jobs
    if datasets:
        found = versions(s3, layout.datasets_prefix(SPEC.tenant) + dataset_name(raw_key) + "/")
        assert len(found) == 1, sorted(found)
    models = versions(s3, layout.models_prefix(SPEC.tenant) + model_name(raw_key) + "/")
    assert len(models) == 1, sorted(models)
    (version, files), = models.items()
    manifest = json.loads(s3.get_object(Bucket=SPEC.bucket, Key=layout.model_prefix(
        SPEC.tenant, model_name(raw_key), version) + layout.MANIFEST_NAME)["Body"].read())
    assert {f["path"] for f in manifest["files"]} | {layout.MANIFEST_NAME} == files, (manifest, files)
    assert manifest["slurm"]["job_ids"] == [jobs[0][0]], manifest["slurm"]
    export = api.xcom(DAG_ID, run_id, "export")
    assert export["version"] == version, export
    return export


def run_path(name: str, *parts: str) -> Path:
    """A path in the run directory ``name`` of the demo tenant (its project area on the local cluster)."""
    return Path(layout.run_dir(SPEC.areas(load_cluster(SPEC.cluster)), name), *parts)


def dataset_path(name: str, *parts: str) -> Path:
    """A path in the staged copies of the dataset ``name`` of the demo tenant (its scratch area)."""
    return Path(layout.hpc_datasets_dir(SPEC.areas(load_cluster(SPEC.cluster))), name, *parts)


def slow_steps(name: str, seconds: float) -> None:
    """The platform's test-only switch: the job of ``name`` pauses ``seconds`` after each step
    (written before the job starts; the job runs as the tenant, which owns the area)."""
    switch = Path(layout.slow_steps_switch_path(str(run_path(name))))
    switch.parent.mkdir(mode=0o700, exist_ok=True)
    switch.write_text(f"{seconds}\n")
    owner = run_path(name).parent.stat()
    for path in (switch.parent, switch):
        os.chown(path, owner.st_uid, owner.st_gid)


def job_log(name: str, job_id: str) -> str:
    path = Path(layout.job_log_path(str(run_path(name)), job_id))
    return path.read_text(errors="replace") if path.is_file() else ""


def allocation() -> str:
    """The demo account's GrpTRESMins as sacctmgr shows it (``cpu=30000``)."""
    out = subprocess.run(["sacctmgr", "-n", "-P", "show", "assoc", f"account={SPEC.slurm_account}", "user=",
                          "format=GrpTRESMins"], capture_output=True, text=True, check=True).stdout.split()
    assert out and out[0], "the demo account has no GrpTRESMins (run make onboard)"
    return out[0]


def set_allocation(tres: str) -> None:
    subprocess.run(["sacctmgr", "-i", "modify", "account", SPEC.slurm_account, "set", f"GrpTRESMins={tres}"],
                   capture_output=True, text=True, check=True)
