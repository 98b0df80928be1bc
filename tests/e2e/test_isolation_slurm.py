"""Tenant isolation and allocations, enforced by Slurm itself (the real local cluster, tiny jobs).

Tenant A is ``demo``, tenant B is ``acme``; each command runs over SSH as the tenant's own Unix
user (its key, the pinned host key), exactly as that tenant's tasks do.

What Slurm does with a job past the budget (measured on Slurm 22.05 here, with
``AccountingStorageEnforce=associations,limits,safe`` and ``GrpTRESMins`` on the account): sbatch
ACCEPTS it (exit 0, a job id) and the job stays PENDING with reason ``AssocGrpCPUMinutesLimit``,
never starting (``safe``: a job starts only if its whole time limit fits in what remains). That
is why the train task checks the budget first and fails before any submission: otherwise a run
would wait forever.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from aifactory import layout
from aifactory.hpc.remote import q
from aifactory.hpc.slurm.budget import budget_command, parse_assoc_mgr
from aifactory.layout import PLATFORM_LOGIN
from aifactory.platform.onboard import Context
from aifactory.platform.slurm_accounts import SlurmAdmin, onboard_slurm
from aifactory.tenants import load_cluster, load_tenant

pytestmark = pytest.mark.e2e

A, B = "demo", "acme"


def _run(client, command: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run one command over a paramiko client: ``(exit status, stdout, stderr)``."""
    _, out, err = client.exec_command(command, timeout=timeout)
    rc = out.channel.recv_exit_status()
    return rc, out.read().decode(), err.read().decode()


def _wait(what: str, check, seconds: float = 60.0):
    """Poll ``check`` until it returns something truthy (a state to reach, not a duration to assert)."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {seconds:.0f} s")
        time.sleep(1)


def _sbatch(client, account: str, *extra: str) -> tuple[int, str, str]:
    """A tiny job of ``account`` (one CPU, 100 MB), its output thrown away."""
    args = " ".join(q(a) for a in (f"--account={account}", "--mem=100M", "-c1", "-o", "/dev/null", *extra))
    return _run(client, f"cd /tmp && sbatch --parsable {args} --wrap 'sleep 1'")


def _job_state(client, job_id: str) -> tuple[str, str]:
    """``(state, reason)`` of a job squeue still lists; ``("", "")`` once it left."""
    rc, out, _ = _run(client, f"squeue -h -j {q(job_id)} -o '%T|%r'")
    return tuple(out.strip().split("|", 1)) if rc == 0 and "|" in out else ("", "")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def tenants(stack_env, tenant_ssh):
    return {A: tenant_ssh(A), B: tenant_ssh(B)}


def test_sbatch_under_another_tenants_account_is_refused_by_slurm(tenants, service_ssh_client):
    name = f"aifp-isolation-{secrets.token_hex(4)}"
    rc, out, err = _sbatch(tenants[A], B, f"--job-name={name}")
    assert rc != 0 and "Invalid account" in err, (rc, out, err)
    # nor may the platform's service login run a tenant's job (it is an Operator in account platform only)
    rc, out, err = _sbatch(service_ssh_client, A, f"--job-name={name}")
    assert rc != 0 and "Invalid account" in err, (rc, out, err)
    rc, out, _ = _run(service_ssh_client, f"sacct -X -n -P --allusers --name={q(name)} -S now-1hours -o JobID")
    assert rc == 0 and out.strip() == "", out


def test_a_tenant_cannot_cancel_another_tenants_job(tenants, service_ssh_client):
    rc, out, err = _sbatch(tenants[B], B, "--hold", f"--job-name=aifp-isolation-{secrets.token_hex(4)}")
    assert rc == 0, err
    job_id = out.strip().split(";")[0]
    try:
        rc, out, err = _run(tenants[A], f"scancel {q(job_id)}")
        assert "Access/permission denied" in (err + out), (rc, out, err)
        assert _job_state(tenants[B], job_id)[0] == "PENDING"  # still there, held
    finally:
        # the platform's service login is an Operator: it cancels any job (the orphan sweep)
        rc, out, err = _run(service_ssh_client, f"scancel {q(job_id)}")
        assert rc == 0, (out, err)
    _wait(f"job {job_id} cancelled by the service login", lambda: _job_state(tenants[B], job_id)[0] in ("", "CANCELLED"))


@pytest.fixture()
def exhausted_b(stack_env):
    """Tenant B's allocation lowered to 2 CPU-minutes (GPU: 0); onboarding's own step restores it."""
    admin = SlurmAdmin()
    admin.set_grp_tres_mins("acme", {"cpu": 2, "gres/gpu": 0})
    _wait("the controller sees the lowered budget", lambda: "cpu=2(" in subprocess.run(
        ["bash", "-c", budget_command("acme")], capture_output=True, text=True, check=False).stdout, 30)
    try:
        yield
    finally:
        ctx = Context(secrets_dir=Path(stack_env.get("AIFP_SECRETS_DIR") or "/nonexistent"), env=dict(os.environ))
        changes = onboard_slurm(ctx, load_tenant(B), load_cluster(load_tenant(B).cluster))
        assert any("GrpTRESMins" in c.action for c in changes), changes


def test_train_task_fails_before_sbatch_when_the_allocation_is_exhausted(exhausted_b, tenants):
    from airflow.sdk.exceptions import AirflowFailException

    from operators.slurm import SlurmJobOperator

    spec = load_tenant(B)
    token = secrets.token_hex(4)
    ti = SimpleNamespace(dag_id=f"factory_{B}", run_id=f"manual__budget-{token}", task_id="train",
                         map_index=-1, try_number=1)
    op = SlurmJobOperator(
        task_id="train", tenant=B, recipe="tabular_classifier", deferrable=False,
        dataset_dir=layout.hpc_dataset_dir(spec.areas(load_cluster(spec.cluster)), "iris", f"budget-{token}"),
        hyperparameters={"label_column": "species", "feature_columns": ["sepal_length"]},
        slurm_resources={"nodes": 1, "cpus_per_task": 1, "time_limit_minutes": 5},
    )
    context = {"ti": ti, "task_state_store": None}
    plan = op.plan(context)
    with pytest.raises(AirflowFailException) as exc:
        op.execute(context)
    message = str(exc.value)
    for part in ("Not submitting", "account 'acme'", "of 2 min", "remaining ", "1 node(s) x 1 CPU(s) x 5 min",
                 "5 CPU-minutes", spec.allocation.contact):
        assert part in message, (part, message)
    assert re.search(r"CPU: used [0-9.]+ of 2 min", message), message
    # nothing reached Slurm or the run directory
    rc, out, _ = _run(tenants[B], f"sacct -X -n -P --name={q(plan.job_name)} -S now-1hours -o JobID")
    assert rc == 0 and out.strip() == "", out
    rc, out, _ = _run(tenants[B], f"test -e {q(plan.run_dir)} && echo exists || echo absent")
    assert out.strip() == "absent"


def test_slurm_holds_a_direct_submission_past_the_budget(exhausted_b, tenants):
    client = tenants[B]
    rc, out, err = _run(client, budget_command(B))
    budget = parse_assoc_mgr(out, B)
    assert budget.tres["cpu"].limit == 2
    # 5 CPU-minutes asked, 2 allowed: sbatch accepts it ...
    rc, out, err = _sbatch(client, B, "-t", "5", f"--job-name=aifp-budget-{secrets.token_hex(4)}")
    assert rc == 0, err
    job_id = out.strip().split(";")[0]
    try:
        # ... and Slurm keeps it pending on the account's CPU-minutes limit, never starting it
        state = _wait(f"job {job_id} held on the budget",
                      lambda: (s := _job_state(client, job_id))[1] == "AssocGrpCPUMinutesLimit" and s)
        assert state == ("PENDING", "AssocGrpCPUMinutesLimit")
        rc, out, _ = _run(client, f"scontrol -o show job {q(job_id)}")
        assert "JobState=PENDING" in out and "StartTime=Unknown" in out and "BatchHost=" not in out, out
    finally:
        _run(client, f"scancel {q(job_id)}")


def test_usage_report_shows_slurms_figures_to_the_platform_and_a_tenant_only_its_own(stack_env, api_as):
    import httpx

    url = f"{stack_env['AIFP_AIRFLOW_URL']}/aifactory/usage"
    assert httpx.get(url, timeout=60).status_code == 401

    def usage(login: str) -> dict[str, dict]:
        token = api_as(login).token()
        response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
        assert response.status_code == 200, response.text
        return {report["tenant"]: report for report in response.json()}

    mine = usage(A)
    assert set(mine) == {A}
    report = mine[A]
    spec = load_tenant(A)
    assert report["errors"] == [] and report["account"] == spec.slurm_account
    # the budget Slurm enforces is the spec's allocation, in minutes
    assert report["budget"]["cpu"]["limit_minutes"] == spec.allocation.cpu_hours * 60
    assert report["budget"]["cpu"]["remaining_minutes"] <= spec.allocation.cpu_hours * 60
    assert isinstance(report["runs"], list)
    assert all({"job_id", "cpu_minutes", "gpu_minutes", "elapsed_s"} <= set(r) for r in report["runs"])
    assert set(usage(PLATFORM_LOGIN)) >= {A, B}
