"""SSH access to an HPC cluster, sync (workers) and async (triggerer), from ONE set of settings.

``docs/failure-modes.md``, 9: the provider's ``SSHHook`` (paramiko) and ``SSHHookAsync`` (asyncssh) read the
same Airflow connection differently. In particular ``SSHHookAsync`` writes the pinned host key as
``<host> <key>``, which asyncssh never matches for a non-default port (it looks up
``[host]:port``), so a trigger on port 2222 cannot verify the host and the task stays deferred.
Here both sides are built from one :class:`SSHEndpoint` parsed once from the connection:

* sync: the provider's ``SSHHook`` (paramiko, pinned ``host_key`` -> RejectPolicy for anything else);
  we check that it resolved to the same host, port, user, key file and host key;
* async: ``asyncssh.connect`` with a ``known_hosts`` built from the same host key under the
  correct ``[host]:port`` pattern, no ``~/.ssh/config``, no agent.

Host-key checking cannot be turned off: a connection without ``host_key`` or with
``no_host_key_check: true`` is refused.

Two login mechanics of real sites come from the same connection (docs/ssh-logins.md):

* ``proxy_jump``: ``{"host", "port", "host_key"[, "login"]}``, a bastion every login passes
  through, on all three paths (paramiko over a ``direct-tcpip`` channel of a bastion connection,
  asyncssh with ``tunnel=``, OpenSSH with a quoted ``ProxyCommand``), its host key pinned too;
* ``cert_renew_command``: the login uses the short-lived certificate ``<key_file>-cert.pub`` (all
  three stacks load it beside the key), renewed by that command before it expires
  (:mod:`aifactory.hpc.certificates`). With no valid certificate and a failing renewal, a connect
  raises :class:`SSHCredentialPending`: a transient error (a watch waits), not a refused login.

Connects are retried with exponential backoff and jitter (docs/failure-modes.md, 10: sshd ``MaxStartups``
drops handshakes when many tasks connect at once: "Error reading SSH protocol banner"). Wrong
host keys and refused authentication are never retried: they will not fix themselves.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, BaseHook

from aifactory.errors import FactoryError
from aifactory.hpc.certificates import CertificateRenewal, CertificateUnavailable, Freshness, ensure_fresh
from aifactory.hpc.remote import OpenSSHPipe, ParamikoShell, PinnedHost, known_hosts_pattern, set_nodelay

if TYPE_CHECKING:
    import asyncssh
    import paramiko
    from airflow.providers.ssh.hooks.ssh import SSHHook

__all__ = ["FactorySSHHook", "SSHCredentialPending", "SSHEndpoint", "SSHPermanentError", "backoff_delay"]


class SSHPermanentError(AirflowException):
    """A wrong host key, a refused login or a bad connection definition: retrying cannot help."""


class SSHCredentialPending(AirflowException):
    """No valid login certificate right now and its renewal failed: retry later (nothing is refused)."""

#: Host key types we accept in the connection's ``host_key`` extra.
_HOST_KEY_TYPES = {
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
}


def backoff_delay(attempt: int, *, base: float = 1.0, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter on top, so that many retrying tasks do not stampede."""
    delay = min(base * 2 ** max(attempt - 1, 0), cap)
    return delay + random.uniform(0, delay)


@dataclass(frozen=True)
class SSHEndpoint:
    """Everything needed to reach a cluster, parsed once from the Airflow connection.

    :param conn_id: the Airflow connection id (for messages).
    :param host: SSH host.
    :param port: SSH port.
    :param username: login.
    :param key_file: path of the private key on the Airflow machines (never copied anywhere).
    :param host_key: the pinned host public key, ``<type> <base64>``.
    :param jump: the bastion every login passes through (extra ``proxy_jump``), or ``None``.
    :param renewal: how the login's certificate is renewed (extra ``cert_renew_command``), or
        ``None`` for a plain key.
    :param transfer: the site's data-transfer node (extra ``transfer_host``), or ``None``: bulk data
        (staging, export) goes through :meth:`for_transfer`.
    """

    conn_id: str
    host: str
    port: int
    username: str
    key_file: str | None
    host_key: str
    jump: PinnedHost | None = None
    renewal: CertificateRenewal | None = None
    transfer: PinnedHost | None = None

    @classmethod
    def from_connection(cls, conn: Any, extra: dict[str, Any] | None = None) -> SSHEndpoint:
        """Build from an Airflow ``Connection`` (``extra`` may be passed pre-parsed in async code).

        :raises SSHPermanentError: if the host key is not pinned or host-key checking is disabled.
        """
        extra = dict(extra if extra is not None else (conn.extra_dejson or {}))
        conn_id = getattr(conn, "conn_id", "?")
        if str(extra.get("no_host_key_check", "false")).lower() == "true":
            raise SSHPermanentError(
                f"connection {conn_id!r} sets no_host_key_check=true; the factory always verifies the "
                "cluster's host key. Remove it and set host_key to the cluster's public host key"
            )
        host_key = _pinned_key(extra.get("host_key"), f"connection {conn_id!r} needs extra.host_key")
        if not conn.host or not conn.login:
            raise SSHPermanentError(f"connection {conn_id!r} needs host and login")
        if extra.get("private_key"):
            # Keys live in files on the Airflow machines; a key inside the connection would be
            # copied into every process environment. Not forbidden by Airflow, refused by us.
            raise SSHPermanentError(
                f"connection {conn_id!r}: use extra.key_file (a path) instead of extra.private_key"
            )
        key_file = extra.get("key_file") or None
        try:
            renewal = CertificateRenewal.from_extra(extra, conn_id=conn_id)
        except FactoryError as exc:
            raise SSHPermanentError(str(exc)) from exc
        if renewal is not None and not key_file:
            raise SSHPermanentError(f"connection {conn_id!r} sets cert_renew_command but no key_file: the "
                                    "certificate is <key_file>-cert.pub")
        return cls(
            conn_id=conn_id,
            host=str(conn.host),
            port=int(conn.port or 22),
            username=str(conn.login),
            key_file=key_file,
            host_key=host_key,
            jump=_pinned_host(extra.get("proxy_jump"), conn_id, "proxy_jump"),
            renewal=renewal,
            transfer=_pinned_host(extra.get("transfer_host"), conn_id, "transfer_host"),
        )

    def for_transfer(self) -> SSHEndpoint:
        """The same login on the site's data-transfer node (``transfer_host``), through the same
        bastion; the login node itself when the site has none."""
        t = self.transfer
        if t is None:
            return self
        return replace(self, host=t.host, port=t.port, host_key=t.host_key, username=t.login or self.username,
                       transfer=None)

    @property
    def known_hosts_pattern(self) -> str:
        return known_hosts_pattern(self.host, self.port)

    @property
    def known_hosts_line(self) -> str:
        return f"{self.known_hosts_pattern} {self.host_key}"

    @property
    def via(self) -> str:
        """For messages: ``[h]:p`` or ``[h]:p via [bastion]:p``."""
        return self.known_hosts_pattern + (f" via {self.jump.describe()}" if self.jump else "")

    def fresh_certificate(self) -> Freshness | None:
        """Renew the login's certificate when due (``None``: the login uses a plain key).

        :raises SSHCredentialPending: no valid certificate, and the renewal failed.
        """
        if self.renewal is None or not self.key_file:
            return None
        try:
            return ensure_fresh(self.key_file, self.username, self.renewal)
        except CertificateUnavailable as exc:
            raise SSHCredentialPending(f"cannot log in to {self.via} as {self.username}: {exc}") from exc


def _pinned_key(raw: Any, what: str) -> str:
    parts = str(raw or "").split()
    if len(parts) < 2 or parts[0] not in _HOST_KEY_TYPES:
        raise SSHPermanentError(
            f"{what} = '<type> <base64>' (one of {sorted(_HOST_KEY_TYPES)}), e.g. the output of "
            "'ssh-keyscan -p PORT HOST'"
        )
    return " ".join(parts[:2])


def _paramiko_key(host_key: str) -> Any:
    """A pinned ``'<type> <base64>'`` host key (checked by :func:`_pinned_key`) as paramiko's key object."""
    import base64

    import paramiko

    key_type, key_b64 = host_key.split()
    return paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64))


def _pinned_host(raw: Any, conn_id: str, field: str) -> PinnedHost | None:
    """A connection's ``proxy_jump`` or ``transfer_host`` extra: ``{"host", "port", "host_key"[, "login"]}``
    or JSON of it."""
    if raw in (None, "", {}):
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise SSHPermanentError(f"connection {conn_id!r}: extra.{field} is not JSON ({exc})") from exc
    if not isinstance(raw, dict) or not raw.get("host"):
        raise SSHPermanentError(f"connection {conn_id!r}: extra.{field} must be an object "
                                '{"host": ..., "port": ..., "host_key": "<type> <base64>"}')
    unknown = set(raw) - {"host", "port", "host_key", "login"}
    if unknown:
        raise SSHPermanentError(f"connection {conn_id!r}: extra.{field} has unknown fields {sorted(unknown)} "
                                "(host, port, host_key, login)")
    try:
        port = int(raw.get("port") or 22)
    except (TypeError, ValueError) as exc:
        raise SSHPermanentError(f"connection {conn_id!r}: extra.{field}.port is not a port ({exc})") from exc
    return PinnedHost(
        host=str(raw["host"]),
        port=port,
        host_key=_pinned_key(raw.get("host_key"), f"connection {conn_id!r} needs extra.{field}.host_key"),
        login=str(raw["login"]) if raw.get("login") else None,
    )


class FactorySSHHook(BaseHook):
    """SSH to one HPC cluster: commands, SFTP, sync and async, with a pinned host key.

    One hook holds at most one paramiko connection, reused for every command and SFTP session of
    a task (one handshake per task, not per command).

    .. note::
        Many parallel tasks against one login node still open one connection each. Use an Airflow
        pool per cluster to bound them; the connect retries here only smooth over bursts.

    :param ssh_conn_id: the Airflow connection (from the cluster spec's ``ssh_conn_id``).
    :param conn_timeout: TCP connect and banner timeout, seconds.
    :param connect_attempts: connection attempts before giving up (transient errors only).
    :param retry_base_delay: first backoff delay, seconds (doubles per attempt, capped at 30 s).
    :param keepalive_interval: SSH keepalive, seconds (0 disables).
    :param transfer: log in to the site's data-transfer node (the connection's ``transfer_host``)
        instead of the login node: staging and export move bulk data there. Submitting and
        watching jobs always use the login node.
    """

    conn_name_attr = "ssh_conn_id"
    default_conn_name = "ssh_default"
    conn_type = "ssh"
    hook_name = "AI Factory SSH"

    def __init__(
        self,
        *,
        ssh_conn_id: str,
        conn_timeout: float = 30.0,
        connect_attempts: int = 5,
        retry_base_delay: float = 1.0,
        keepalive_interval: int = 30,
        transfer: bool = False,
    ) -> None:
        super().__init__()
        self.ssh_conn_id = ssh_conn_id
        self.transfer = transfer
        self.conn_timeout = conn_timeout
        self.connect_attempts = max(1, connect_attempts)
        self.retry_base_delay = retry_base_delay
        self.keepalive_interval = keepalive_interval
        self._client: paramiko.SSHClient | None = None
        self._jump_client: paramiko.SSHClient | None = None

    # ---------------------------------------------------------------------------------------------
    # The one source of truth
    # ---------------------------------------------------------------------------------------------

    @cached_property
    def endpoint(self) -> SSHEndpoint:
        """The endpoint, read synchronously (workers). Do not use from the triggerer's event loop."""
        ep = SSHEndpoint.from_connection(self.get_connection(self.ssh_conn_id))
        return ep.for_transfer() if self.transfer else ep

    async def aendpoint(self) -> SSHEndpoint:
        """The endpoint, read without blocking the event loop (triggerer)."""
        if "endpoint" in self.__dict__:
            return self.__dict__["endpoint"]
        from airflow.providers.common.compat.connection import get_async_connection

        conn = await get_async_connection(self.ssh_conn_id)
        try:
            from airflow.providers.common.compat.connection import get_async_extra_dejson

            extra = await get_async_extra_dejson(conn)
        except ImportError:  # older compat package
            extra = conn.extra_dejson
        endpoint = SSHEndpoint.from_connection(conn, extra)
        if self.transfer:
            endpoint = endpoint.for_transfer()
        self.__dict__["endpoint"] = endpoint
        return endpoint

    # ---------------------------------------------------------------------------------------------
    # Sync (paramiko through the provider's SSHHook)
    # ---------------------------------------------------------------------------------------------

    @cached_property
    def ssh_hook(self) -> SSHHook:
        """The provider's hook, checked against :attr:`endpoint` so the two cannot disagree."""
        from airflow.providers.ssh.hooks.ssh import SSHHook

        ep = self.endpoint
        hook = SSHHook(
            ssh_conn_id=self.ssh_conn_id,
            # the endpoint's host (the data-transfer node's, for a transfer hook), not only the connection's
            remote_host=ep.host, port=ep.port, username=ep.username,
            conn_timeout=int(self.conn_timeout),
            banner_timeout=float(self.conn_timeout),
            keepalive_interval=self.keepalive_interval,
            # Our own retry loop below distinguishes permanent from transient errors.
            conn_retry_attempts=1,
            no_host_key_check=False,
        )
        got = (hook.remote_host, int(hook.port or 22), hook.username, hook.key_file)
        want = (ep.host, ep.port, ep.username, ep.key_file)
        if got != want or hook.host_key is None or hook.no_host_key_check:
            raise SSHPermanentError(
                f"SSHHook resolved connection {self.ssh_conn_id!r} to {got} with host_key="
                f"{'set' if hook.host_key else 'unset'}, expected {want} with a pinned host key; "
                "check ~/.ssh/config on this machine for overrides"
            )
        if self.transfer:
            hook.host_key = _paramiko_key(ep.host_key)
        if hook.host_proxy_cmd:
            raise SSHPermanentError(
                f"~/.ssh/config on this machine sets a ProxyCommand for {ep.host}; the factory reaches "
                f"clusters only as connection {self.ssh_conn_id!r} says (extra.proxy_jump). Remove it"
            )
        # Never fall back to keys found in ~/.ssh or an agent: the connection names the key.
        hook.look_for_keys = False
        return hook

    def _fresh_certificate(self) -> None:
        """Renew the login certificate when due, saying so (sync side)."""
        fresh = self.endpoint.fresh_certificate()
        if fresh is not None and fresh.message:
            (self.log.info if fresh.renewed else self.log.warning)("%s", fresh.message)

    def _jump_channel(self) -> Any:
        """Log in to the bastion (pinned host key, same key and certificate); return a
        ``direct-tcpip`` channel to the cluster's login node, for paramiko's ``sock=``."""
        import paramiko

        ep = self.endpoint
        jump = ep.jump
        assert jump is not None
        client = paramiko.SSHClient()
        client.get_host_keys().add(known_hosts_pattern(jump.host, jump.port), jump.host_key.split()[0],
                                   _paramiko_key(jump.host_key))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        self._jump_client = client
        client.connect(
            jump.host, port=jump.port, username=jump.login or ep.username, key_filename=ep.key_file,
            look_for_keys=False, allow_agent=False, timeout=self.conn_timeout,
            banner_timeout=self.conn_timeout, auth_timeout=self.conn_timeout,
        )
        set_nodelay(client)
        transport = client.get_transport()
        assert transport is not None
        if self.keepalive_interval:
            transport.set_keepalive(self.keepalive_interval)
        return transport.open_channel("direct-tcpip", (ep.host, ep.port), ("127.0.0.1", 0),
                                      timeout=self.conn_timeout)

    def _close_jump(self) -> None:
        if self._jump_client is not None:
            self._jump_client.close()
            self._jump_client = None

    def get_conn(self) -> paramiko.SSHClient:
        """Return a connected paramiko client (reused while alive), retrying transient failures.

        :raises SSHCredentialPending: the login needs a certificate, none is valid and renewing it
            failed (transient: the task's retry, or a later poll, tries again).
        """
        import paramiko

        if self._client is not None:
            transport = self._client.get_transport()
            if transport is not None and transport.is_active():
                return self._client
            self.close()
        ep = self.endpoint
        last: Exception | None = None
        for attempt in range(1, self.connect_attempts + 1):
            try:
                self._fresh_certificate()
                if ep.jump is not None:
                    self.ssh_hook.host_proxy = self._jump_channel()  # SSHHook passes it as sock=
                self._client = self.ssh_hook.get_conn()
                set_nodelay(self._client)
                self.log.info("SSH: logged in to %s as %s%s", ep.via, ep.username,
                              " (certificate)" if ep.renewal else "")
                return self._client
            except (paramiko.BadHostKeyException, paramiko.AuthenticationException) as exc:
                self._close_jump()
                raise SSHPermanentError(
                    f"SSH to {ep.via} as {ep.username} refused: "
                    f"{exc}. The host key or the login key does not match the connection "
                    f"{self.ssh_conn_id!r}; this is not retried"
                ) from exc
            except (TimeoutError, paramiko.SSHException, paramiko.ChannelException, OSError, EOFError) as exc:
                self._close_jump()
                last = exc
                if attempt == self.connect_attempts:
                    break
                delay = backoff_delay(attempt, base=self.retry_base_delay)
                self.log.warning(
                    "SSH connect to %s failed (attempt %d/%d): %s; retrying in %.1fs "
                    "(sshd MaxStartups under fan-out? consider a pool for this cluster)",
                    ep.via, attempt, self.connect_attempts, exc, delay,
                )
                time.sleep(delay)
        raise AirflowException(
            f"could not connect to {ep.via} after {self.connect_attempts} "
            f"attempts: {last}. Check that the cluster's sshd (and bastion) is up and not throttling (MaxStartups)"
        )

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
        """Run ``command`` through the user's login shell; return ``(exit status, stdout, stderr)``.

        The command must already be safe shell text (build it with ``aifactory.hpc.slurm``).
        """
        # Not SSHHook.exec_ssh_client_command: it logs every line of stdout (poll output, base64
        # log chunks) into the task log.
        return ParamikoShell(self.get_conn()).run(command, timeout=timeout)

    @contextmanager
    def sftp(self) -> Iterator[paramiko.SFTPClient]:
        """An SFTP session on the shared connection, closed on exit."""
        client = self.get_conn()
        sftp = client.open_sftp()
        try:
            yield sftp
        finally:
            sftp.close()

    @contextmanager
    def shell(self) -> Iterator[ParamikoShell]:
        """The core's :class:`aifactory.hpc.remote.RemoteShell` over this hook's verified connection.

        Staging and export take this; the connection is closed on exit.
        """
        sh = ParamikoShell(self.get_conn(), bulk=self.bulk_pipe())
        try:
            yield sh
        finally:
            sh.close()
            self.close()

    def bulk_pipe(self) -> OpenSSHPipe | None:
        """The same login through the OpenSSH client for bulk transfers, when this machine has
        ``ssh`` and the connection names a key file; else ``None`` (staging then uses SFTP)."""
        ep = self.endpoint
        if not ep.key_file or not OpenSSHPipe.available():
            return None
        try:
            loose = os.stat(ep.key_file).st_mode & 0o077
        except OSError:
            return None  # the paramiko login reports the missing key
        if loose:
            self.log.warning(
                "key file %s is readable by group/others; the ssh client refuses such keys, so bulk "
                "transfers use SFTP (about half the speed). Fix: chmod 600 %s", ep.key_file, ep.key_file,
            )
            return None
        return OpenSSHPipe(
            host=ep.host, port=ep.port, username=ep.username, key_file=ep.key_file,
            known_hosts_line=ep.known_hosts_line, connect_timeout=int(self.conn_timeout), jump=ep.jump,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            if "ssh_hook" in self.__dict__:
                self.ssh_hook.client = None
        self._close_jump()

    # ---------------------------------------------------------------------------------------------
    # Async (asyncssh, for the triggerer)
    # ---------------------------------------------------------------------------------------------

    async def arefresh_certificate(self) -> Freshness | None:
        """Renew the login certificate when due, off the event loop (``None``: a plain key).

        The caller logs ``message``: in the triggerer, the trigger's log is the task's log.

        :raises SSHCredentialPending: no valid certificate, and the renewal failed.
        """
        ep = await self.aendpoint()
        return await asyncio.to_thread(ep.fresh_certificate)

    async def aconnect(self) -> asyncssh.SSHClientConnection:
        """Open an asyncssh connection with the same host, user, key and pinned host key.

        The caller owns the connection (``conn.close()``; it closes the bastion's too). Transient
        failures are retried with backoff; a host key mismatch or refused login raises at once.

        :raises SSHCredentialPending: see :meth:`get_conn`.
        """
        import asyncssh

        ep = await self.aendpoint()

        def options(host: str, port: int, username: str, known_hosts_line: str) -> dict[str, Any]:
            return dict(
                host=host, port=port, username=username,
                client_keys=[ep.key_file] if ep.key_file else None,  # and <key_file>-cert.pub
                known_hosts=asyncssh.import_known_hosts(known_hosts_line + "\n"),
                # One source of truth: no ~/.ssh/config, no agent, no default identity files.
                config=[], agent_path=None,
                connect_timeout=self.conn_timeout, login_timeout=self.conn_timeout,
                keepalive_interval=self.keepalive_interval or 0,
            )

        last: Exception | None = None
        for attempt in range(1, self.connect_attempts + 1):
            tunnel = None
            try:
                fresh = await self.arefresh_certificate()
                if fresh is not None and fresh.message:
                    (self.log.info if fresh.renewed else self.log.warning)("%s", fresh.message)
                if ep.jump is not None:
                    jump = ep.jump
                    tunnel = await asyncssh.connect(**options(jump.host, jump.port, jump.login or ep.username,
                                                              jump.known_hosts_line))
                conn = await asyncssh.connect(tunnel=tunnel or (),
                                              **options(ep.host, ep.port, ep.username, ep.known_hosts_line))
                if tunnel is not None:
                    conn.set_tunnel(tunnel)  # closing conn closes the bastion's connection too
                self.log.info("SSH (async): logged in to %s as %s%s", ep.via, ep.username,
                              " (certificate)" if ep.renewal else "")
                return conn
            except (asyncssh.HostKeyNotVerifiable, asyncssh.PermissionDenied) as exc:
                await _aclose(tunnel)
                raise SSHPermanentError(
                    f"SSH to {ep.via} as {ep.username} refused: {exc}. The host key "
                    f"or login key does not match connection {self.ssh_conn_id!r}; not retried"
                ) from exc
            except (TimeoutError, OSError, asyncssh.Error) as exc:
                await _aclose(tunnel)
                last = exc
                if attempt == self.connect_attempts:
                    break
                delay = backoff_delay(attempt, base=self.retry_base_delay)
                self.log.warning(
                    "async SSH connect to %s failed (attempt %d/%d): %s; retrying in %.1fs",
                    ep.via, attempt, self.connect_attempts, exc, delay,
                )
                await asyncio.sleep(delay)
        raise AirflowException(
            f"could not connect to {ep.via} after {self.connect_attempts} attempts: {last}"
        )

    @staticmethod
    async def run_on(
        conn: asyncssh.SSHClientConnection, command: str, timeout: float = 60.0
    ) -> tuple[int, str, str]:
        """Run ``command`` on an open asyncssh connection; ``(exit status, stdout, stderr)``."""
        result = await conn.run(command, check=False, timeout=timeout)
        out, err = result.stdout or "", result.stderr or ""
        if isinstance(out, bytes):
            out = out.decode("utf-8", "replace")
        if isinstance(err, bytes):
            err = err.decode("utf-8", "replace")
        # exit_status is None when the command died by a signal; report it as failure.
        rc = result.exit_status if result.exit_status is not None else 255
        return rc, str(out), str(err)

    async def run_async(self, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
        """Connect, run one command, close. Pollers that run many commands should hold a
        connection from :meth:`aconnect` and use :meth:`run_on` instead."""
        conn = await self.aconnect()
        try:
            return await self.run_on(conn, command, timeout)
        finally:
            conn.close()
            try:
                await conn.wait_closed()
            except Exception:  # best effort: the command already ran
                pass


async def _aclose(conn: Any) -> None:
    """Close an asyncssh connection if there is one (best effort)."""
    if conn is None:
        return
    conn.close()
    try:
        await conn.wait_closed()
    except Exception:  # noqa: BLE001 - teardown of a connection that already failed
        pass
