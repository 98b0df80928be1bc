"""Cross-tenant matrix, cluster side: tenant A (demo) and tenant B (acme) on the real login node
and the real Slurm, each through its own login (its own SSH connection, key and Unix user).

- a job that A submits through A's connection, trying to list, read and write B's staged dataset
  directory, is refused by the kernel (Permission denied in the job's own output), and B's files
  are neither shown nor changed;
- A's login cannot list, read or write B's directory over SSH or SFTP either;
- tenant work runs as the tenant's user, never the platform's service user: the job's user in
  ``sacct`` is aifp-demo, and so is the user of the jobs the tenant's probe DAG submits through
  the scheduler.
"""

from __future__ import annotations

import io
import secrets
import subprocess
import time

import paramiko
import pytest

from aifactory import layout
from aifactory.hpc.remote import q
from aifactory.hpc.slurm import (
    Resources,
    TenantSlurmPolicy,
    build_sbatch_command,
    classify,
    job_name,
    parse_poll_output,
    parse_sbatch_output,
    poll_command,
    sbatch_argv,
)
from aifactory.tenants import load_cluster, load_tenant

pytestmark = pytest.mark.e2e

A, B = load_tenant("demo"), load_tenant("acme")
CLUSTER = load_cluster(A.cluster)
CANARY = f"acme-private-{secrets.token_hex(8)}"


def _areas(spec) -> layout.TenantAreas:
    return spec.areas(CLUSTER)


def _run(client: paramiko.SSHClient, command: str) -> tuple[int, str, str]:
    _, out, err = client.exec_command(command, timeout=60)
    rc = out.channel.recv_exit_status()
    return rc, out.read().decode(), err.read().decode()


@pytest.fixture(scope="module")
def b_dataset(stack_env, tenant_ssh):
    """A dataset version in B's area, laid out and private as staging leaves it, written by B's login."""
    b = tenant_ssh(B.tenant)
    directory = layout.hpc_dataset_dir(_areas(B), f"iso-{secrets.token_hex(3)}", f"v-{secrets.token_hex(8)}")
    rc, _, err = _run(b, f"mkdir -p -m 0700 -- {q(directory)} && chmod 0700 -- {q(directory)}")
    assert rc == 0, err
    with b.open_sftp() as sftp:
        sftp.putfo(io.BytesIO(CANARY.encode()), f"{directory}/part-00000.parquet")
    yield directory
    _run(b, f"rm -rf -- {q(directory.rsplit('/', 1)[0])}")


@pytest.fixture(scope="module")
def a_hook(stack_env):
    """A's own connection, as every task of A's pipeline gets it (operators.stages / the plan)."""
    from aifactory.hpc.slurm import tenant_ssh_conn_id
    from operators.hooks import FactorySSHHook

    hook = FactorySSHHook(ssh_conn_id=tenant_ssh_conn_id(A, CLUSTER))
    yield hook
    hook.close()


def _wait(hook, job_id: str, name: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, out, _ = hook.run(poll_command([job_id]))
        obs = parse_poll_output(out, [job_id], names={job_id: name}).jobs[job_id]
        if obs.found and classify(obs.state) != "active" and obs.record is not None:
            return obs
        time.sleep(2)
    raise AssertionError(f"job {job_id} did not finish within {timeout}s")


def test_a_job_of_A_cannot_list_read_or_write_Bs_staged_dataset(stack_env, a_hook, b_dataset, tenant_ssh):
    run_dir = layout.run_dir(_areas(A), f"itest-iso-{secrets.token_hex(4)}")
    rc, _, err = a_hook.run(f"mkdir -p -m 0700 -- {q(run_dir)}")
    assert rc == 0, err
    target = q(b_dataset)
    script = "\n".join([
        "#!/bin/bash",
        'echo "user=$(id -un)"',
        f"ls -la -- {target}; echo \"ls=$?\"",
        f"cat -- {q(b_dataset + '/part-00000.parquet')}; echo \"read=$?\"",
        f"touch -- {q(b_dataset + '/planted-by-A')}; echo \"write=$?\"",
        f"ls -- {q(*_areas(B).roots)}; echo \"list_area=$?\"",
        "",
    ])
    with a_hook.sftp() as sftp:
        sftp.putfo(io.BytesIO(script.encode()), f"{run_dir}/job.sh")
    name = job_name(A.tenant, "itest_isolation", run_dir, "cluster")
    policy = TenantSlurmPolicy(account=A.slurm_account, partitions=A.partitions, max_cpus_per_task=1, max_mem_gb=1)
    argv = sbatch_argv(Resources.from_request({"cpus_per_task": 1, "mem_gb": 1, "time_limit_minutes": 2}, policy=policy),
                       job_name=name, comment="aifp:itest-isolation", chdir=run_dir,
                       output_path=f"{run_dir}/slurm-%j.out", export_vars={"PATH": "/usr/bin:/bin"})
    rc, out, err = a_hook.run(build_sbatch_command(argv, f"{run_dir}/job.sh"))
    assert rc == 0, err
    job_id = parse_sbatch_output(out).job_id
    try:
        _wait(a_hook, job_id, name)
        rc, log, err = a_hook.run(f"cat -- {q(layout.job_log_path(run_dir, job_id))}")
        assert rc == 0, err
        assert "user=aifp-demo" in log
        for step in ("ls", "read", "write", "list_area"):
            assert f"{step}=0" not in log, log  # every attempt failed ...
        assert log.count("Permission denied") >= 4, log  # ... because the kernel refused it
        assert CANARY not in log and not any(line.endswith(" part-00000.parquet") or line == "part-00000.parquet"
                                             for line in log.splitlines())  # no content, no listing
        # the job ran as A's user under A's account: Slurm's own record, not our log
        recorded = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "User,Account"],
                                  capture_output=True, text=True, check=True).stdout.split()
        assert recorded == [f"{A.identity.unix_user}|{A.slurm_account}"]
    finally:
        a_hook.run(f"scancel {q(job_id)}; rm -rf -- {q(run_dir)}")
    rc, listing, _ = _run(tenant_ssh(B.tenant), f"ls -A -- {q(b_dataset)}")
    assert rc == 0 and listing.split() == ["part-00000.parquet"]  # nothing planted


def test_As_login_cannot_read_Bs_directory_over_ssh_or_sftp(stack_env, tenant_ssh, b_dataset):
    a = tenant_ssh(A.tenant)
    rc, out, err = _run(a, f"whoami; ls -- {q(b_dataset)}; cat -- {q(b_dataset + '/part-00000.parquet')}")
    assert out.split()[0] == A.identity.unix_user
    assert rc != 0 and err.count("Permission denied") == 2 and CANARY not in out
    with a.open_sftp() as sftp:
        for attempt in (lambda: sftp.listdir(b_dataset),
                        lambda: sftp.listdir(_areas(B).project),
                        lambda: sftp.listdir(_areas(B).scratch),
                        lambda: sftp.open(f"{b_dataset}/part-00000.parquet").read(),
                        lambda: sftp.putfo(io.BytesIO(b"x"), f"{b_dataset}/planted-over-sftp")):
            with pytest.raises(PermissionError):
                attempt()


def test_the_tenants_probe_dag_runs_its_jobs_as_the_tenants_user_not_the_service_user(api):
    """Through the scheduler and the triggerer: the probe DAG of A submits under A's identity."""
    dag_id = layout.probe_dag_id(A.tenant)
    api.wait_for_dag(dag_id)
    api.unpause(dag_id)
    run_id = f"manual__itest-isolation-{secrets.token_hex(4)}"
    api.trigger(dag_id, {"jobs": 1, "seconds": 1}, run_id=run_id)
    assert api.wait_for_run(dag_id, run_id, timeout=600)["state"] == "success"
    name = job_name(A.tenant, dag_id, run_id, "probe", 0)
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-a", "-S", "now-1days", f"--name={name}", "-o",
                          "User,Account,QOS"], capture_output=True, text=True, check=True).stdout.split()
    # not the service user; under the tenant's probe QOS (slurm.qos.probe)
    assert out and set(out) == {f"{A.identity.unix_user}|{A.slurm_account}|{A.qos_by_purpose['probe']}"}, out
