"""What is already in a staged dataset directory: files the marker vouches for, files whose sha256
matches, and files that are partial or tampered; and writing the marker after a stage.

The marker (``layout.STAGING_MARKER``) records each file's sha256 with its size, inode and
ctime. A file whose size, inode and ctime still equal the marker's was not rewritten since it was
verified (an unprivileged user cannot set ctime), so it is trusted without reading it again.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aifactory.data.manifest import DatasetManifest, FileEntry
from aifactory.hpc.remote import FileStat, RemoteError, RemoteShell, check, join, q, sha256_many, stat_files
from aifactory.hpc.staging.options import Log
from aifactory.layout import STAGING_MARKER
from aifactory.text import shown


@dataclass
class _Present:
    good: list[str] = field(default_factory=list)  # verified files, by name
    bad: list[str] = field(default_factory=list)  # present but partial/tampered
    marker_fresh: bool = False  # the marker vouches for every file as it is now


def _read_marker(shell: RemoteShell, directory: str) -> dict[str, Any]:
    rc, out, _ = shell.run("cat -- " + q(join(directory, STAGING_MARKER)) + " 2>/dev/null", timeout=60)
    if rc != 0 or not out.strip():
        return {}
    try:
        data = json.loads(out)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _fingerprint(stat: FileStat, sha256: str) -> dict[str, Any]:
    return {"sha256": sha256, "bytes": stat.size, "inode": stat.inode, "ctime": stat.ctime}


def _inspect(shell: RemoteShell, directory: str, manifest: DatasetManifest, *, reverify: bool, log: Log) -> _Present:
    """Which manifest files in ``directory`` are verified (marker or sha256), which are bad."""
    stats = stat_files(shell, directory)
    marker = {} if reverify else _read_marker(shell, directory)
    vouched = marker.get("files", {}) if isinstance(marker.get("files"), dict) else {}
    present = _Present()
    to_hash: list[FileEntry] = []
    for f in manifest.files:
        st = stats.get(f.path)
        if st is None:
            continue
        if st.size != f.bytes:
            present.bad.append(f.path)  # partial or appended-to: no need to read it
        elif vouched.get(f.path) == _fingerprint(st, f.sha256):
            present.good.append(f.path)
        else:
            to_hash.append(f)
    if to_hash:
        t0 = time.monotonic()
        size = sum(f.bytes for f in to_hash)
        sums = sha256_many(shell, [join(directory, f.path) for f in to_hash])
        for f in to_hash:
            (present.good if sums.get(join(directory, f.path)) == f.sha256 else present.bad).append(f.path)
        log(f"stage: hashed {len(to_hash)} file(s), {size} B on the HPC side in {time.monotonic() - t0:.1f}s")
    present.marker_fresh = not to_hash and len(present.good) == len(manifest.files)
    return present


def _write_marker(shell: RemoteShell, directory: str, manifest: DatasetManifest) -> None:
    """Record each file's sha256 with its current size, inode and ctime (after the last rename)."""
    stats = stat_files(shell, directory)
    files = {}
    for f in manifest.files:
        st = stats.get(f.path)
        if st is None or st.size != f.bytes:
            raise RemoteError(f"{shown(join(directory, f.path))} changed while it was being staged; retry the stage")
        files[f.path] = _fingerprint(st, f.sha256)
    body = json.dumps(
        {"manifest_sha256": manifest.manifest_sha256, "version": manifest.version, "files": files},
        indent=1, sort_keys=True,
    ).encode()
    sftp = shell.sftp_client()
    tmp = join(directory, f".{STAGING_MARKER}.{secrets.token_hex(4)}")
    with sftp.open(tmp, "wb") as fh:
        fh.write(body)
    check(shell, f"mv -f -- {q(tmp)} {q(join(directory, STAGING_MARKER))}", what="writing the staging marker")
