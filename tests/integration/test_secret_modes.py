"""The local stack's generated credentials: who can read them (docs/security.md, "Secrets").

Every generated credential file is 0600 and its directory 0700; the state directory is root's
alone, because the tenants' Unix users live on the same machine: the kernel, not our code, must
refuse a tenant user (and so any job of that tenant) the Fernet key, another tenant's SSH key,
the Airflow database and every task log. The login node's host private key is named by sshd's
configuration only, never by anything Airflow reads.
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from aifactory.local.localstack import secrets_dir
from aifactory.platform.secrets import ConnectionStore
from aifactory.tenants import load_tenant

pytestmark = pytest.mark.integration

AIRFLOW_SECRETS = {"fernet_key": "AIRFLOW__CORE__FERNET_KEY", "jwt_secret": "AIRFLOW__API_AUTH__JWT_SECRET",
                   "api_secret_key": "AIRFLOW__API__SECRET_KEY"}


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_state_and_secrets_dirs_are_private(stack_env):
    state = Path(stack_env["AIFP_STATE_DIR"])
    assert mode(state) & 0o077 == 0, f"{state} is {oct(mode(state))}: tenant users would reach keys and logs"
    env_file = state / "stack.env"
    assert mode(env_file) == 0o600, f"{env_file} is {oct(mode(env_file))}"
    root = secrets_dir(stack_env)
    for p in [root, *root.rglob("*")]:
        if p.is_dir():
            assert mode(p) == 0o700, f"{p} is {oct(mode(p))}, want 0700"
        elif p.stat().st_size and p.suffix != ".pub":  # an empty lock file and a public key hold no secret
            assert mode(p) & 0o077 == 0, f"{p} is {oct(mode(p))}, want 0600"


def test_airflow_secrets_are_generated_and_exported(stack_env):
    root = secrets_dir(stack_env)
    values = set()
    for name, var in AIRFLOW_SECRETS.items():
        path = root / name
        assert mode(path) == 0o600, f"{path} is {oct(mode(path))}"
        value = path.read_text().strip()
        assert len(value) >= 32, f"{path} holds no generated secret"
        assert stack_env[var] == value, f"{var} in stack.env is not {path}'s value"
        values.add(value)
    assert len(values) == len(AIRFLOW_SECRETS), "two of Airflow's secrets share a value"
    from cryptography.fernet import Fernet

    Fernet(stack_env["AIRFLOW__CORE__FERNET_KEY"].encode())  # a valid key, or this raises


@pytest.mark.parametrize("config", ["sshd_config", "sshd-bastion_config", "sshd-dtn_config"])
def test_the_host_private_key_is_sshds_alone(stack_env, config):
    sshd_config = Path(stack_env["AIFP_STATE_DIR"]) / "ssh" / config
    host_keys = [Path(line.split(None, 1)[1].strip()) for line in sshd_config.read_text().splitlines()
                 if line.startswith("HostKey ")]
    assert host_keys, f"no HostKey in {sshd_config}"
    conns = ConnectionStore(secrets_dir(stack_env)).all()
    named = {str(v) for v in stack_env.values()}
    named |= {str(c.get("extra_dejson", {}).get("key_file")) for c in conns.values()}
    named |= {str(json.loads(stack_env[k]).get("extra", {}).get("key_file"))
              for k in stack_env if k.startswith("AIRFLOW_CONN_")}
    for key in host_keys:
        assert key.stat().st_uid == 0 and mode(key) == 0o600, f"{key} is {oct(mode(key))}"
        assert not any(str(key) in v for v in named), f"the host private key {key} is named in stack.env or a connection"


@pytest.mark.parametrize("tenant", ["demo", "acme"])
def test_a_tenant_user_reads_no_secret(stack_env, tenant):
    """As the tenant's Unix user (what its jobs run as): every read is refused by the kernel."""
    user = load_tenant(tenant).identity.unix_user
    state = Path(stack_env["AIFP_STATE_DIR"])
    root = secrets_dir(stack_env)
    targets = [root / "fernet_key", root / "connections.json", state / "stack.env",
               Path(stack_env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]), *sorted((root / "ssh").glob("*/id_ed25519")),
               # the site CA's key: who reads it signs a certificate for any login (docs/ssh-logins.md)
               Path(stack_env["AIFP_SSH_CA_DIR"]) / "ca"]
    for target in targets:
        assert target.exists(), target
        out = subprocess.run(["runuser", "-u", user, "--", "cat" if target.is_file() else "ls", str(target)],
                             capture_output=True, text=True)
        assert out.returncode != 0 and "Permission denied" in out.stderr, f"{user} can read {target}"


def test_slurmdbd_uses_the_generated_database_password(stack_env):
    generated = secrets_dir(stack_env) / "slurmdbd_db_password"
    assert generated.is_file(), f"{generated} missing: run include/stack/stack.sh up"
    conf = Path("/etc/slurm/slurmdbd.conf")
    assert conf.stat().st_uid == 0 and mode(conf) == 0o600, f"{conf} is {oct(mode(conf))}"
    stored = [line.split("=", 1)[1] for line in conf.read_text().splitlines() if line.startswith("StoragePass=")]
    assert stored == [generated.read_text().strip()], f"{conf}'s StoragePass is not {generated}'s value"
