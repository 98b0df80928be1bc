"""Fixtures shared by the integration tests (the real sshd, Slurm and S3 endpoint)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from aifactory import layout
from aifactory.hpc.remote import ParamikoShell, q
from aifactory.local.localstack import bulk_pipe
from tests.conftest import tenant_areas


@pytest.fixture()
def shell(ssh_client, stack_env, test_tenant) -> Iterator[ParamikoShell]:
    """The core's RemoteShell over the demo tenant's verified SSH login, with the OpenSSH client
    (the same login) for bulk transfers as the Airflow hook gives it."""
    with ParamikoShell(ssh_client, bulk=bulk_pipe(stack_env, test_tenant)) as sh:
        yield sh


@pytest.fixture()
def sftp_only_shell(ssh_client) -> Iterator[ParamikoShell]:
    """The same login without the OpenSSH client (machines without ``ssh``): staging uses SFTP."""
    with ParamikoShell(ssh_client) as sh:
        yield sh


@pytest.fixture()
def test_areas(shell, test_tenant) -> Iterator[layout.TenantAreas]:
    """A private pair of areas per test on the HPC side, removed afterwards: a folder in the demo
    tenant's project area and one in its scratch area (the HPC root belongs to root; only the
    tenant's login may write in its areas)."""
    areas, name = tenant_areas(test_tenant), f"itest-{secrets.token_hex(3)}"
    mine = layout.TenantAreas(project=f"{areas.project}/{name}", scratch=f"{areas.scratch}/{name}")
    yield mine
    shell.run("rm -rf -- " + q(*mine.roots))
