"""A startup's own training code: fetched from its area of the object store, checked, and given a
Python environment built once per lock file on the cluster (docs/own-code.md).

A tenant's code folder is a recipe folder, the same contract as the platform's recipes
(``recipe.yaml``, an entry point that uses ``aifp_runtime``), plus a locked requirements file::

    s3://<bucket>/<tenant>/code/<name>/
        recipe.yaml          name: <name>, entrypoint, hyperparameters (a JSON schema), resources, model_card
        train.py ...         the code; the whole folder ships into the run directory
        requirements.lock    every requirement pinned (==) with --hash (pip-compile --generate-hashes)
        wheels/              optional: the locked wheels, for sites whose login nodes reach no index

A run names it with ``recipe: own-code`` and ``code_uri``. Before anything is submitted:

* :func:`fetch_code` copies it with the tenant's own S3 credential (bounded in files and bytes,
  each path part a plain name) and :func:`code_digest` pins its content: a later task that finds
  other bytes at the same URI stops instead of training something nobody validated;
* :func:`check_code` loads ``recipe.yaml`` with the platform's own loader, reads the lock file
  (:func:`parse_lock`) and compiles every ``.py`` file, so a syntax error or an unpinned
  requirement is reported before any GPU time is spent;
* :func:`env_build_command` builds ``<tenant area>/envs/env-<16 hex of the lock's sha256>`` as the
  tenant's own user on the login node, or reuses it when an earlier run built it. The environment
  sees the cluster's training environment beneath its own packages (a ``.pth`` file), so a lock
  file lists what the code adds, not torch.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory import layout
from aifactory.errors import InputError
from aifactory.hpc.remote import q
from aifactory.models.recipes import Recipe, load_recipe
from aifactory.text import shown

__all__ = ["ENV_RETENTION_DAYS", "ENV_USED_STAMP", "Lock", "OwnCode", "check_code", "check_retention_days", "code_digest", "code_uri_pattern", "env_build_command", "env_id", "fetch_code",
           "parse_code_uri", "parse_lock"]

#: bounds of one code folder (code, not data: datasets go through ingest)
MAX_FILES = 2000
MAX_BYTES = 256 * 1024 * 1024
#: a requirement line of a lock file: ``name==version`` then its hashes (PEP 503 names, PEP 440-ish versions)
_REQ = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9,._-]+\])?==([A-Za-z0-9.+!_-]+)$")
_HASH = re.compile(r"^--hash=sha256:([0-9a-f]{64})$")


@dataclass(frozen=True)
class Lock:
    """A checked lock file: its bytes' sha256 and its pinned requirements (``(name, version)``)."""

    sha256: str
    requirements: tuple[tuple[str, str], ...]

    @property
    def env_id(self) -> str:
        return env_id(self.sha256)


def env_id(lock_sha256: str) -> str:
    """The environment a lock file builds: ``env-<first 16 hex of its sha256>``."""
    return f"env-{lock_sha256[:16]}"


def parse_lock(data: bytes, where: str = layout.CODE_LOCK_FILE) -> Lock:
    """Check a lock file in pip's requirements format: every requirement ``name==version`` with at
    least one ``--hash=sha256:``; nothing else (no ``-e``, URLs, ``-r`` or index options).

    :raises InputError: naming the line and what to write instead.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where} is not UTF-8 text ({exc})") from exc
    # a logical line continues after a trailing backslash (pip-compile writes one hash per line)
    logical: list[tuple[int, str]] = []
    start, buf = 0, ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            logical.append((start, buf.strip()))
        buf = ""
    requirements: list[tuple[str, str]] = []
    seen: set[str] = set()
    for number, line in logical:
        first, *rest = line.split()
        m = _REQ.match(first)
        if not m:
            raise InputError(
                f"{where} line {number}: {shown(first, max_chars=80)} is not a pinned requirement; every line must "
                "be name==version followed by --hash=sha256:... (pip-compile --generate-hashes writes this); "
                "editable installs, URLs, -r and index options are not allowed"
            )
        hashes = [h for h in rest if _HASH.match(h)]
        if not hashes or len(hashes) != len(rest):
            bad = next((h for h in rest if not _HASH.match(h)), None)
            raise InputError(
                f"{where} line {number}: {m.group(1)}=={m.group(3)} "
                + (f"has {shown(bad, max_chars=60)}, which is not --hash=sha256:<64 hex>" if bad else "has no --hash")
                + "; lock it with pip-compile --generate-hashes"
            )
        key = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        if key in seen:
            raise InputError(f"{where} line {number}: {m.group(1)} is pinned twice")
        seen.add(key)
        requirements.append((m.group(1), m.group(3)))
    return Lock(sha256=hashlib.sha256(data).hexdigest(), requirements=tuple(requirements))


def code_uri_pattern(bucket: str, tenant: str) -> str:
    """The regular expression a code URI matches (the trigger form's ``pattern``; :func:`parse_code_uri`
    is the check): ``s3://<bucket>/<tenant>/code/<name>/``, the name by :data:`layout.NAME_RE`."""
    prefix = layout.s3_uri(bucket, layout.code_prefix(tenant))
    return "^" + re.escape(prefix) + layout.NAME_RE.pattern.lstrip("^").rstrip("$") + "/$"


def parse_code_uri(uri: Any, bucket: str, tenant: str) -> tuple[str, str]:
    """``(prefix, name)`` of a code URI ``s3://<bucket>/<tenant>/code/<name>/``.

    :raises InputError: for anything else (another bucket or tenant, a deeper path, a file).
    """
    want = layout.s3_uri(bucket, layout.code_prefix(tenant))
    if not isinstance(uri, str) or not uri.startswith(want) or not uri.endswith("/"):
        raise InputError(f"code_uri: {shown(uri, max_chars=120)} must be a folder {want}<name>/ "
                         "(upload the code there first)")
    name = uri[len(want):-1]
    if not layout.NAME_RE.fullmatch(name):
        raise InputError(f"code_uri: the code folder's name {shown(name, max_chars=80)} must match "
                         f"{layout.NAME_RE.pattern} (one folder directly under {want})")
    return layout.code_folder_prefix(tenant, name), name


def _safe_relative(rel: str, uri: str) -> str:
    parts = rel.split("/")
    if not rel or any(not layout.SAFE_FILE_RE.fullmatch(p) for p in parts) or len(parts) > 8:
        raise InputError(f"{shown(uri + rel, max_chars=200)}: every part of a code file's path must be a plain name "
                         f"({layout.SAFE_FILE_RE.pattern}), at most 8 deep; rename it")
    return posixpath.join(*parts)


def fetch_code(s3: Any, bucket: str, prefix: str, dest: Path) -> Path:
    """Copy the code folder ``prefix`` of ``bucket`` into ``dest/<name>/`` and return that folder.

    ``s3`` is a boto3 client with the tenant's own credential: the object store, not this code,
    keeps a tenant out of another's code.

    :raises InputError: when the folder is empty, too large, or holds a path that is not plain.
    """
    uri = layout.s3_uri(bucket, prefix)
    name = posixpath.basename(prefix.rstrip("/"))
    folder = Path(dest) / name
    objects: list[tuple[str, int]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/"):
                continue  # a folder marker some clients write
            objects.append((_safe_relative(obj["Key"][len(prefix):], uri), int(obj["Size"])))
            if len(objects) > MAX_FILES:
                raise InputError(f"{uri} holds more than {MAX_FILES} files; ship code, not data (datasets go "
                                 "through dataset_uri)")
    if not objects:
        raise InputError(f"{uri} holds no files; upload the code folder (recipe.yaml, the entry point, "
                         f"{layout.CODE_LOCK_FILE}) there first")
    total = sum(size for _, size in objects)
    if total > MAX_BYTES:
        raise InputError(f"{uri} holds {total} bytes, more than {MAX_BYTES}; ship code and wheels only")
    for rel, _ in objects:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, prefix + rel, str(target))
    return folder


def code_digest(folder: Path) -> str:
    """sha256 over the folder's files (relative paths and contents, sorted): what the run trains."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        data = path.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class OwnCode:
    """A checked code folder: its recipe (the platform's loader), lock, and content digest."""

    uri: str
    recipe: Recipe
    lock: Lock
    digest: str
    wheels: tuple[str, ...]

    @property
    def env_id(self) -> str:
        return self.lock.env_id


def check_code(folder: Path, uri: str, *, expect_digest: str | None = None) -> OwnCode:
    """Check a fetched code folder before anything is submitted (see the module docstring).

    :param expect_digest: the digest the run was validated with: other bytes are refused.
    :raises InputError: naming the file (and line) at fault and what to do.
    """
    folder = Path(folder)
    digest = code_digest(folder)
    if expect_digest is not None and digest != expect_digest:
        raise InputError(f"the code at {uri} changed since this run was validated (content sha256 "
                         f"{expect_digest[:16]}... then, {digest[:16]}... now); trigger a new run to train the new code")
    if not (folder / "recipe.yaml").is_file():
        raise InputError(f"{uri}recipe.yaml is missing: a code folder is a recipe folder (docs/own-code.md)")
    try:
        recipe = load_recipe(folder)
    except InputError as exc:
        raise InputError(f"{uri}recipe.yaml: {exc}") from exc
    if recipe.container:
        raise InputError(f"{uri}recipe.yaml names container {recipe.container!r}; a tenant's own code runs in "
                         "an environment built from its lock file, not in a container image. Remove the key")
    if recipe.quality_suite:
        raise InputError(f"{uri}recipe.yaml names quality_suite {recipe.quality_suite!r}; the platform gates a "
                         "tenant's data (the tenant spec's quality_suites), not its code. Remove the key")
    lock_path = folder / layout.CODE_LOCK_FILE
    if not lock_path.is_file():
        raise InputError(f"{uri}{layout.CODE_LOCK_FILE} is missing; lock the code's requirements with "
                         "pip-compile --generate-hashes (an empty file if it needs nothing beyond the cluster's "
                         "training environment)")
    lock = parse_lock(lock_path.read_bytes(), f"{uri}{layout.CODE_LOCK_FILE}")
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder).as_posix()
        try:
            compile(path.read_bytes(), f"{uri}{rel}", "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise InputError(f"{uri}{rel} line {exc.lineno}: {exc.msg}; fix the code and upload it again "
                             "(nothing was submitted)") from exc
        except ValueError as exc:  # NUL bytes
            raise InputError(f"{uri}{rel}: {exc}") from exc
    wheels_dir = folder / layout.CODE_WHEELS_DIR
    wheels = tuple(sorted(p.name for p in wheels_dir.glob("*.whl"))) if wheels_dir.is_dir() else ()
    return OwnCode(uri=uri, recipe=recipe, lock=lock, digest=digest, wheels=wheels)


#: how long an environment of a tenant's own code stays after the last run that used it, unless the
#: cluster spec says otherwise (``env_retention_days``)
ENV_RETENTION_DAYS = 30
#: touched by every run that builds or reuses an environment: what the retention counts from
ENV_USED_STAMP = ".aifp-env.used"


def check_retention_days(value: Any, where: str) -> int:
    """An environment retention (the cluster spec's ``env_retention_days``): whole days, 1 to 3650."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3650:
        raise InputError(f"{where} {shown(value)} must be a whole number of days from 1 to 3650")
    return value


def env_build_command(*, env_dir: str, src_dir: str, base_python: str, lock: Lock, with_wheels: bool,
                      index_url: str | None = None, retention_days: int = ENV_RETENTION_DAYS) -> str:
    """The shell command that builds (or finds) one environment, run as the tenant on the login node.

    ``src_dir`` holds the lock file (and ``wheels/``). One build per environment at a time
    (``flock`` on ``<env_dir>.lock``); a build that failed half-way left no marker and is redone.
    Every run that builds or reuses an environment touches its :data:`ENV_USED_STAMP`; then the
    tenant's other environments that no run used for more than ``retention_days`` days are removed,
    each under its own lock (one being built or reused right then is skipped), one
    ``aifp-env: removed <env id> ...`` line each. Prints ``aifp-env: reused`` or ``aifp-env: built``
    and the marker's JSON last.

    :raises InputError: when the lock needs packages and there is neither a wheels folder nor an
        index, or ``retention_days`` is not a whole number of days from 1 to 3650.
    """
    if lock.requirements and not with_wheels and not index_url:
        raise InputError(f"{layout.CODE_LOCK_FILE} pins {len(lock.requirements)} packages, but this cluster's login "
                         f"nodes reach no package index (its spec has no package_index); ship the locked wheels in "
                         f"{layout.CODE_WHEELS_DIR}/ (pip download --no-deps -r requirements.lock -d wheels)")
    retention_days = check_retention_days(retention_days, "env_retention_days")
    marker = posixpath.join(env_dir, layout.ENV_READY_MARKER)
    envs = posixpath.dirname(env_dir)
    source = ["--no-index", "--find-links", posixpath.join(src_dir, layout.CODE_WHEELS_DIR)] if with_wheels \
        else ["--index-url", str(index_url)]
    pip = [posixpath.join(env_dir, "bin", "python"), "-m", "pip", "install", "--no-input",
           "--disable-pip-version-check", "--no-cache-dir", "--require-hashes", "--no-deps",
           "--only-binary=:all:", *source, "-r", posixpath.join(src_dir, layout.CODE_LOCK_FILE)]
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    facts = json.dumps({"env_id": lock.env_id, "lock_sha256": lock.sha256, "base_python": base_python,
                        "requirements": [f"{n}=={v}" for n, v in lock.requirements]})
    script = "\n".join([
        "set -eu",
        f"mkdir -p -m 0700 {q(envs)}",
        f"exec 9>{q(env_dir + '.lock')}",
        "flock 9",
        f"if [ -f {q(marker)} ]; then echo 'aifp-env: reused'; else",
        f"rm -rf -- {q(env_dir)}",
        "echo 'aifp-env: building'",
        f"{q(base_python, '-m', 'venv', '--', env_dir)}",
        # the cluster's training environment beneath the code's own packages
        f"base=$({q(base_python, '-c', purelib)})",
        f"own=$({q(posixpath.join(env_dir, 'bin', 'python'), '-c', purelib)})",
        "printf '%s\\n' \"$base\" >\"$own/_aifp_base_env.pth\"",
        q(*pip) if lock.requirements else "echo 'aifp-env: the lock file pins nothing'",
        f"printf '%s\\n' {q(facts[:-1])}\", \\\"built_at\\\": \\\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\\\"}}\" >{q(marker + '.tmp')}",
        f"mv -f -- {q(marker + '.tmp')} {q(marker)}",
        "echo 'aifp-env: built'",
        "fi",
        f"touch -- {q(posixpath.join(env_dir, ENV_USED_STAMP))}",
        # the tenant's other environments, unused for longer than the retention: each under its own lock
        f"for d in {q(envs)}/env-*; do",
        f"  case \"$d\" in *.src|*.lock|{q(env_dir)}) continue;; esac",
        "  [ -d \"$d\" ] && [ ! -L \"$d\" ] || continue",
        f"  s=\"$d/{ENV_USED_STAMP}\"; [ -f \"$s\" ] || s=\"$d/{layout.ENV_READY_MARKER}\"; [ -f \"$s\" ] || s=\"$d\"",
        f"  [ -n \"$(find \"$s\" -prune -mtime +{retention_days - 1})\" ] || continue",
        "  if flock -n \"$d.lock\" rm -rf -- \"$d\" \"$d.src\"; then",
        f"    echo \"aifp-env: removed ${{d##*/}} (no run used it for more than {retention_days} days)\"",
        "  fi",
        "done",
        f"cat {q(marker)}",
    ])
    return "sh -c " + q(script)


def read_env_result(out: str) -> tuple[bool, dict[str, Any]]:
    """``(reused, marker)`` from :func:`env_build_command`'s output."""
    lines = [line for line in out.splitlines() if line.strip()]
    reused = any(line.strip() == "aifp-env: reused" for line in lines)
    try:
        marker = json.loads(lines[-1]) if lines else {}
    except ValueError:
        marker = {}
    return reused, marker if isinstance(marker, dict) else {}


def materialize_wheels(code: OwnCode, put: Callable[[Path, str], None], src_dir: str) -> None:
    """Send the lock file and the wheels to ``src_dir`` on the cluster (``put(local, remote)``)."""
    folder = code.recipe.root
    put(folder / layout.CODE_LOCK_FILE, posixpath.join(src_dir, layout.CODE_LOCK_FILE))
    for wheel in code.wheels:
        put(folder / layout.CODE_WHEELS_DIR / wheel, posixpath.join(src_dir, layout.CODE_WHEELS_DIR, wheel))
