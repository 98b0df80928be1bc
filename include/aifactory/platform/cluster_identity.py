"""Onboarding step 1: one identity per tenant on its cluster (Unix user, SSH key, connection, areas).

Every tenant task reaches the cluster as the tenant's own Unix user (``identity.unix_user``),
through the tenant's own Airflow SSH connection (``identity.ssh_conn_id``) and key. That user owns
the tenant's project and scratch areas (0700; ``TenantSpec.areas``: the cluster spec's ``areas:``
templates), so a job of tenant A runs as A's user and the kernel, not our code, refuses it B's
files. The cluster's service connection (the cluster spec's ``ssh_conn_id``, Unix user
``aifactory``) is the platform's: it manages accounts and sweeps, and never runs a tenant's job.

This module is the one place of the Unix and SSH rules: where a tenant's key lives, the modes of
its directories and key files, and the login group sshd admits (``AllowGroups``; stack.sh reads
:data:`LOGIN_GROUP` from here). Onboarding runs as root on the login node (the local stack's).

Each part looks first and changes only what differs, so onboarding twice changes nothing; with
``ctx.dry_run`` it changes nothing and reports what it would change.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aifactory.errors import FactoryError, InputError
from aifactory.platform.onboard import Change, Context
from aifactory.tenants.spec import ClusterSpec, TenantSpec

STEP = "cluster"

#: sshd admits only members of this group (``AllowGroups``): the service user and every tenant user
LOGIN_GROUP = "aifp-login"
#: the tenant's login key inside the secrets directory: ``<secrets>/ssh/<tenant>/id_ed25519``
KEY_NAME = "id_ed25519"
#: the cluster's root of tenant areas: traversable by every tenant user, writable by root only
HPC_ROOT_MODE = 0o755
#: a tenant's area, its ``~/.ssh``, the key's folder in the secrets directory
PRIVATE_DIR_MODE = 0o700
#: private keys and ``authorized_keys``
PRIVATE_FILE_MODE = 0o600
#: ``usermod -p``: no password but not locked (sshd without PAM refuses locked accounts, keys or not)
NO_PASSWORD = "*"


class IdentityError(FactoryError):
    """The tenant's cluster identity could not be set up (what failed, and what to do)."""


def tenant_key_file(secrets_dir: Path, tenant: str) -> Path:
    """The tenant's private login key (``.pub`` beside it); generated once by onboarding."""
    return Path(secrets_dir) / "ssh" / tenant / KEY_NAME


def service_connection(env: Mapping[str, str], cluster: ClusterSpec) -> dict[str, Any]:
    """The cluster's service connection (``AIRFLOW_CONN_<ID>`` JSON in the stack's environment)."""
    var = f"AIRFLOW_CONN_{cluster.ssh_conn_id.upper()}"
    raw = env.get(var) or os.environ.get(var)
    if not raw:
        raise IdentityError(f"cluster {cluster.name!r}: {var} is not set; source .stack/stack.env (the service "
                            "connection gives the tenant connections their host, port and pinned host key)")
    try:
        conn = json.loads(raw)
    except ValueError as exc:
        raise IdentityError(f"{var} is not JSON ({exc}); regenerate it with include/stack/stack.sh up") from exc
    extra = conn.get("extra_dejson", conn.get("extra")) or {}
    if isinstance(extra, str):
        extra = json.loads(extra)
    if not conn.get("host") or not extra.get("host_key"):
        raise IdentityError(f"{var} names no host or no pinned extra.host_key; fix the service connection first")
    return {**conn, "extra": dict(extra)}


def tenant_connection(service: Mapping[str, Any], unix_user: str, key_file: Path) -> dict[str, Any]:
    """The tenant's SSH connection: the service connection's host, port, pinned host key and other
    extras, with the tenant's login and key (ConnectionStore / LocalFilesystemBackend format)."""
    extra = dict(service["extra"])
    extra["key_file"] = str(key_file)
    extra.pop("private_key", None)
    return {"conn_type": "ssh", "host": service["host"], "port": service.get("port"), "login": unix_user,
            "password": None, "extra_dejson": extra}


# --------------------------------------------------------------------------------------------
# the system (root on the login node)
# --------------------------------------------------------------------------------------------


def _sh(*argv: str) -> str:
    p = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise IdentityError(f"{' '.join(argv)} failed (exit {p.returncode}): {p.stderr.strip()[-300:]}; "
                            "onboarding must run as root on the login node")
    return p.stdout


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _shadow_password(name: str) -> str | None:
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name and len(fields) > 1:
                return fields[1]
    except OSError:
        return None
    return None


def _group_members(name: str) -> list[str] | None:
    try:
        return list(grp.getgrnam(name).gr_mem)
    except KeyError:
        return None


class _Changes:
    """Collects the changes of one tenant; runs each action unless dry-run."""

    def __init__(self, ctx: Context, tenant: str) -> None:
        self.ctx, self.tenant, self.made = ctx, tenant, []

    def __call__(self, action: str, fn: Any = None, *args: Any) -> None:
        self.made.append(Change(self.tenant, STEP, action))
        if not self.ctx.dry_run and fn is not None:
            fn(*args)


def _mkdir_owned(path: Path, mode: int, uid: int, gid: int) -> None:
    path.mkdir(mode)
    os.chown(path, uid, gid)
    os.chmod(path, mode)  # mkdir's mode passes through the umask


def _ensure_mode_owner(change: _Changes, path: Path, mode: int, uid: int, gid: int) -> None:
    st = path.stat()
    if st.st_mode & 0o7777 != mode:
        change(f"chmod {mode:04o} {path}", os.chmod, path, mode)
    if (st.st_uid, st.st_gid) != (uid, gid):
        change(f"chown {uid}:{gid} {path}", os.chown, path, uid, gid)


def _ensure_user(change: _Changes, user: str) -> None:
    if _group_members(LOGIN_GROUP) is None:
        change(f"groupadd {LOGIN_GROUP}", _sh, "groupadd", "-f", LOGIN_GROUP)
    if _user(user) is None:
        change(f"useradd {user}", _sh, "useradd", "--create-home", "--user-group", "--shell", "/bin/bash",
               "--groups", LOGIN_GROUP, user)
    elif user not in (_group_members(LOGIN_GROUP) or []):
        change(f"add {user} to {LOGIN_GROUP}", _sh, "usermod", "-aG", LOGIN_GROUP, user)
    if _shadow_password(user) != NO_PASSWORD:
        change(f"usermod -p '{NO_PASSWORD}' {user}", _sh, "usermod", "-p", NO_PASSWORD, user)


def _ensure_key(change: _Changes, key: Path, tenant: str) -> None:
    for folder in (key.parent.parent.parent, key.parent.parent, key.parent):  # <secrets>, ssh/, ssh/<tenant>/
        if not folder.is_dir():
            change(f"mkdir {folder}", _mkdir_owned, folder, PRIVATE_DIR_MODE, os.getuid(), os.getgid())
        elif folder.stat().st_mode & 0o777 != PRIVATE_DIR_MODE:
            change(f"chmod {PRIVATE_DIR_MODE:04o} {folder}", os.chmod, folder, PRIVATE_DIR_MODE)
    if not key.is_file():
        change(f"ssh-keygen {key}", _sh, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
               f"aifp-{tenant}", "-f", str(key))
    elif key.stat().st_mode & 0o777 != PRIVATE_FILE_MODE:
        change(f"chmod {PRIVATE_FILE_MODE:04o} {key}", os.chmod, key, PRIVATE_FILE_MODE)


def _write_authorized(path: Path, line: str, uid: int, gid: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w") as fh:
        fh.write(line)
    os.chown(tmp, uid, gid)
    os.chmod(tmp, PRIVATE_FILE_MODE)
    os.replace(tmp, path)


def _ensure_authorized_keys(change: _Changes, user: str, key: Path) -> None:
    pw = _user(user)
    pub = key.with_name(key.name + ".pub")
    if pw is None or not pub.is_file():  # dry run before the user or key exists
        change(f"authorized_keys of {user}")
        return
    home = Path(pw.pw_dir)
    if home.is_dir():  # the tenant's home is its own too (caches, history)
        _ensure_mode_owner(change, home, PRIVATE_DIR_MODE, pw.pw_uid, pw.pw_gid)
    ssh_dir = home / ".ssh"
    if ssh_dir.is_symlink():
        raise IdentityError(f"{ssh_dir} is a symlink; remove it, then onboard again")
    if not ssh_dir.is_dir():
        change(f"mkdir {ssh_dir}", _mkdir_owned, ssh_dir, PRIVATE_DIR_MODE, pw.pw_uid, pw.pw_gid)
    else:
        _ensure_mode_owner(change, ssh_dir, PRIVATE_DIR_MODE, pw.pw_uid, pw.pw_gid)
    line = " ".join(pub.read_text().split()[:2]) + f" aifp-{user}\n"
    auth = ssh_dir / "authorized_keys"
    current = auth.read_text() if auth.is_file() and not auth.is_symlink() else None
    if current != line:
        change(f"write {auth}", _write_authorized, auth, line, pw.pw_uid, pw.pw_gid)
    else:
        _ensure_mode_owner(change, auth, PRIVATE_FILE_MODE, pw.pw_uid, pw.pw_gid)


def _foreign_entry(directory: Path, user: str) -> bool:
    """Whether anything in ``directory`` (itself included) is owned by another user than ``user``."""
    out = _sh("find", str(directory), "!", "-user", user, "-print", "-quit")
    return bool(out.strip())


def _ensure_parents(change: _Changes, cluster: ClusterSpec, area: Path) -> None:
    """Every directory above a tenant's area is root's and writable by root only (or sticky, like a
    site's /scratch): else another user could rename the area away and put its own in its place.
    The HPC root is made so (0755); a missing directory between it or / and the area is made root's,
    0755; one that exists and is not so is for the site to fix, and onboarding says which."""
    root = Path(cluster.hpc_root)
    for parent in reversed(area.parents):
        if not parent.is_dir():
            change(f"mkdir {parent} (root, {HPC_ROOT_MODE:04o})", _mkdir_owned, parent, HPC_ROOT_MODE, 0, 0)
            continue
        if parent == root:  # root's: no tenant and not the service user may rename or replace a tenant's area
            _ensure_mode_owner(change, root, HPC_ROOT_MODE, 0, 0)
            continue
        st = parent.stat()
        if st.st_uid != 0 or (st.st_mode & 0o022 and not st.st_mode & 0o1000):
            raise IdentityError(f"{parent} (above the tenant area {area}) is owned by uid {st.st_uid} with mode "
                                f"{st.st_mode & 0o7777:04o}: another user could replace the area. Make it root's "
                                "and writable by root only (or sticky), then onboard again")


def _ensure_area(change: _Changes, cluster: ClusterSpec, area: Path, user: str) -> None:
    """One of the tenant's areas (project, scratch): a directory of its own, the user's, 0700."""
    _ensure_parents(change, cluster, area)
    if area.is_symlink():
        raise IdentityError(f"{area} is a symlink; a tenant's area must be a directory of its own. Remove it "
                            "and onboard again")
    pw = _user(user)
    if pw is None:
        change(f"mkdir {area} (owner {user}, {PRIVATE_DIR_MODE:04o})")
        return
    if not area.is_dir():
        change(f"mkdir {area} (owner {user}, {PRIVATE_DIR_MODE:04o})", _mkdir_owned, area, PRIVATE_DIR_MODE,
               pw.pw_uid, pw.pw_gid)
        return
    if _foreign_entry(area, user):
        # content of the old shared login (aifactory) becomes the tenant's, once
        change(f"chown -R {user} {area}", _sh, "chown", "-R", "--no-dereference", f"{user}:{pw.pw_gid}", str(area))
    _ensure_mode_owner(change, area, PRIVATE_DIR_MODE, pw.pw_uid, pw.pw_gid)


def onboard_identity(ctx: Context, spec: TenantSpec, cluster: ClusterSpec) -> list[Change]:
    """The tenant's Unix user, SSH key, authorized_keys, SSH connection and areas; idempotent."""
    if spec.identity is None:
        raise IdentityError(f"tenant {spec.tenant!r} has no identity: add identity.unix_user and "
                            "identity.ssh_conn_id to its spec")
    user = spec.identity.unix_user
    if spec.identity.ssh_conn_id == cluster.ssh_conn_id:
        raise IdentityError(f"tenant {spec.tenant!r}: identity.ssh_conn_id must be the tenant's own connection, "
                            f"not the cluster's service connection {cluster.ssh_conn_id!r}")
    service = service_connection(ctx.env, cluster)
    if user == service.get("login"):
        raise IdentityError(f"tenant {spec.tenant!r}: unix_user {user!r} is the cluster's service user; "
                            "give the tenant a login of its own")
    change = _Changes(ctx, spec.tenant)
    key = tenant_key_file(ctx.secrets_dir, spec.tenant)
    _ensure_user(change, user)
    _ensure_key(change, key, spec.tenant)
    _ensure_authorized_keys(change, user, key)
    conn = tenant_connection(service, user, key)
    if ctx.connections.get(spec.identity.ssh_conn_id) != conn:
        change(f"connection {spec.identity.ssh_conn_id}", ctx.connections.put, spec.identity.ssh_conn_id, conn)
    try:
        roots = spec.areas(cluster).roots
    except InputError as exc:
        raise IdentityError(str(exc)) from exc
    for area in roots:
        _ensure_area(change, cluster, Path(area), user)
    return change.made
