"""Generated secrets: the Airflow connections file and credential files, all mode 0600.

The connections live in one JSON file read by Airflow's own
``airflow.secrets.local_filesystem.LocalFilesystemBackend`` (``[secrets] backend``), which reads the
file at every lookup: a tenant onboarded while Airflow runs is usable at once, without a restart,
and no credential sits in a process environment or in ``airflow.cfg``. Each entry is in that
backend's format: ``{conn_id: {conn_type, host, port, login, password, extra_dejson}}``.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: the file name of the connections file inside the secrets directory
CONNECTIONS_FILE = "connections.json"


def write_private(path: Path, data: str | bytes) -> bool:
    """Write ``data`` to ``path`` atomically with mode 0600; return whether the content changed."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        if path.read_bytes() == raw:
            os.chmod(path, 0o600)
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


class ConnectionStore:
    """The Airflow connections file: read, and change one entry at a time under a lock."""

    def __init__(self, secrets_dir: Path) -> None:
        self.path = Path(secrets_dir) / CONNECTIONS_FILE

    def all(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def get(self, conn_id: str) -> dict[str, Any] | None:
        return self.all().get(conn_id)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def put(self, conn_id: str, conn: Mapping[str, Any]) -> bool:
        """Set one connection; return whether anything changed (onboarding twice changes nothing)."""
        with self._locked():
            current = self.all()
            if current.get(conn_id) == dict(conn):
                return False
            current[conn_id] = dict(conn)
            return write_private(self.path, json.dumps(current, indent=2, sort_keys=True) + "\n")
