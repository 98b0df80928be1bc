"""Short-lived SSH certificates under a long job, through the scheduler, the triggerer and the bastion.

The local CA (``aifactory.local.ssh_ca``) is told to sign three-minute certificates, and a probe job
of the demo tenant runs six minutes. The tenant's certificate must be renewed while the triggerer
watches (the task's log says so); then the CA goes offline, the certificate expires, the bastion
drops the watch's connection, and the watch must wait and say why, not fail the job; once the CA
is back, the run succeeds. Nothing is faked: real ssh-keygen certificates, the real bastion sshd
(certificate logins only), real Slurm.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.hpc.certificates import certificate_file, read_certificate
from aifactory.hpc.slurm import job_name
from aifactory.local.airflow_api import AirflowAPIError
from aifactory.local.localstack import tenant_login

pytestmark = pytest.mark.e2e

TENANT = "demo"
JOB_SECONDS = 360       # the acceptance: a job of six minutes ...
VALIDITY = "+3m"        # ... under certificates of three
RENEWED = "SSH certificate renewed for aifp-demo"
WAITING = "keeps running; its watch cannot log in yet"


def _wait(what: str, predicate, timeout: float, every: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _renewals(text: str) -> list[str]:
    """The log's renewals of an existing certificate (not the first signing at submit time)."""
    return [line for line in text.splitlines() if RENEWED in line and ": certificate " in line]


def _drop_bastion_sessions(stack_env: dict[str, str], user: str) -> int:
    """End the bastion's connections of ``user`` (what a gateway restart or a network cut does)."""
    master = int((Path(stack_env["AIFP_STATE_DIR"]) / "run" / "sshd-bastion.pid").read_text())
    kids = subprocess.run(["pgrep", "-P", str(master), "-f", f"sshd: {user}"], capture_output=True,
                          text=True).stdout.split()
    for pid in kids:
        os.kill(int(pid), signal.SIGTERM)
    return len(kids)


def test_a_six_minute_job_outlives_three_minute_certificates_and_a_ca_outage(api, stack_env, ssh_client):
    ca_dir = Path(stack_env["AIFP_SSH_CA_DIR"])
    user, key = tenant_login(stack_env, TENANT)
    cert = certificate_file(key)
    dag_id = layout.probe_dag_id(TENANT)
    run_id = f"manual__itest-certs-{secrets.token_hex(4)}"

    def log() -> str:
        try:
            return api.task_log(dag_id, run_id, "probe", map_index=0)
        except AirflowAPIError as exc:
            if exc.status == 404:  # the mapped task is not expanded yet
                return ""
            raise

    try:
        (ca_dir / "validity").write_text(VALIDITY + "\n")
        cert.unlink(missing_ok=True)  # the next login of the tenant gets a three-minute certificate
        api.wait_for_dag(dag_id)
        api.unpause(dag_id)
        api.trigger(dag_id, {"jobs": 1, "seconds": JOB_SECONDS}, run_id=run_id)

        # 1. renewed while the triggerer watches the running job, and the task's log says so
        _wait("the renewal in the task's log", lambda: _renewals(log()), timeout=300, every=10)
        first = read_certificate(cert)
        assert first is not None and first.principals == (user,) and first.validity_s <= 5 * 60
        name = job_name(TENANT, dag_id, run_id, "probe", 0)

        # 2. the CA goes offline; the certificate expires; the bastion drops the watch's connection
        (ca_dir / "offline").touch()
        time.sleep(max(first.valid_before - time.time() + 2, 0))
        assert read_certificate(cert).remaining_s(time.time()) < 0  # expired, not renewed
        _, out, _ = ssh_client.exec_command(f"squeue -h -n {name} -o %T")
        assert out.read().decode().strip() == "RUNNING"
        assert _drop_bastion_sessions(stack_env, user) >= 1
        def waiting() -> str | None:
            text = log()
            return text if WAITING in text else None

        text = _wait("the watch's wait in the task's log", waiting, timeout=120, every=5)
        assert "the local CA is offline" in text  # it says why
        assert api.run(dag_id, run_id)["state"] == "running"  # waiting is not failing

        # 3. the CA is back: renewed, logged in again, the job's end seen
        (ca_dir / "offline").unlink()
        assert api.wait_for_run(dag_id, run_id, timeout=JOB_SECONDS + 300)["state"] == "success"
        final = log()
        after_outage = final[final.index(WAITING):]
        assert _renewals(after_outage), final  # renewed again once the CA answered
    finally:
        (ca_dir / "offline").unlink(missing_ok=True)
        (ca_dir / "validity").unlink(missing_ok=True)  # back to the CA's default
