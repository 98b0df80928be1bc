"""Fixtures shared by the integration tests (the real sshd, Slurm and S3 endpoint)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from aifactory.hpc.remote import ParamikoShell, q
from aifactory.local.localstack import bulk_pipe


@pytest.fixture()
def shell(ssh_client, stack_env) -> Iterator[ParamikoShell]:
    """The core's RemoteShell over the session's verified SSH connection, with the OpenSSH client
    for bulk transfers as the Airflow hook gives it."""
    with ParamikoShell(ssh_client, bulk=bulk_pipe(stack_env)) as sh:
        yield sh


@pytest.fixture()
def sftp_only_shell(ssh_client) -> Iterator[ParamikoShell]:
    """The same login without the OpenSSH client (machines without ``ssh``): staging uses SFTP."""
    with ParamikoShell(ssh_client) as sh:
        yield sh


@pytest.fixture()
def tenant_dir(stack_env, shell) -> Iterator[str]:
    """A private tenant area per test on the HPC side, removed afterwards."""
    d = f"{stack_env['AIFP_HPC_ROOT']}/itest-{secrets.token_hex(3)}"
    yield d
    shell.run("rm -rf -- " + q(d))
