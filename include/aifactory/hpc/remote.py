"""What the factory needs from the HPC side, as a small protocol, plus the commands it runs there.

The Airflow adapter (``operators.hooks.FactorySSHHook``) provides a real implementation over SSH
with a pinned host key; unit tests may provide a local fake. Every path that reaches a remote
shell goes through :func:`shlex.quote` here, in one place.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import select
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any, Protocol

from aifactory.errors import FactoryError
from aifactory.text import shown

#: Seconds to wait for the end of a command's output after its exit status arrived.
EOF_GRACE_S = 5.0
#: SFTP channel window for parallel sessions (paramiko's default is 2 MiB).
SFTP_WINDOW = 64 * 1024 * 1024
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


@dataclass(frozen=True)
class FileStat:
    """What ``find -printf`` tells about one regular file: enough to notice any change since.

    ``ctime`` cannot be set by an unprivileged user (``touch`` sets mtime only), so size, inode and
    ctime unchanged since a verification means the content was not rewritten since.
    """

    name: str
    size: int
    inode: int
    ctime: str


def stat_files(shell: RemoteShell, directory: str, *, timeout: float | None = 120) -> dict[str, FileStat]:
    """Regular files directly inside ``directory`` (name -> :class:`FileStat`); ``{}`` if absent."""
    rc, out, _ = shell.run(
        "find " + q(directory) + r" -mindepth 1 -maxdepth 1 -type f -printf '%s\t%i\t%C@\t%f\n' 2>/dev/null || true",
        timeout=timeout,
    )
    stats: dict[str, FileStat] = {}
    for line in out.splitlines():
        parts = line.split("\t", 3)
        if len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit():
            stats[parts[3]] = FileStat(name=parts[3], size=int(parts[0]), inode=int(parts[1]), ctime=parts[2])
    return stats


def open_sftp(shell: RemoteShell) -> tuple[SFTPLike, bool]:
    """A separate SFTP session when the shell can open one (for files in flight in parallel).

    Returns ``(session, owned)``; close the session when ``owned``. A shell without
    ``open_sftp`` gives its shared session (``owned`` False): callers then send one file at a time.
    """
    opener = getattr(shell, "open_sftp", None)
    if callable(opener):
        return opener(), True
    return shell.sftp_client(), False


def run_with_input(
    shell: RemoteShell,
    command: str,
    data: bytes,
    *,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
) -> tuple[int, str, str]:
    """Run ``command`` with ``data`` on its stdin (secrets never go in argv: ``ps`` shows argv).

    ``on_line`` receives each stdout line as it arrives (progress of long remote work).
    """
    runner = getattr(shell, "run_input", None)
    if not callable(runner):
        raise RemoteError(
            f"{type(shell).__name__} cannot pass data on stdin; use aifactory.hpc.remote.ParamikoShell "
            "(operators.hooks.FactorySSHHook.shell())"
        )
    return runner(command, data, timeout=timeout, on_line=on_line)


def set_nodelay(client: Any) -> None:
    """Turn Nagle's algorithm off on a paramiko client's socket.

    Short request/response exchanges (open a channel, exec, read the exit status) otherwise wait
    for the peer's delayed ACK: about 45 ms per remote command instead of about 7 ms on a LAN.
    """
    import socket

    transport = client.get_transport() if client is not None else None
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ParamikoShell:
    """:class:`RemoteShell` over a connected ``paramiko.SSHClient`` (host key already verified).

    One SSH connection serves every command and one SFTP session; the caller owns the client.
    """

    def __init__(self, client: Any, *, bulk: OpenSSHPipe | None = None) -> None:
        self.client = client
        set_nodelay(client)
        #: the same login through the OpenSSH client, for bulk transfers (staging push); optional
        self.bulk = bulk
        self._sftp: Any = None

    def run(self, command: str, *, timeout: float | None = None) -> tuple[int, str, str]:
        """Run ``command``; read stdout and stderr together (a full stderr pipe cannot stall it).

        :raises TimeoutError: when the command runs past ``timeout`` seconds (its channel is closed).
        """
        chan = self.client.get_transport().open_session()
        try:
            chan.exec_command(command)
            out: list[bytes] = []
            err: list[bytes] = []
            deadline = None if timeout is None else time.monotonic() + timeout
            exited_at: float | None = None
            while True:
                busy = False
                while chan.recv_ready():
                    out.append(chan.recv(1 << 16))
                    busy = True
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(1 << 16))
                    busy = True
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    # sshd may send the exit status before the last output (it reads the child's
                    # pipes after reaping it): only EOF or a closed channel says the output is all
                    # here. A server that never sends EOF gets a short grace period.
                    if chan.eof_received or chan.closed:
                        break
                    exited_at = exited_at or time.monotonic()
                    if time.monotonic() - exited_at > EOF_GRACE_S:
                        break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"remote command ran past {timeout:.0f}s: {shown(command, max_chars=120)}")
                if not busy:
                    select.select([chan], [], [], 0.2)
            return (
                chan.recv_exit_status(),
                b"".join(out).decode("utf-8", "replace"),
                b"".join(err).decode("utf-8", "replace"),
            )
        finally:
            chan.close()

    def sftp_client(self) -> Any:
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def open_sftp(self, *, window_size: int = SFTP_WINDOW) -> Any:
        """A new SFTP session on the same connection (one per file in flight); caller closes it.

        A large channel window lets pipelined writes run ahead of the server's acknowledgements.
        """
        import paramiko

        return paramiko.SFTPClient.from_transport(self.client.get_transport(), window_size=window_size)

    def run_input(
        self,
        command: str,
        data: bytes,
        *,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> tuple[int, str, str]:
        """Run ``command`` with ``data`` on stdin; stream stdout lines to ``on_line``."""
        stdin, stdout, stderr = self.client.exec_command(command, timeout=timeout)
        try:
            stdin.write(data)
            stdin.flush()
        finally:
            stdin.channel.shutdown_write()
        lines: list[str] = []
        for raw in iter(stdout.readline, ""):
            line = raw.rstrip("\n") if isinstance(raw, str) else raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if on_line is not None:
                on_line(line)
        err = stderr.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), "\n".join(lines), err

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None

    def __enter__(self) -> ParamikoShell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Bulk transfer through the OpenSSH client
# --------------------------------------------------------------------------------------------


def known_hosts_pattern(host: str, port: int) -> str:
    """``host`` on port 22, else ``[host]:port``: what OpenSSH, paramiko and asyncssh look up."""
    return host if int(port) == 22 else f"[{host}]:{int(port)}"


@dataclass(frozen=True)
class PinnedHost:
    """Another SSH server of the site, with its host key pinned like the login node's:

    * a bastion (``proxy_jump``): every login to the cluster passes through it; only TCP forwarding
      to the site's hosts is used on it, never a shell;
    * a data-transfer node (``transfer_host``): staging and export run there, on the same file
      systems as the login node, through the same bastion.

    The login is the cluster's (``login`` overrides it), with the same key and certificate.

    :param host: its address.
    :param port: its SSH port.
    :param host_key: its pinned public host key, ``<type> <base64>``.
    :param login: the user there, when it differs from the cluster login.
    """

    host: str
    port: int
    host_key: str
    login: str | None = None

    @property
    def known_hosts_line(self) -> str:
        return f"{known_hosts_pattern(self.host, self.port)} {self.host_key}"

    def describe(self) -> str:
        return known_hosts_pattern(self.host, self.port)


@dataclass(frozen=True)
class OpenSSHPipe:
    """Runs one remote command through the system ``ssh`` client, with bytes streamed to its stdin.

    For bulk data only: OpenSSH encrypts in C with AES-NI, several times faster per core than a
    Python SSH stack (paramiko pays Python per packet). It uses exactly the connection's login: the
    named key file, the pinned host key (written to a private known_hosts file), no agent, no
    ``~/.ssh/config`` (``-F /dev/null``), password prompts off.

    :param host: SSH host.
    :param port: SSH port.
    :param username: login.
    :param key_file: private key file (0600, as OpenSSH requires).
    :param known_hosts_line: ``<pattern> <type> <base64>``, the pinned host key.
    :param connect_timeout: seconds for TCP connect and handshake.
    :param jump: the bastion every connection passes through (a ``ProxyCommand`` running
        ``ssh -W`` with the same strict options, so the bastion's host key is pinned too).
    """

    host: str
    port: int
    username: str
    key_file: str
    known_hosts_line: str
    connect_timeout: int = 30
    jump: PinnedHost | None = None
    #: Cipher preference: AES-GCM first (AES-NI makes it about twice as fast per core as
    #: OpenSSH's default chacha20-poly1305 on x86 login nodes), the default kept as fallback; the
    #: server picks the first it allows.
    ciphers: str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"

    @staticmethod
    def available() -> bool:
        import shutil

        return shutil.which("ssh") is not None

    def _options(self, known_hosts_file: str) -> list[str]:
        """The strict options of every ssh this pipe runs (the cluster's and the bastion's)."""
        return [
            "-F", "/dev/null", "-x", "-a",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts_file}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes",
            "-o", "PasswordAuthentication=no",
            "-o", "KbdInteractiveAuthentication=no",
            "-o", f"ConnectTimeout={int(self.connect_timeout)}",
            "-o", "ServerAliveInterval=30",
            "-o", "ServerAliveCountMax=4",
            "-o", f"Ciphers={self.ciphers}",
            "-o", "LogLevel=ERROR",
            "-i", self.key_file,
        ]

    def argv(self, command: str, known_hosts_file: str) -> list[str]:
        """The ssh command line; ``command`` must be shell-safe text (built with :func:`q`)."""
        opts = self._options(known_hosts_file)
        if self.jump is not None:
            # ProxyCommand, not ProxyJump: ssh passes neither -F nor -o nor -i to a ProxyJump
            # hop, which would then read ~/.ssh/config and skip the pinned host key. ssh runs
            # this through /bin/sh, so every part is quoted.
            hop = ["ssh", *opts, "-p", str(int(self.jump.port)), "-l", self.jump.login or self.username,
                   "-W", f"{self.host}:{int(self.port)}", "--", self.jump.host]
            opts += ["-o", "ProxyCommand=" + q(*hop)]
        return [
            "ssh", *opts, "-T", "-e", "none",
            "-p", str(int(self.port)),
            "-l", self.username,
            "--", self.host, command,
        ]

    def run(
        self, command: str, feed: Callable[[IO[bytes]], None], *, timeout: float | None = None
    ) -> tuple[int, str, str]:
        """Run ``command`` remotely, call ``feed(stdin)`` to write its input, close stdin, wait.

        Returns ``(exit status, stdout, stderr)``; exit 255 is ssh's own failure (connect, host
        key, login). stdout and stderr go to files, so neither can fill up and stall the writer.
        """
        import os
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory(prefix="aifp-ssh-") as tmp:  # 0700
            known = os.path.join(tmp, "known_hosts")
            with open(os.open(known, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
                fh.write(self.known_hosts_line.strip() + "\n")
                if self.jump is not None:
                    fh.write(self.jump.known_hosts_line + "\n")
            with open(os.path.join(tmp, "stdout"), "w+b") as out, open(os.path.join(tmp, "stderr"), "w+b") as err:
                proc = subprocess.Popen(
                    self.argv(command, known), stdin=subprocess.PIPE, stdout=out, stderr=err, close_fds=True,
                )
                assert proc.stdin is not None
                with contextlib.suppress(OSError, ImportError):  # a 1 MiB pipe: fewer stalls, Linux only
                    import fcntl

                    fcntl.fcntl(proc.stdin.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
                try:
                    feed(proc.stdin)
                    proc.stdin.close()
                except BrokenPipeError:  # the remote side ended early: its exit status and stderr say why
                    with contextlib.suppress(BrokenPipeError):
                        proc.stdin.close()
                except BaseException:
                    proc.kill()
                    proc.wait()
                    raise
                try:
                    rc = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise TimeoutError(f"ssh command ran past {timeout}s: {shown(command, max_chars=120)}") from None
                out.seek(0)
                err.seek(0)
                return rc, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
