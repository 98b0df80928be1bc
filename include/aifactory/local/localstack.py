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
    path = Path(env.get("AIFP_SECRETS_DIR") or state_dir() / "secrets") / AIRFLOW_USERS_FILE
    try:
        passwords = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: onboard the tenants first (make onboard, or make up)") from None
    if login not in passwords:
        raise KeyError(f"no Airflow login {login!r} in {path} (logins: {sorted(passwords)}); is it in a "
                       "tenant spec's airflow_users? then run make onboard")
    return passwords[login]


def bulk_pipe(env: dict[str, str]) -> OpenSSHPipe:
    """The local stack's login through the OpenSSH client (benches and tests; Airflow tasks get
    theirs from ``FactorySSHHook.bulk_pipe``)."""
    from aifactory.hpc.remote import OpenSSHPipe

    known = Path(env["AIFP_SSH_KNOWN_HOSTS"]).read_text().strip().splitlines()[0]
    return OpenSSHPipe(
        host=env["AIFP_SSH_HOST"], port=int(env["AIFP_SSH_PORT"]), username=env["AIFP_SSH_USER"],
        key_file=env["AIFP_SSH_KEY"], known_hosts_line=known,
    )
