"""What the factory needs from the HPC side, as a small protocol, plus the commands it runs there.

The Airflow adapter (``operators.hooks.FactorySSHHook``) provides a real implementation over SSH
with a pinned host key; unit tests may provide a local fake. Every path that reaches a remote
shell goes through :func:`shlex.quote` here, in one place.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from typing import IO, Any, Iterable, Protocol

from aifactory.errors import FactoryError

SHA256_LINE = re.compile(r"^([0-9a-f]{64})\s+\*?(.+)$")


class RemoteError(FactoryError):
    """A command on the HPC side failed (not the user's input: an operator should look)."""


class SFTPLike(Protocol):
    def open(self, filename: str, mode: str = "r", bufsize: int = -1) -> IO[bytes]: ...

    def stat(self, path: str) -> Any: ...

    def get(self, remotepath: str, localpath: str) -> Any: ...


class RemoteShell(Protocol):
    """A login on the HPC side: run a command; open files over SFTP."""

    def run(self, command: str, *, timeout: float | None = None) -> tuple[int, str, str]: ...

    def sftp_client(self) -> SFTPLike: ...


def q(*parts: str) -> str:
    """Quote every part for a POSIX shell and join them with spaces."""
    return " ".join(shlex.quote(p) for p in parts)


def check(shell: RemoteShell, command: str, *, what: str, timeout: float | None = 300) -> str:
    """Run ``command``; raise RemoteError naming ``what`` and the remote stderr when it fails."""
    rc, out, err = shell.run(command, timeout=timeout)
    if rc != 0:
        raise RemoteError(f"{what} failed on the HPC side (exit {rc}): {err.strip()[-800:] or out.strip()[-800:]}")
    return out


def mkdir_private(shell: RemoteShell, *paths: str) -> None:
    """Create directories (and parents) readable by the HPC user only (0700)."""
    check(shell, "mkdir -p -m 0700 -- " + q(*paths) + " && chmod 0700 -- " + q(*paths), what="mkdir")


def exists(shell: RemoteShell, path: str) -> bool:
    rc, _, _ = shell.run("test -e " + q(path), timeout=60)
    return rc == 0


def sha256_many(shell: RemoteShell, paths: Iterable[str], *, timeout: float | None = 3600) -> dict[str, str]:
    """sha256 of each existing file, computed on the HPC side; missing files are left out."""
    paths = list(paths)
    if not paths:
        return {}
    # `|| true`: a missing file must not hide the sums of the others; it is simply absent below
    rc, out, err = shell.run("sha256sum -- " + q(*paths) + " 2>/dev/null || true", timeout=timeout)
    sums: dict[str, str] = {}
    for line in out.splitlines():
        m = SHA256_LINE.match(line.strip())
        if m:
            sums[m.group(2)] = m.group(1)
    return sums


def join(*parts: str) -> str:
    return posixpath.join(*parts)


class ParamikoShell:
    """:class:`RemoteShell` over a connected ``paramiko.SSHClient`` (host key already verified).

    One SSH connection serves every command and one SFTP session; the caller owns the client.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._sftp: Any = None

    def run(self, command: str, *, timeout: float | None = None) -> tuple[int, str, str]:
        _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), out, err

    def sftp_client(self) -> Any:
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None

    def __enter__(self) -> "ParamikoShell":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
