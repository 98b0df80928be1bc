"""Short-lived SSH user certificates: know when a login's certificate expires, and renew it in time.

Sites that issue SSH certificates (an SSH certificate authority signs the user's public key for a
few hours, or minutes) refuse a login whose certificate has expired, while a session opened before
the expiry lives on. So the factory renews a connection's certificate *before* it expires, each time
it is about to log in and on every poll of a long watch, and a watch whose renewal fails keeps
waiting (and says why) instead of failing a job that is still running (docs/ssh-logins.md).

The rules kept here, once:

* the certificate of key ``K`` is the file ``K-cert.pub`` (:func:`certificate_file`): the name
  OpenSSH, paramiko and asyncssh all load beside a key file, so none of the three SSH paths needs
  to be told about it;
* the renewal is the site's command (:class:`CertificateRenewal`, from the connection's
  ``cert_renew_command``), an argv with ``{key_file}`` and ``{login}`` in it, never a shell line;
* it runs when less than ``min(renew_before_s, validity / 3)`` remains (:meth:`CertificateRenewal.due`);
* two processes never renew one key at once (a lock file beside the key), and the second one
  finds the fresh certificate and does nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifactory.errors import FactoryError
from aifactory.text import shown

__all__ = [
    "CertificateRenewal",
    "CertificateState",
    "CertificateUnavailable",
    "certificate_file",
    "ensure_fresh",
    "read_certificate",
]

#: The placeholders a renewal command may use (anything else in braces is refused when parsed).
PLACEHOLDERS = ("key_file", "login")
#: Default lead time: renew this long before the expiry (or a third of the validity, if shorter).
DEFAULT_RENEW_BEFORE_S = 600.0
#: Default time the renewal command may take.
DEFAULT_RENEW_TIMEOUT_S = 60.0


class CertificateUnavailable(FactoryError):
    """No valid certificate for a login right now, and renewing it failed: wait and retry.

    Not a refused login: the key, host key and account are fine; the site's CA (or the renewal
    command) is what failed. A running job is not affected by it.
    """


def certificate_file(key_file: str | os.PathLike[str]) -> Path:
    """The certificate of a private key file: ``<key_file>-cert.pub`` (OpenSSH's own rule)."""
    return Path(f"{os.fspath(key_file)}-cert.pub")


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class CertificateState:
    """What a certificate file says about itself."""

    path: str
    key_id: str
    principals: tuple[str, ...]
    valid_after: float
    valid_before: float

    @property
    def validity_s(self) -> float:
        return max(self.valid_before - self.valid_after, 0.0)

    def remaining_s(self, now: float) -> float:
        return self.valid_before - now

    def describe(self, now: float, *, left: bool = True) -> str:
        """``left=False`` leaves the seconds out (a message repeated while waiting stays the same)."""
        remaining = self.remaining_s(now)
        if remaining <= 0:
            return f"certificate {self.path} (id {self.key_id!r}) expired at {_when(self.valid_before)}"
        return (f"certificate {self.path} (id {self.key_id!r}) valid until {_when(self.valid_before)}"
                + (f" ({remaining:.0f}s left)" if left else ""))


_VALID = re.compile(r"^Valid:\s+(?:from\s+(\S+)\s+to\s+(\S+)|(forever)|after\s+(\S+)|before\s+(\S+))$")


def _epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()


def parse_listing(path: str, text: str) -> CertificateState:
    """Parse ``ssh-keygen -L -f <cert>`` output (run with ``TZ=UTC``: it prints times without a zone).

    :raises CertificateUnavailable: when the text holds no key id or validity.
    """
    key_id, principals, after, before = None, [], None, None
    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("Key ID:"):
            key_id = line.split(":", 1)[1].strip().strip('"')
        elif line.startswith("Valid:"):
            m = _VALID.match(line)
            if m:
                frm, to, forever, aft, bef = m.groups()
                after = _epoch(frm or aft) if (frm or aft) else 0.0
                before = _epoch(to or bef) if (to or bef) else (float("inf") if forever or aft else None)
        elif line.startswith("Principals:"):
            for nxt in lines[i + 1:]:
                if not nxt or ":" in nxt:
                    break
                if nxt != "(none)":
                    principals.append(nxt)
    if key_id is None or after is None or before is None:
        raise CertificateUnavailable(f"certificate {path}: ssh-keygen -L gave no key id or validity "
                                     f"({shown(text, max_chars=200)!r}); renew it with the connection's "
                                     "cert_renew_command")
    return CertificateState(path=path, key_id=key_id, principals=tuple(principals), valid_after=after,
                            valid_before=before)


def read_certificate(path: str | os.PathLike[str]) -> CertificateState | None:
    """Read an OpenSSH user certificate file with ``ssh-keygen -L``; ``None`` when there is none.

    (asyncssh and paramiko load certificates but keep their validity private; OpenSSH's own tool
    prints it.) An unreadable file raises :class:`CertificateUnavailable` naming it.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _READ_CACHE.get(str(p))
    if hit is not None and hit[0] == stamp:
        return hit[1]  # every poll of every watch asks; the file changes once per renewal
    try:
        out = subprocess.run(["ssh-keygen", "-L", "-f", str(p)], capture_output=True, text=True, timeout=30,
                             check=False, env={**os.environ, "TZ": "UTC"}, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CertificateUnavailable(f"cannot read certificate {p}: ssh-keygen -L failed ({exc}); install "
                                     "the OpenSSH client on this machine") from exc
    if out.returncode != 0:
        raise CertificateUnavailable(f"certificate {p} cannot be read (ssh-keygen -L: {out.stderr.strip()[:200]}); "
                                     "renew it with the connection's cert_renew_command")
    state = parse_listing(str(p), out.stdout)
    _READ_CACHE[str(p)] = (stamp, state)
    return state


#: path -> ((inode, size, mtime_ns), state): a renewal replaces the file (a new inode), so a hit is current
_READ_CACHE: dict[str, tuple[tuple[int, int, int], CertificateState]] = {}


@dataclass(frozen=True)
class CertificateRenewal:
    """How one connection's certificate is renewed (site-specific: the connection says).

    :param command: argv; ``{key_file}`` and ``{login}`` are replaced (e.g. a script that asks the
        site's CA to sign ``{key_file}.pub`` for principal ``{login}`` and writes ``{key_file}-cert.pub``).
    :param renew_before_s: renew when less than this remains (or a third of the validity, if less).
    :param timeout_s: how long the command may take.
    """

    command: tuple[str, ...]
    renew_before_s: float = DEFAULT_RENEW_BEFORE_S
    timeout_s: float = DEFAULT_RENEW_TIMEOUT_S

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any], *, conn_id: str = "?") -> CertificateRenewal | None:
        """From a connection's extras (``cert_renew_command``, ``cert_renew_before_s``,
        ``cert_renew_timeout_s``); ``None`` when the connection logs in with a plain key."""
        raw = extra.get("cert_renew_command")
        if raw in (None, "", []):
            return None
        if isinstance(raw, str) or not isinstance(raw, Sequence) or not all(isinstance(a, str) and a for a in raw):
            raise FactoryError(f"connection {conn_id!r}: cert_renew_command must be a list of non-empty strings "
                               "(an argv, never a shell line), e.g. [\"/usr/local/bin/site-cert\", \"{key_file}\"]")
        for arg in raw:
            try:
                arg.format(**{k: "" for k in PLACEHOLDERS})
            except (KeyError, IndexError, ValueError) as exc:
                raise FactoryError(f"connection {conn_id!r}: cert_renew_command argument {arg!r} uses a "
                                   f"placeholder other than {{{'}, {'.join(PLACEHOLDERS)}}} ({exc})") from exc
        try:
            before = float(extra.get("cert_renew_before_s", DEFAULT_RENEW_BEFORE_S))
            timeout = float(extra.get("cert_renew_timeout_s", DEFAULT_RENEW_TIMEOUT_S))
        except (TypeError, ValueError) as exc:
            raise FactoryError(f"connection {conn_id!r}: cert_renew_before_s and cert_renew_timeout_s are "
                               f"seconds ({exc})") from exc
        if before <= 0 or timeout <= 0:
            raise FactoryError(f"connection {conn_id!r}: cert_renew_before_s and cert_renew_timeout_s must be > 0")
        return cls(command=tuple(raw), renew_before_s=before, timeout_s=timeout)

    def argv(self, key_file: str, login: str) -> list[str]:
        return [a.format(key_file=key_file, login=login) for a in self.command]

    def due(self, state: CertificateState | None, now: float) -> bool:
        """Renew now? (none yet, expired, or less than the lead time left)."""
        if state is None:
            return True
        lead = min(self.renew_before_s, state.validity_s / 3)
        return state.remaining_s(now) <= lead


def _run_renewal(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                           stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        return 127, str(exc)
    except subprocess.TimeoutExpired:
        return 124, f"ran past {timeout:.0f}s"
    return p.returncode, (p.stderr.strip() or p.stdout.strip())


@contextlib.contextmanager
def _renewal_lock(key_file: str) -> Iterator[None]:
    """One renewal of a key at a time, across processes (workers and triggerers share the keys)."""
    path = f"{key_file}-cert.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Freshness:
    """What :func:`ensure_fresh` found and did; ``message`` is for the log (``None``: nothing to say)."""

    state: CertificateState | None
    renewed: bool
    message: str | None


def ensure_fresh(
    key_file: str,
    login: str,
    renewal: CertificateRenewal,
    *,
    now: Callable[[], float] = time.time,
    run: Callable[[list[str], float], tuple[int, str]] = _run_renewal,
) -> Freshness:
    """Renew ``key_file``'s certificate when it is due; say what happened.

    :raises CertificateUnavailable: the certificate is missing or expired and the renewal failed
        (retry later; nothing else is wrong). A failed renewal while the certificate is still valid
        is only reported in ``message``: logins keep working until it expires.
    """
    cert = certificate_file(key_file)
    state = read_certificate(cert)
    if not renewal.due(state, now()):
        return Freshness(state, False, None)
    memo = (key_file, renewal.command)
    failed = _FAILED.get(memo)
    if failed is not None and now() - failed[0] < RETRY_AFTER_S and failed[1] == (state.key_id if state else None):
        # the same certificate's renewal failed moments ago: say so again, without running it again
        if state is not None and state.remaining_s(now()) > 0:
            return Freshness(state, False, failed[2])
        raise CertificateUnavailable(failed[3])
    with _renewal_lock(key_file):
        state = read_certificate(cert)  # another process may have renewed it meanwhile
        if not renewal.due(state, now()):
            return Freshness(state, False, None)
        before = state.describe(now()) if state else f"no certificate {cert} yet"
        argv = renewal.argv(key_file, login)
        rc, detail = run(argv, renewal.timeout_s)
        fresh = read_certificate(cert) if rc == 0 else state
        if rc == 0 and fresh is not None and not renewal.due(fresh, now()):
            _FAILED.pop(memo, None)
            return Freshness(fresh, True, f"SSH certificate renewed for {login}: {before}; now "
                                          f"{fresh.describe(now())}")
        why = (f"the renewal command {shown(' '.join(argv), max_chars=160)} exited {rc}: "
               f"{shown(detail, max_chars=300) or '(no output)'}" if rc != 0 else
               f"the renewal command {shown(' '.join(argv), max_chars=160)} succeeded but left "
               f"{fresh.describe(now()) if fresh else 'no certificate'}")
        warning = (f"SSH certificate of {login} is due for renewal and {why}; logins keep working until it "
                   f"expires ({state.describe(now(), left=False) if state else 'none'}); will try again in "
                   f"{RETRY_AFTER_S:.0f}s")
        error = (f"no valid SSH certificate for {login}: {state.describe(now()) if state else before}, and {why}. "
                 "Fix the site's certificate authority or the connection's cert_renew_command; the factory "
                 f"retries the renewal every {RETRY_AFTER_S:.0f}s and waits meanwhile (a running job is not affected)")
        _FAILED[memo] = (now(), state.key_id if state else None, warning, error)
        if state is not None and state.remaining_s(now()) > 0:
            return Freshness(state, False, warning)
        raise CertificateUnavailable(error)


#: a failed renewal of a key is not run again for this long (every poll of every watch asks)
RETRY_AFTER_S = 30.0
#: (key file, command) -> (when, the certificate's key id then, the warning, the error) of its last failed renewal
_FAILED: dict[tuple[str, tuple[str, ...]], tuple[float, str | None, str, str]] = {}
