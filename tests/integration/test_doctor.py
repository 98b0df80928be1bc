"""The doctor against the real sshd: a connection pinning a wrong host key and one whose port is
closed are reported distinctly, each with what to fix; the cluster's own service connection passes."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from aifactory.platform.doctor_checks import fingerprint
from tests.conftest import tenant_areas

REPO = Path(__file__).resolve().parents[2]
SERVICE = "AIRFLOW_CONN_AIFACTORY_HPC_LOCAL"


def _doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aifactory.platform.doctor", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _rows(out: str) -> dict[tuple[str, str], tuple[str, str]]:
    """``{(check, conn id): (OK|FAIL, detail)}`` from the doctor's ``--json`` answer."""
    return {(f["check"], f["target"].split()[0]): (f["verdict"], f["detail"]) for f in json.loads(out)}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once it is closed


def test_wrong_host_key_and_unreachable_cluster_are_told_apart(stack_env, tmp_path):
    service = json.loads(stack_env[SERVICE])
    real_key = Path(stack_env["AIFP_STATE_DIR"], "ssh", "ssh_host_ed25519_key.pub").read_text().split()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other_key = (tmp_path / "other.pub").read_text().split()
    wrong = {**service, "extra": {**service["extra"], "host_key": " ".join(other_key[:2])}}
    closed = {**service, "port": _closed_port()}
    env = {**os.environ, **stack_env, "AIRFLOW_CONN_DOCTOR_WRONG_KEY": json.dumps(wrong),
           "AIRFLOW_CONN_DOCTOR_CLOSED": json.dumps(closed)}

    proc = _doctor(env, "--json", "--ssh-conn", "doctor_wrong_key", "--ssh-conn", "doctor_closed",
                   "--ssh-conn", "aifactory_hpc_local")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = _rows(proc.stdout)

    presented = fingerprint(base64.b64decode(real_key[1]))
    pinned = fingerprint(base64.b64decode(other_key[1]))
    assert rows[("reachable", "doctor_wrong_key")][0] == "OK"
    verdict, detail = rows[("host key", "doctor_wrong_key")]
    assert verdict == "FAIL"
    assert detail.startswith(f"host key mismatch: the cluster presents ssh-ed25519 {presented}, the connection "
                             f"pins ssh-ed25519 {pinned}")
    assert "update extra.host_key of doctor_wrong_key" in detail and "unreachable" not in detail

    verdict, detail = rows[("reachable", "doctor_closed")]
    assert verdict == "FAIL"
    assert detail.startswith(f"unreachable: connection refused at 127.0.0.1:{closed['port']}")
    assert rows[("host key", "doctor_closed")] == ("FAIL", "not checked: the cluster is unreachable")

    for check in ("reachable", "host key", "login"):
        assert rows[(check, "aifactory_hpc_local")][0] == "OK", proc.stdout


@pytest.mark.parametrize("tenant", ["demo"])
def test_full_doctor_reports_every_check_of_a_tenant(stack_env, tenant):
    """The whole table for one tenant: every kind of check has a row (its verdict depends on what
    onboarding has set up; the host key and login of the service connection must pass)."""
    proc = _doctor({**os.environ, **stack_env}, "--json", "--tenant", tenant)
    assert proc.returncode in (0, 1), proc.stderr
    findings = json.loads(proc.stdout)
    assert {"spec", "reachable", "host key", "login", "slurm association", "slurm limits", "s3 own bucket"} <= {
        f["check"] for f in findings}, proc.stdout
    assert proc.returncode == (1 if any(f["verdict"] == "FAIL" for f in findings) else 0)
    service = [f for f in findings if f["target"].startswith("aifactory_hpc_local ")]
    assert [f["verdict"] for f in service] == ["OK", "OK", "OK"], service
    # the local cluster's Lmod environment (include/clusters/local.yaml), loaded on the login node
    (env,) = [f for f in findings if f["check"] == "site environment"]
    assert env["target"] == "local" and env["verdict"] == "OK", env
    assert env["detail"] == "sources /etc/profile.d/lmod.sh, loaded: aifactory-train/1.0", env
    # the tenant's two areas from the login node, and its scratch area from the data-transfer node
    areas = tenant_areas(tenant)
    dirs = {f["target"]: f["verdict"] for f in findings if f["check"] == "directory"}
    assert dirs == {f"{tenant}: {areas.project}": "OK", f"{tenant}: {areas.scratch}": "OK",
                    f"{tenant} (data-transfer node): {areas.scratch}": "OK"}, dirs
    dtn = [f for f in findings if f"@127.0.0.1:{stack_env['AIFP_DTN_PORT']})" in f["target"]]
    assert [(f["check"], f["verdict"]) for f in dtn] == [("reachable", "OK"), ("host key", "OK"), ("login", "OK")], dtn
