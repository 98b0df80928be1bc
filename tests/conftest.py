"""Shared fixtures.

Unit tests (tests/unit) need nothing running. Integration and end-to-end tests use the real
local stack (sshd, Slurm, the S3 endpoint, Airflow) brought up by ``include/stack/stack.sh up``,
which is idempotent; its settings are read back from ``.stack/stack.env``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aifactory.local.localstack import read_env_file

REPO = Path(__file__).resolve().parent.parent
STACK = REPO / "include" / "stack" / "stack.sh"


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """Bring the local stack up (idempotent) and return its environment.

    The variables are also put into ``os.environ`` so that Airflow hooks in the test process
    find the ``AIRFLOW_CONN_*`` connections exactly as the workers do.
    """
    if os.environ.get("AIFP_SKIP_STACK_UP") != "1":
        subprocess.run(["bash", str(STACK), "up"], check=True, cwd=REPO)
    env = read_env_file()
    os.environ.update(env)
    return env


@pytest.fixture(scope="session")
def s3_client(stack_env: dict[str, str]):
    from aifactory.data.s3 import make_client

    return make_client(
        endpoint_url=stack_env["AIFP_S3_ENDPOINT"],
        access_key=stack_env["AWS_ACCESS_KEY_ID"],
        secret_key=stack_env["AWS_SECRET_ACCESS_KEY"],
        region=stack_env.get("AWS_DEFAULT_REGION", "us-east-1"),
    )


#: the tenant whose own login the HPC-side tests use: tenant areas are 0700 and belong to the
#: tenant's Unix user, so the platform's service login cannot enter them
TEST_TENANT = "demo"


@pytest.fixture(scope="session")
def test_tenant() -> str:
    return TEST_TENANT


def tenant_areas(tenant: str):
    """The tenant's project and scratch areas on its cluster, as every stage computes them
    (``TenantSpec.areas``: the cluster spec's ``areas:`` templates)."""
    from aifactory.tenants import load_cluster, load_tenant

    spec = load_tenant(tenant)
    return spec.areas(load_cluster(spec.cluster))


def ssh_login(env: dict[str, str], username: str, key_file: str) -> paramiko.SSHClient:  # noqa: F821
    """A paramiko client logged in to the HPC side with the pinned host key (RejectPolicy).

    The test's own way in: straight to the login node with the plain key (its authorized_keys), not
    through the bastion, and without the certificate the factory keeps beside the key (paramiko
    would offer only that one, which a certificate test may have let expire)."""
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(env["AIFP_SSH_KNOWN_HOSTS"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(env["AIFP_SSH_HOST"], port=int(env["AIFP_SSH_PORT"]), username=username,
                   pkey=paramiko.Ed25519Key.from_private_key_file(key_file), look_for_keys=False,
                   allow_agent=False)
    return client


@pytest.fixture(scope="session")
def tenant_ssh(stack_env: dict[str, str]) -> Iterator[Callable[[str], paramiko.SSHClient]]:  # noqa: F821
    """``tenant_ssh("acme")``: a client logged in as that tenant's own Unix user, with its key
    (``<secrets>/ssh/<tenant>/id_ed25519``); one per tenant for the session."""
    from aifactory.local.localstack import tenant_login

    clients: dict[str, paramiko.SSHClient] = {}  # noqa: F821

    def get(tenant: str) -> paramiko.SSHClient:  # noqa: F821
        if tenant not in clients:
            clients[tenant] = ssh_login(stack_env, *tenant_login(stack_env, tenant))
        return clients[tenant]

    yield get
    for client in clients.values():
        client.close()


@pytest.fixture(scope="session")
def ssh_client(tenant_ssh) -> paramiko.SSHClient:  # noqa: F821
    """The demo tenant's own login on the HPC side (its area, its Slurm account)."""
    return tenant_ssh(TEST_TENANT)


@pytest.fixture(scope="session")
def service_ssh_client(stack_env: dict[str, str]) -> Iterator[paramiko.SSHClient]:  # noqa: F821
    """The platform's service login (``aifactory``): accounts and sweeps, never a tenant's area."""
    client = ssh_login(stack_env, stack_env["AIFP_SSH_USER"], stack_env["AIFP_SSH_KEY"])
    yield client
    client.close()
