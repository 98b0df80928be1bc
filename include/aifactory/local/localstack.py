"""Reading the local stack's settings (written by ``include/stack/stack.sh`` to ``.stack/``)."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from aifactory.layout import AIRFLOW_USERS_FILE, PLATFORM_LOGIN, REPO_DIR

if TYPE_CHECKING:
    from aifactory.hpc.remote import OpenSSHPipe

REPO = REPO_DIR


def state_dir() -> Path:
    return Path(os.environ.get("AIFP_STATE_DIR", REPO / ".stack"))


def secrets_dir(env: Mapping[str, str]) -> Path:
    """Where onboarding's generated credentials live (``AIFP_SECRETS_DIR``, 0700)."""
    return Path(env.get("AIFP_SECRETS_DIR") or state_dir() / "secrets")


def read_env_file(path: Path | None = None) -> dict[str, str]:
    """Parse the ``export KEY=value`` lines of ``stack.env`` (values are shell-quoted)."""
    path = path or state_dir() / "stack.env"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: start the local stack first (make up)")
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, _, raw = line.partition("=")
        parts = shlex.split(raw) if raw else []
        env[key] = parts[0] if parts else ""
    return env


def airflow_password(env: Mapping[str, str], login: str = PLATFORM_LOGIN) -> str:
    """The generated password of an Airflow login (default: the platform admin), from the users
    file onboarding writes into the secrets directory (operators/access.py)."""
    path = secrets_dir(env) / AIRFLOW_USERS_FILE
    try:
        passwords = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: onboard the tenants first (make onboard, or make up)") from None
    if login not in passwords:
        raise KeyError(f"no Airflow login {login!r} in {path} (logins: {sorted(passwords)}); is it in a "
                       "tenant spec's airflow_users? then run make onboard")
    return passwords[login]


def tenant_login(env: Mapping[str, str], tenant: str) -> tuple[str, str]:
    """``(Unix user, key file)`` of a tenant's own login on the local cluster (made by onboarding).

    The service login (``AIFP_SSH_USER``/``AIFP_SSH_KEY``) cannot enter a tenant's area (0700)."""
    from aifactory.platform.cluster_identity import tenant_key_file
    from aifactory.tenants import load_tenant

    spec = load_tenant(tenant)
    if spec.identity is None:
        raise ValueError(f"tenant {tenant!r} has no identity in its spec")
    return spec.identity.unix_user, str(tenant_key_file(secrets_dir(env), tenant))


def bulk_pipe(env: dict[str, str], tenant: str | None = None) -> OpenSSHPipe:
    """The local stack's login through the OpenSSH client (benches and tests; Airflow tasks get
    theirs from ``FactorySSHHook.bulk_pipe``): the tenant's own login, or without ``tenant`` the
    service login."""
    from aifactory.hpc.remote import OpenSSHPipe

    user, key = tenant_login(env, tenant) if tenant else (env["AIFP_SSH_USER"], env["AIFP_SSH_KEY"])
    known = Path(env["AIFP_SSH_KNOWN_HOSTS"]).read_text().strip().splitlines()[0]
    return OpenSSHPipe(
        host=env["AIFP_SSH_HOST"], port=int(env["AIFP_SSH_PORT"]), username=user,
        key_file=key, known_hosts_line=known,
    )
