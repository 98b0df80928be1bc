"""The tenants' cluster identities on the real login node, as onboarding left them: a second
onboarding changes nothing; each tenant's area, key and authorized_keys are private to its own
user; its connection logs in as that user; the service login cannot enter a tenant's area."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from aifactory.platform import cluster_identity as ci
from aifactory.platform.onboard import Context
from aifactory.tenants import load_cluster, load_tenant
from tests.conftest import tenant_areas

pytestmark = pytest.mark.integration

TENANTS = ("demo", "acme")


def _mode_owner(path: str | Path) -> tuple[str, str]:
    st = os.lstat(path)
    assert not stat.S_ISLNK(st.st_mode), path
    return oct(st.st_mode & 0o777), pwd.getpwuid(st.st_uid).pw_name


@pytest.mark.parametrize("tenant", TENANTS)
def test_onboarding_again_changes_nothing(stack_env, tenant):
    spec = load_tenant(tenant)
    ctx = Context(secrets_dir=Path(stack_env.get("AIFP_SECRETS_DIR") or Path(stack_env["AIFP_STATE_DIR"]) / "secrets"),
                  env=stack_env, dry_run=True)
    assert ci.onboard_identity(ctx, spec, load_cluster(spec.cluster)) == []


@pytest.mark.parametrize("tenant", TENANTS)
def test_the_tenants_area_key_and_login_are_its_own(stack_env, tenant):
    from aifactory.local.localstack import secrets_dir
    from operators.hooks import FactorySSHHook

    spec = load_tenant(tenant)
    user = spec.identity.unix_user
    areas = tenant_areas(tenant)
    assert _mode_owner(stack_env["AIFP_HPC_ROOT"]) == ("0o755", "root")
    assert len(areas.roots) == 2  # the local cluster: a project area per account, a scratch area per user
    for area in areas.roots:  # the tenant's own, private; every directory above it root's, 0755
        assert _mode_owner(area) == ("0o700", user), area
        for parent in Path(area).parents:
            assert _mode_owner(parent)[1] == "root" and int(_mode_owner(parent)[0], 8) & 0o022 == 0, parent
    key = ci.tenant_key_file(secrets_dir(stack_env), tenant)
    assert _mode_owner(key) == ("0o600", "root") and _mode_owner(key.parent) == ("0o700", "root")
    home = Path(pwd.getpwnam(user).pw_dir)
    assert _mode_owner(home / ".ssh") == ("0o700", user)
    assert _mode_owner(home / ".ssh" / "authorized_keys") == ("0o600", user)
    hook = FactorySSHHook(ssh_conn_id=spec.identity.ssh_conn_id, connect_attempts=2)
    try:
        rc, out, err = hook.run(f"whoami; id -nG; test -w {areas.project} && test -w {areas.scratch} && echo writable")
    finally:
        hook.close()
    assert rc == 0, err
    whoami, groups, writable = out.split("\n")[:3]
    assert whoami == user and ci.LOGIN_GROUP in groups.split() and writable == "writable"


def test_the_service_login_cannot_enter_a_tenants_area(stack_env, service_ssh_client):
    for tenant in TENANTS:
        for area in tenant_areas(tenant).roots:
            _, out, err = service_ssh_client.exec_command(f"ls {area}")
            assert out.channel.recv_exit_status() != 0 and "Permission denied" in err.read().decode(), area
