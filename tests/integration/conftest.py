"""Fixtures shared by the integration tests (the real sshd, Slurm and S3 endpoint)."""

from __future__ import annotations

import secrets
from typing import Iterator

import pytest

from aifactory.remote import ParamikoShell, q


@pytest.fixture()
def shell(ssh_client) -> Iterator[ParamikoShell]:
    """The core's RemoteShell over the session's verified SSH connection."""
    with ParamikoShell(ssh_client) as sh:
        yield sh


@pytest.fixture()
def tenant_dir(stack_env, shell) -> Iterator[str]:
    """A private tenant area per test on the HPC side, removed afterwards."""
    d = f"{stack_env['AIFP_HPC_ROOT']}/itest-{secrets.token_hex(3)}"
    yield d
    shell.run("rm -rf -- " + q(d))
