"""The doctor's verdicts: what a probe's result or error means, and what to fix (pure, no Airflow).

:mod:`aifactory.platform.doctor` runs the probes (TCP, SSH, sacctmgr, S3) and hands every answer
here. Each verdict is one :class:`Finding`: a check, its target, OK or FAIL, and a sentence that
says what was verified or what is wrong and what to do. The two failures an operator confuses most
are told apart on purpose: a cluster that presents another host key than the connection pins
(``host key mismatch``: someone may be in the middle, or the cluster was reinstalled) and a cluster
that does not answer at all (``unreachable``: sshd or the network).
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aifactory.data.s3 import _error_code
from aifactory.hpc.site import SiteEnvironment
from aifactory.text import printable

OK, FAIL = "OK", "FAIL"


@dataclass(frozen=True)
class Finding:
    """One row of the doctor's table."""

    check: str
    target: str
    ok: bool
    #: OK: what was verified; FAIL: what is wrong and what to fix
    detail: str

    @property
    def verdict(self) -> str:
        return OK if self.ok else FAIL


# --------------------------------------------------------------------------------------------
# Host keys
# --------------------------------------------------------------------------------------------


def fingerprint(blob: bytes) -> str:
    """OpenSSH's fingerprint of a public key blob: ``SHA256:<base64, no padding>`` (``ssh-keygen -l``)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def pinned_fingerprint(host_key: str) -> str:
    """The fingerprint of a connection's ``extra.host_key`` (``<type> <base64>``)."""
    parts = (host_key or "").split()
    try:
        return f"{parts[0]} {fingerprint(base64.b64decode(parts[1], validate=True))}"
    except (IndexError, ValueError, binascii.Error):
        return f"unparsable host_key {printable(host_key, max_chars=60)!r}"


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything it was raised from (``__cause__``, else ``__context__``)."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


# --------------------------------------------------------------------------------------------
# Reachability and SSH
# --------------------------------------------------------------------------------------------


def unreachable(exc: BaseException, host: str, port: int) -> str:
    """Why a TCP connect to ``host:port`` failed, and what to check."""
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"unreachable: the host name of {where} does not resolve ({exc}); check the connection's host"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return (f"unreachable: connection refused at {where}; check that the cluster's sshd runs and listens "
                "there (make status) and the connection's port")
    if isinstance(exc, TimeoutError | socket.timeout):
        return (f"unreachable: connection timed out at {where}; check the network and firewall between "
                "Airflow and the cluster, and the connection's host")
    return f"unreachable: {printable(exc, max_chars=300)} at {where}; check the cluster's sshd and the network"


@dataclass(frozen=True)
class SSHTarget:
    """What the doctor knows of one SSH connection (from the Airflow connection)."""

    conn_id: str
    host: str
    port: int
    login: str
    key_file: str | None
    host_key: str

    @property
    def where(self) -> str:
        return f"{self.conn_id} ({self.login}@{self.host}:{self.port})"


def ssh_findings(target: SSHTarget, exc: BaseException | None) -> list[Finding]:
    """The host key and login rows of one SSH connect (``exc`` is None when it succeeded)."""
    import paramiko

    pinned = pinned_fingerprint(target.host_key)
    if exc is None:
        return [Finding("host key", target.where, True, f"the cluster presents the pinned key ({pinned})"),
                Finding("login", target.where, True, f"logged in as {target.login}")]
    not_checked = Finding("login", target.where, False, "not checked: the host key check failed first")
    for err in _chain(exc):
        if isinstance(err, paramiko.BadHostKeyException):
            presented = f"{err.key.get_name()} {fingerprint(err.key.asbytes())}"
            return [Finding("host key", target.where, False,
                            f"host key mismatch: the cluster presents {presented}, the connection pins {pinned}; "
                            f"if the cluster's key really changed, update extra.host_key of {target.conn_id} "
                            "(ssh-keyscan -p PORT HOST); otherwise do not connect: something answers in its place"),
                    not_checked]
        if isinstance(err, paramiko.SSHException) and "not found in known_hosts" in str(err):
            return [Finding("host key", target.where, False,
                            f"host key mismatch: the cluster presents no key of the pinned type ({pinned}); "
                            f"if the cluster's key really changed, update extra.host_key of {target.conn_id} "
                            "(ssh-keyscan -p PORT HOST)"),
                    not_checked]
        if isinstance(err, paramiko.AuthenticationException):
            return [Finding("host key", target.where, True, f"the cluster presents the pinned key ({pinned})"),
                    Finding("login", target.where, False,
                            f"login refused for {target.login} with key {target.key_file or '-'} ({printable(err)}); "
                            f"check that the key's public half is in {target.login}'s authorized_keys and the key "
                            "file is readable here (make onboard sets both up)")]
    return [Finding("host key", target.where, False, f"not verified: {printable(exc, max_chars=400)}"),
            Finding("login", target.where, False,
                    f"SSH failed: {printable(exc, max_chars=400)}; check the connection {target.conn_id} "
                    "(host, port, login, key_file, host_key) and the cluster's sshd log")]


def directory_finding(tenant: str, path: str, expect_owner: str, answer: tuple[int, str, str]) -> Finding:
    """``stat -c '%U %a' <tenant dir>`` as the tenant: its own user owns it, mode 700."""
    rc, out, err = answer
    target = f"{tenant}: {path}"
    if rc != 0:
        return Finding("directory", target, False, f"cannot stat it as {expect_owner}: "
                       f"{printable((err or out).strip(), max_chars=300)}; run make onboard")
    owner, _, mode = out.strip().partition(" ")
    if owner != expect_owner or mode != "700":
        return Finding("directory", target, False, f"owned by {printable(owner)} with mode {printable(mode)}; "
                       f"must be {expect_owner}, 700 (run make onboard)")
    return Finding("directory", target, True, f"owned by {owner}, mode 700")


def environment_finding(cluster: str, environment: SiteEnvironment, answer: tuple[int, str, str]) -> Finding:
    """``SiteEnvironment.check_command()`` on the login node: the setup sources and every module loads."""
    rc, out, err = answer
    text = printable(((out or "") + (err or "")).strip(), max_chars=400)
    if rc != 0:
        return Finding("site environment", cluster, False, f"{text or f'exit {rc}'}; fix environment: in "
                       f"include/clusters/{cluster}.yaml, or install what it names on the cluster")
    return Finding("site environment", cluster, True, f"sources {environment.setup or '(nothing)'}, "
                   f"{text or 'loads nothing'}")


# --------------------------------------------------------------------------------------------
# Slurm
# --------------------------------------------------------------------------------------------


def association_finding(tenant: str, account: str, user: str, users: Sequence[str]) -> Finding:
    """The tenant's account associates its own Unix user and nobody else."""
    target = f"{tenant}: account {account}"
    others = sorted(set(users) - {user})
    if user not in users:
        return Finding("slurm association", target, False,
                       f"user {user} is not associated with account {account} (Slurm will refuse the tenant's jobs); "
                       "run make onboard")
    if others:
        return Finding("slurm association", target, False,
                       f"also associated: {', '.join(printable(o) for o in others)} (they can submit under the "
                       f"tenant's account); run make onboard to remove them")
    return Finding("slurm association", target, True, f"only {user} is associated")


def limits_finding(tenant: str, account: str, want: Mapping[str, int], have: Mapping[str, int]) -> Finding:
    """The account's ``GrpTRESMins`` equals the tenant's allocation."""
    def fmt(tres: Mapping[str, int]) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(tres.items())) or "unlimited"

    target = f"{tenant}: account {account}"
    if dict(want) != dict(have):
        return Finding("slurm limits", target, False,
                       f"GrpTRESMins is {fmt(have)}, the allocation says {fmt(want)}; run make onboard")
    return Finding("slurm limits", target, True, f"GrpTRESMins={fmt(want)} (the allocation)")


# --------------------------------------------------------------------------------------------
# Object store
# --------------------------------------------------------------------------------------------

#: S3 error codes that mean "this credential may not do that"
DENIED = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"})


def s3_code(exc: BaseException) -> str:
    return _error_code(exc) or type(exc).__name__


def own_bucket_finding(tenant: str, conn_id: str, bucket: str, exc: BaseException | None, done: str) -> Finding:
    """The tenant's credential may list, write, read and delete in its own area."""
    target = f"{tenant}: {conn_id} -> s3://{bucket}"
    if exc is None:
        return Finding("s3 own bucket", target, True, done)
    code = s3_code(exc)
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
        fix = "the store does not know this credential; run make onboard to create it and its connection"
    elif code in DENIED:
        fix = "the credential's policy must allow its own bucket; run make onboard"
    elif code in ("NoSuchBucket", "404"):
        fix = "the bucket does not exist; run make onboard"
    else:
        fix = "check the connection's endpoint_url and the store (make status)"
    return Finding("s3 own bucket", target, False, f"{code}: {printable(exc, max_chars=300)}; {fix}")


def foreign_bucket_finding(tenant: str, conn_id: str, bucket: str, owner: str, exc: BaseException | None,
                           what: str) -> Finding:
    """Another tenant's bucket must be refused to this tenant's credential (``exc`` None: it was not)."""
    target = f"{tenant}: {conn_id} -> s3://{bucket} ({owner}'s)"
    if exc is None:
        return Finding("s3 isolation", target, False,
                       f"{what} was ALLOWED in {owner}'s bucket; the credential's policy must allow its own bucket "
                       "only: run make onboard and check the store's policies")
    code = s3_code(exc)
    if code in DENIED:
        return Finding("s3 isolation", target, True, f"{what} refused ({code})")
    return Finding("s3 isolation", target, False,
                   f"{what} failed with {code}, not AccessDenied ({printable(exc, max_chars=200)}); cannot tell "
                   "whether the policy refuses it: check the store")
