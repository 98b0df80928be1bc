"""The tenant's cluster identity (onboarding step 1): its connection is the service connection's
host, port and pinned host key with the tenant's own login and key, and a dry run changes nothing.

The real users, keys, directories and sshd are checked in tests/integration/test_cluster_identity.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from aifactory.platform import cluster_identity as ci
from aifactory.platform.onboard import Context, tenant_steps
from aifactory.tenants import load_cluster, load_tenant

SERVICE = {"conn_type": "ssh", "host": "login.example", "port": 2222, "login": "aifactory",
           "extra": {"key_file": "/svc/id_ed25519", "host_key": "ssh-ed25519 AAAAC3Nza",
                     "no_host_key_check": False, "allow_host_key_change": False, "look_for_keys": False}}


def _env(conn: dict | None = None) -> dict[str, str]:
    return {"AIRFLOW_CONN_AIFACTORY_HPC_LOCAL": json.dumps(conn or SERVICE)}


def test_the_tenant_connection_is_the_service_connection_with_the_tenant_login_and_key(tmp_path):
    service = ci.service_connection(_env(), load_cluster("local"))
    key = ci.tenant_key_file(tmp_path, "demo")
    assert key == tmp_path / "ssh" / "demo" / "id_ed25519"
    conn = ci.tenant_connection(service, "aifp-demo", key)
    assert (conn["host"], conn["port"], conn["login"]) == ("login.example", 2222, "aifp-demo")
    assert conn["extra_dejson"] == {**SERVICE["extra"], "key_file": str(key)}


def test_a_service_connection_without_pinned_host_key_is_refused():
    unpinned = {**SERVICE, "extra": {"key_file": "/k"}}
    with pytest.raises(ci.IdentityError, match="host_key"):
        ci.service_connection(_env(unpinned), load_cluster("local"))
    with pytest.raises(ci.IdentityError, match="AIRFLOW_CONN_NOPE is not set"):
        ci.service_connection({}, replace(load_cluster("local"), ssh_conn_id="nope"))


def test_a_tenant_may_not_reuse_the_service_identity(tmp_path):
    spec, cluster = load_tenant("demo"), load_cluster("local")
    ctx = Context(secrets_dir=tmp_path, env=_env(), dry_run=True)
    same_conn = replace(spec, identity=replace(spec.identity, ssh_conn_id=cluster.ssh_conn_id))
    with pytest.raises(ci.IdentityError, match="service connection"):
        ci.onboard_identity(ctx, same_conn, cluster)
    same_user = replace(spec, identity=replace(spec.identity, unix_user="aifactory"))
    with pytest.raises(ci.IdentityError, match="service user"):
        ci.onboard_identity(ctx, same_user, cluster)


def test_a_dry_run_for_a_new_tenant_lists_everything_and_changes_nothing(tmp_path):
    spec = load_tenant("demo")
    spec = replace(spec, tenant="newco", slurm_account="newco",
                   identity=replace(spec.identity, unix_user="aifp-unit-newco", ssh_conn_id="aifactory_hpc_local_newco"))
    cluster = replace(load_cluster("local"), hpc_root=str(tmp_path / "hpc"))
    secrets = tmp_path / "secrets"
    changes = ci.onboard_identity(Context(secrets_dir=secrets, env=_env(), dry_run=True), spec, cluster)
    actions = [c.action for c in changes]
    assert {c.step for c in changes} == {ci.STEP} and {c.tenant for c in changes} == {"newco"}
    assert "useradd aifp-unit-newco" in actions and "connection aifactory_hpc_local_newco" in actions
    assert any(a.startswith("ssh-keygen") for a in actions)
    hpc = tmp_path / "hpc"  # the local cluster's templates: a project area per account, a scratch area per user
    for made in (f"mkdir {hpc} (root, 0755)", f"mkdir {hpc}/project (root, 0755)", f"mkdir {hpc}/scratch (root, 0755)",
                 f"mkdir {hpc}/project/newco (owner aifp-unit-newco, 0700)",
                 f"mkdir {hpc}/scratch/aifp-unit-newco (owner aifp-unit-newco, 0700)"):
        assert made in actions, (made, actions)
    assert not secrets.exists() and not (tmp_path / "hpc").exists()


def test_identity_is_the_first_onboarding_step():
    assert tenant_steps()[0] == (ci.STEP, ci.onboard_identity)


def test_the_modes_are_private():
    assert ci.PRIVATE_DIR_MODE == 0o700 and ci.PRIVATE_FILE_MODE == 0o600 and ci.HPC_ROOT_MODE == 0o755
    assert Path(ci.tenant_key_file(Path("/s"), "acme")).name == ci.KEY_NAME
