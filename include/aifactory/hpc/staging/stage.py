"""The stage: inspect what is there, send what is missing into a private temporary directory,
verify, and rename it into place; then write the marker."""

from __future__ import annotations

import posixpath
import re
import secrets
import time
from typing import Any

from aifactory.data.manifest import DatasetManifest
from aifactory.errors import InputError
from aifactory.hpc.remote import RemoteShell, check, join, mkdir_private, q
from aifactory.hpc.staging.existing import _inspect, _write_marker
from aifactory.hpc.staging.options import Log, StageResult, StagingOptions
from aifactory.hpc.staging.paths import refuse_symlinks
from aifactory.hpc.staging.pull import _pull
from aifactory.hpc.staging.push import _push, _push_stream
from aifactory.hpc.staging.script import install_fetch_script
from aifactory.layout import MANIFEST_NAME, TenantAreas, hpc_dataset_dir, hpc_datasets_dir
from aifactory.text import shown, shown_list

#: A temporary staging directory untouched for this long belongs to a stage that was killed.
ABANDONED_AFTER_MIN = 24 * 60
#: Beside the dataset's directory: a stage's private temporary directory, and an old copy moved aside.
TMP_PREFIX = ".staging-"
OLD_PREFIX = ".old-"


#: ``owner``: a token of the task that stages, the same for each of its tries
OWNER_RE = re.compile(r"^[0-9a-f]{8,32}$")


def _remove_abandoned(shell: RemoteShell, parent: str, *, keep: str, own: str | None, log: Log) -> None:
    """Remove temporary directories of stages that died (worker killed, connection lost
    mid-transfer): those not modified for :data:`ABANDONED_AFTER_MIN` minutes, and at once those
    named ``own*`` (this task's earlier tries: Airflow runs one try of a task at a time). A stage
    still running keeps writing its own."""
    mine = f"-o -name {q(own + '*')} " if own else ""
    rc, out, _ = shell.run(
        f"find {q(parent)} -mindepth 1 -maxdepth 1 -type d ! -path {q(keep)} "
        f"\\( \\( \\( -name {q(TMP_PREFIX + '*')} -o -name {q(OLD_PREFIX + '*')} \\) -mmin +{ABANDONED_AFTER_MIN} \\) "
        f"{mine}\\) -print -exec rm -rf -- {{}} + 2>/dev/null || true",
        timeout=600,
    )
    gone = [line for line in out.splitlines() if line.strip()]
    if gone:
        log(f"stage: removed {len(gone)} abandoned temporary dir(s) of killed stages: {shown_list(gone, max_items=3)}")


def stage_dataset(
    s3: Any,
    shell: RemoteShell,
    *,
    bucket: str,
    dataset_prefix: str,
    manifest: DatasetManifest,
    areas: TenantAreas,
    log: Log = print,
    options: StagingOptions | None = None,
    owner: str | None = None,
) -> StageResult:
    """Put exactly the manifest's files under the tenant's dataset dir; verify; rename into place.

    :param s3: a client from :func:`aifactory.data.s3.make_client` (also signs pull-mode URLs).
    :param shell: the HPC login (:class:`aifactory.hpc.remote.ParamikoShell` in production).
    :param bucket: the tenant's bucket.
    :param dataset_prefix: the version's prefix in the bucket (``layout.dataset_prefix``).
    :param manifest: the version's manifest; only its files are staged.
    :param areas: the tenant's areas (``TenantSpec.areas``): the dataset goes to its scratch area
        (created 0700 if missing), the fetch script to its project area. A symlink anywhere from the
        area down to the destination stops the stage (:mod:`.paths`).
    :param log: progress sink.
    :param options: mode and parallelism (default: push, 4 in flight).
    :param owner: a token of the task that stages, the same for each of its tries
        (:data:`OWNER_RE`); its temporary directory carries it, so that a retry removes what an
        earlier try left when its connection was lost (it could not clean up over it).
    """
    if owner is not None and not OWNER_RE.match(owner):
        raise InputError(f"staging owner {shown(owner)} must be 8-32 lowercase hex digits")
    opts = options or StagingOptions()
    started = time.monotonic()
    prefix = dataset_prefix if dataset_prefix.endswith("/") else dataset_prefix + "/"
    final = hpc_dataset_dir(areas, manifest.name, manifest.version)
    area = areas.scratch  # where the dataset lives: every symlink walk starts here
    total = manifest.total_bytes
    n_files = len(manifest.files)

    refuse_symlinks(shell, area, final)  # before anything is read or written there
    present = _inspect(shell, final, manifest, reverify=opts.reverify, log=log)
    if len(present.good) == n_files:
        if not present.marker_fresh:
            _write_marker(shell, final, manifest)
        log(f"stage: {shown(final)} already holds all {n_files} files ({total} B), verified: nothing to send")
        return StageResult(final, n_files, total, True, time.monotonic() - started, opts.mode, 0, 0, n_files)
    if present.good or present.bad:
        log(
            f"stage: {shown(final)} exists; {len(present.good)} file(s) verified and kept, "
            f"{n_files - len(present.good)} missing or differ"
            + (f" ({shown_list(present.bad, max_items=5)})" if present.bad else "")
        )

    parent = posixpath.dirname(final)  # the dataset's folder, beside its other versions
    own = f"{TMP_PREFIX}{manifest.version}-{owner}-" if owner else None
    tmp = join(parent, f"{own or TMP_PREFIX + manifest.version + '-'}{secrets.token_hex(4)}")
    mkdir_private(shell, area, hpc_datasets_dir(areas), parent, tmp)
    refuse_symlinks(shell, area, tmp)
    _remove_abandoned(shell, parent, keep=tmp, own=own, log=log)
    good = set(present.good)
    to_send = [f for f in manifest.files if f.path not in good]
    send_bytes = sum(f.bytes for f in to_send)
    log(
        f"stage: {opts.mode} {len(to_send)} file(s), {send_bytes} B of {total} B to {shown(final)} "
        f"({opts.parallel} in flight)"
    )
    try:
        if good:
            links = " && ".join(f"ln -- {q(join(final, n))} {q(join(tmp, n))}" for n in sorted(good))
            check(shell, links, what="reusing verified files")
        t0 = time.monotonic()
        bulk = getattr(shell, "bulk", None)
        if opts.mode == "push" and bulk is not None and to_send:
            script = install_fetch_script(shell, areas)
            _push_stream(s3, bulk, bucket=bucket, prefix=prefix, tmp=tmp, files=to_send,
                         options=opts, script=script, log=log)
        elif opts.mode == "push":
            _push(s3, shell, bucket=bucket, prefix=prefix, tmp=tmp, files=to_send, parallel=opts.parallel, log=log)
        else:
            script = install_fetch_script(shell, areas)
            _pull(s3, shell, bucket=bucket, prefix=prefix, tmp=tmp, files=to_send, options=opts, script=script, log=log)
        transfer_s = time.monotonic() - t0
        with shell.sftp_client().open(join(tmp, MANIFEST_NAME), "wb") as remote:
            remote.write(manifest.to_json().encode())
        # Swap into place: an old (bad) copy is moved aside first and removed after the rename.
        old = join(parent, f"{OLD_PREFIX}{manifest.version}-{secrets.token_hex(4)}")
        refuse_symlinks(shell, area, final)  # again: a link planted while the files travelled
        check(
            shell,
            f"if [ -e {q(final)} ]; then mv -- {q(final)} {q(old)}; fi && mv -- {q(tmp)} {q(final)} "
            f"&& chmod 0700 -- {q(final)} && rm -rf -- {q(old)}",
            what=f"moving the staged dataset into {shown(final)}",
        )
    except BaseException:
        try:
            shell.run("rm -rf -- " + q(tmp), timeout=120)
        except Exception as cleanup:  # the connection is gone: report the failure itself, not this
            log(f"stage: could not remove {shown(tmp)} ({type(cleanup).__name__}: {cleanup}); the next try of "
                f"this task removes it (or any stage of this dataset after {ABANDONED_AFTER_MIN} min)")
        raise
    _write_marker(shell, final, manifest)
    seconds = time.monotonic() - started
    log(
        f"stage: staged {n_files} file(s), {total} B to {shown(final)} in {seconds:.1f}s ({len(to_send)} sent, "
        f"{send_bytes / max(transfer_s, 1e-6) / 1e6:.1f} MB/s; {len(good)} reused), verified by sha256 on the HPC side"
    )
    return StageResult(final, n_files, total, False, seconds, opts.mode, len(to_send), send_bytes, len(good))
