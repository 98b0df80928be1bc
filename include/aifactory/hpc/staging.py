"""Stage a dataset version from object storage to the tenant's area on the HPC side.

Two modes, chosen per cluster (``staging.mode`` in ``include/clusters/<name>.yaml``):

* **push**: the worker streams each object from S3 to the HPC side (one streaming GET per file,
  read ahead, no local copy), ``parallel`` streams at once, each taking the next file when free.
  Where the worker has the OpenSSH client (``shell.bulk``, from ``FactorySSHHook.bulk_pipe``), each
  stream is one ``ssh`` run of the fixed HPC-side script (``aifp_fetch.py --receive``, installed
  and checked by sha256 as for pull) with the same login and pinned host key, AES-GCM preferred;
  the script hashes every file while writing it and keeps it only when size and sha256 match.
  Without the ``ssh`` binary, files go over SFTP (paramiko, pipelined writes) and are hashed on
  the HPC side (``sha256sum``) as each lands: same result, about half the speed.
* **pull**: the worker uploads a fixed script (``include/stack/hpc/aifp_fetch.py``, checked by
  sha256) and hands it, **on stdin**, presigned GET URLs that expire after ``url_ttl_s`` for
  exactly the manifest's files that are not there yet. The script fetches them in parallel with
  Python's standard library, hashing as it writes. No credentials reach the cluster: a presigned
  URL grants one GET of one object until it expires, and it never appears in argv or in a log.

Either way files land in a private (0700) temporary directory beside the target, and the directory
is renamed to ``<tenant_dir>/datasets/<name>/<version>/`` only when every file matches the
manifest's sha256. Then a marker ``.aifp-verified.json`` records each file's sha256 with its size,
inode and ctime.

Re-staging: files whose size, inode and ctime still equal the marker's were not rewritten since
they were verified (an unprivileged user cannot set ctime), so they are skipped without reading
them again; any other file present is hashed on the HPC side; matching files are hard-linked into
the new temporary directory and only missing, partial or tampered files are sent. Set
``reverify: true`` to hash every file regardless of the marker.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from aifactory.errors import InputError
from aifactory.data.manifest import MANIFEST_NAME, DatasetManifest, FileEntry, sha256_file
from aifactory.data.readahead import chunks, prefetched
from aifactory.hpc.remote import (
    FileStat,
    OpenSSHPipe,
    RemoteError,
    RemoteShell,
    check,
    join,
    mkdir_private,
    open_sftp,
    q,
    run_with_input,
    sha256_many,
    stat_files,
)
from aifactory.layout import HPC_SCRIPTS_DIR

CHUNK = 8 * 1024 * 1024
MARKER_NAME = ".aifp-verified.json"
FETCH_SCRIPT = HPC_SCRIPTS_DIR / "aifp_fetch.py"
PROGRESS_EVERY_S = 5.0
StagingMode = Literal["push", "pull"]
Log = Callable[[str], Any]


@dataclass(frozen=True)
class StagingOptions:
    """How a cluster receives datasets (``staging:`` in the cluster spec).

    :param mode: ``push`` (worker -> SFTP) or ``pull`` (the HPC side fetches presigned URLs).
    :param parallel: files in flight at once.
    :param url_ttl_s: lifetime of each presigned URL (pull); short, but long enough to start
        the last file's GET.
    :param python: the cluster's python, which runs the pull script.
    :param reverify: hash every staged file again on re-staging, ignoring the marker.
    """

    mode: StagingMode = "push"
    parallel: int = 4
    url_ttl_s: int = 900
    python: str = "python3"
    reverify: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("push", "pull"):
            raise InputError(f"staging mode {self.mode!r} is not known; use 'push' or 'pull' in the cluster spec")
        if not 1 <= int(self.parallel) <= 32:
            raise InputError(f"staging parallel={self.parallel} must be between 1 and 32 in the cluster spec")
        if not 60 <= int(self.url_ttl_s) <= 12 * 3600:
            raise InputError(f"staging url_ttl_s={self.url_ttl_s} must be between 60 and 43200 seconds")


@dataclass(frozen=True)
class StageResult:
    remote_dir: str
    files: int
    bytes: int
    skipped: bool
    seconds: float
    mode: str = "push"
    sent_files: int = 0
    sent_bytes: int = 0
    reused_files: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "remote_dir": self.remote_dir,
            "files": self.files,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "mode": self.mode,
            "sent_files": self.sent_files,
            "sent_bytes": self.sent_bytes,
            "reused_files": self.reused_files,
            "mb_per_s": round(self.sent_bytes / max(self.seconds, 1e-6) / 1e6, 1),
        }


def dataset_remote_dir(tenant_dir: str, name: str, version: str) -> str:
    return join(tenant_dir, "datasets", name, version)


# --------------------------------------------------------------------------------------------
# What is already there
# --------------------------------------------------------------------------------------------


@dataclass
class _Present:
    good: list[str] = field(default_factory=list)  # verified files, by name
    bad: list[str] = field(default_factory=list)  # present but partial/tampered
    marker_fresh: bool = False  # the marker vouches for every file as it is now


def _read_marker(shell: RemoteShell, directory: str) -> dict[str, Any]:
    rc, out, _ = shell.run("cat -- " + q(join(directory, MARKER_NAME)) + " 2>/dev/null", timeout=60)
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
            raise RemoteError(f"{join(directory, f.path)} changed while it was being staged; retry the stage")
        files[f.path] = _fingerprint(st, f.sha256)
    body = json.dumps(
        {"manifest_sha256": manifest.manifest_sha256, "version": manifest.version, "files": files},
        indent=1, sort_keys=True,
    ).encode()
    sftp = shell.sftp_client()
    tmp = join(directory, f".{MARKER_NAME}.{secrets.token_hex(4)}")
    with sftp.open(tmp, "wb") as fh:
        fh.write(body)
    check(shell, f"mv -f -- {q(tmp)} {q(join(directory, MARKER_NAME))}", what="writing the staging marker")


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


class _Progress:
    """Thread-safe byte counter that logs bytes, percentage and throughput every few seconds."""

    def __init__(self, total_bytes: int, total_files: int, log: Log, what: str) -> None:
        self.total_bytes, self.total_files, self.log, self.what = total_bytes, total_files, log, what
        self.bytes = 0
        self.files = 0
        self.started = time.monotonic()
        self._last = self.started
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            now = time.monotonic()
            if now - self._last < PROGRESS_EVERY_S:
                return
            self._last = now
        self.report()

    def set(self, done_bytes: int, done_files: int) -> None:
        with self._lock:
            self.bytes, self.files = done_bytes, done_files
        self.report()

    def file_done(self) -> None:
        with self._lock:
            self.files += 1

    def report(self) -> None:
        secs = max(time.monotonic() - self.started, 1e-6)
        pct = 100.0 * self.bytes / self.total_bytes if self.total_bytes else 100.0
        self.log(
            f"stage: {self.what} {self.bytes}/{self.total_bytes} B ({pct:.0f}%), {self.files}/{self.total_files} "
            f"file(s), {self.bytes / secs / 1e6:.1f} MB/s"
        )


# --------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------


def _push(
    s3: Any, shell: RemoteShell, *, bucket: str, prefix: str, tmp: str, files: list[FileEntry],
    parallel: int, log: Log,
) -> None:
    """Stream ``files`` into ``tmp`` over SFTP, ``parallel`` in flight; sha256 each on the HPC side."""
    progress = _Progress(sum(f.bytes for f in files), len(files), log, "sent")
    local = threading.local()
    sessions: list[tuple[Any, bool]] = []
    sessions_lock = threading.Lock()
    probe, owned = open_sftp(shell)
    if not owned:
        parallel = 1  # one shared session: one file at a time
    log(f"stage: sending {len(files)} file(s) over SFTP ({parallel} session(s))")
    sessions.append((probe, owned))
    free = [probe]
    mismatches: list[str] = []

    def session() -> Any:
        sftp = getattr(local, "sftp", None)
        if sftp is None:
            with sessions_lock:
                if free:
                    sftp = free.pop()
                else:
                    sftp, own = open_sftp(shell)
                    sessions.append((sftp, own))
            local.sftp = sftp
        return sftp

    def verify(entry: FileEntry) -> None:
        path = join(tmp, entry.path)
        got = sha256_many(shell, [path]).get(path)
        if got != entry.sha256:
            mismatches.append(entry.path)

    def send(entry: FileEntry) -> FileEntry:
        sftp = session()
        body = s3.get_object(Bucket=bucket, Key=prefix + entry.path)["Body"]
        t0 = time.monotonic()
        with sftp.open(join(tmp, entry.path), "wb") as remote:
            if hasattr(remote, "set_pipelined"):
                remote.set_pipelined(True)  # paramiko: don't wait for an ack per write
            for chunk in iter(lambda: body.read(CHUNK), b""):
                remote.write(chunk)
                progress.add(len(chunk))
        progress.file_done()
        rate = entry.bytes / max(time.monotonic() - t0, 1e-6) / 1e6
        log(f"stage: sent {entry.path} ({entry.bytes} B, {rate:.1f} MB/s)")
        return entry

    try:
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="stage-push") as senders, \
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="stage-verify") as verifiers:
            checks: list[Future[None]] = []
            pending = {senders.submit(send, f) for f in files}
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    checks.append(verifiers.submit(verify, fut.result()))  # re-raises a send error
            for c in checks:
                c.result()
    finally:
        for sftp, own in sessions:
            if own:
                sftp.close()
    progress.report()
    if mismatches:
        raise RemoteError(
            f"sha256 mismatch on the HPC side after transfer for {', '.join(sorted(mismatches))}; "
            "nothing was moved into place. Retry the stage; if it repeats, check the HPC filesystem."
        )


def _push_stream(
    s3: Any, pipe: OpenSSHPipe, *, bucket: str, prefix: str, tmp: str,
    files: list[FileEntry], options: StagingOptions, script: str, log: Log,
) -> None:
    """Stream ``files`` into ``tmp`` through the OpenSSH client: ``parallel`` streams, each one
    remote run of the fixed script in ``--receive`` mode, fed straight from the objects' GETs (read
    ahead, no local copy). Each stream takes the next file when it is free (large and small files
    balance out). The script hashes each file while writing it (one pass) and renames it into
    ``tmp`` only when its size and sha256 match the manifest's."""
    import queue

    todo: queue.SimpleQueue[FileEntry] = queue.SimpleQueue()
    for f in sorted(files, key=lambda f: -f.bytes):
        todo.put(f)
    n_streams = min(options.parallel, len(files))
    progress = _Progress(sum(f.bytes for f in files), len(files), log, "sent")
    log(f"stage: streaming {len(files)} file(s) over OpenSSH ({n_streams} stream(s))")
    command = f"{q(options.python, script)} --dest {q(tmp)} --receive"

    def feed(sent_files: list[FileEntry], stdin: Any) -> None:
        while True:
            try:
                entry = todo.get_nowait()
            except queue.Empty:
                return
            sent_files.append(entry)
            header = {"name": entry.path, "bytes": entry.bytes, "sha256": entry.sha256}
            stdin.write(json.dumps(header).encode() + b"\n")
            body = s3.get_object(Bucket=bucket, Key=prefix + entry.path)["Body"]
            t0 = time.monotonic()
            sent = 0
            for chunk in prefetched(chunks(body, CHUNK), depth=2, name="stage-read"):
                if sent + len(chunk) > entry.bytes:  # never more than announced: the stream stays in step
                    chunk = chunk[: entry.bytes - sent]
                stdin.write(chunk)
                sent += len(chunk)
                progress.add(len(chunk))
            if sent != entry.bytes:
                raise RemoteError(
                    f"s3://{bucket}/{prefix}{entry.path} gave {sent} bytes, the manifest says "
                    f"{entry.bytes}; the dataset changed in the store - ingest it again"
                )
            progress.file_done()
            rate = entry.bytes / max(time.monotonic() - t0, 1e-6) / 1e6
            log(f"stage: sent {entry.path} ({entry.bytes} B, {rate:.1f} MB/s)")

    def send() -> None:
        report = _ScriptReport(log)
        sent_files: list[FileEntry] = []
        rc, out, err = pipe.run(command, lambda stdin: feed(sent_files, stdin), timeout=24 * 3600)
        for line in out.splitlines():
            report.on_line(line)
        if rc == 255:
            raise RemoteError(f"ssh could not connect or log in (exit 255): {err.strip()[-500:]}; retry the stage")
        report.check(rc, err, sent_files, what="receive")

    with ThreadPoolExecutor(max_workers=n_streams, thread_name_prefix="stage-push") as pool:
        for fut in [pool.submit(send) for _ in range(n_streams)]:
            fut.result()
    progress.report()


class _ScriptReport:
    """What the HPC-side script printed (``ok``, ``failed``, ``summary`` lines; see aifp_fetch)."""

    def __init__(self, log: Log, progress: _Progress | None = None) -> None:
        self.log, self.progress = log, progress
        self.failed: dict[str, str] = {}
        self.summary: dict[str, Any] = {}
        self._last_report = time.monotonic()

    def on_line(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "progress" and self.progress is not None:
            parts = rest.split()
            if len(parts) == 4 and all(p.lstrip("-").isdigit() for p in parts):
                now = time.monotonic()
                if now - self._last_report >= PROGRESS_EVERY_S:
                    self._last_report = now
                    self.progress.set(int(parts[0]), int(parts[2]))
                else:
                    self.progress.bytes, self.progress.files = int(parts[0]), int(parts[2])
        elif kind == "ok":
            parts = rest.split()
            if len(parts) >= 4:
                self.log(f"stage: {parts[0]} verified on the HPC side (sha256, {parts[2]} B, "
                         f"{int(parts[2]) / max(float(parts[3]), 1e-6) / 1e6:.1f} MB/s)")
        elif kind == "failed":
            name, _, reason = rest.partition(" ")
            self.failed[name] = reason
        elif kind == "summary":
            try:
                self.summary.update(json.loads(rest))
            except ValueError:
                pass

    def check(self, rc: int, err: str, files: list[FileEntry], *, what: str) -> None:
        """Raise RemoteError unless every file was confirmed (nothing is moved into place then)."""
        if rc != 0 or self.failed or self.summary.get("error"):
            detail = (
                "; ".join(f"{n}: {r}" for n, r in sorted(self.failed.items()))
                or self.summary.get("error") or err.strip()[-500:]
            )
            hint = (
                "Check that the cluster can reach the object store's endpoint, then retry the stage"
                if what == "fetch" else "Retry the stage; if it repeats, check the HPC filesystem"
            )
            raise RemoteError(
                f"the HPC side could not {what} {len(self.failed) or 'some'} file(s) (exit {rc}): {detail}. "
                f"Nothing was moved into place. {hint}"
            )
        missing = {f.path for f in files} - set(self.summary.get("ok", []))
        if missing:
            raise RemoteError(f"the HPC-side script did not confirm {sorted(missing)}; retry the stage")


# --------------------------------------------------------------------------------------------
# Pull
# --------------------------------------------------------------------------------------------


def install_fetch_script(shell: RemoteShell, tenant_dir: str) -> str:
    """Put the fixed fetch script under ``<tenant_dir>/.aifp/bin/`` (named by its sha256); its path.

    An existing copy is reused only if its sha256 still matches.
    """
    digest = sha256_file(FETCH_SCRIPT)
    bindir = join(tenant_dir, ".aifp", "bin")
    target = join(bindir, f"aifp_fetch-{digest[:16]}.py")
    if sha256_many(shell, [target]).get(target) == digest:
        return target
    mkdir_private(shell, tenant_dir, join(tenant_dir, ".aifp"), bindir)
    tmp = f"{target}.{secrets.token_hex(4)}"
    with shell.sftp_client().open(tmp, "wb") as fh:
        fh.write(FETCH_SCRIPT.read_bytes())
    if sha256_many(shell, [tmp]).get(tmp) != digest:
        shell.run("rm -f -- " + q(tmp))
        raise RemoteError(f"the fetch script did not arrive intact at {tmp}; retry the stage")
    check(shell, f"chmod 0500 -- {q(tmp)} && mv -f -- {q(tmp)} {q(target)}", what="installing the fetch script")
    return target


def _pull(
    s3: Any, shell: RemoteShell, *, bucket: str, prefix: str, tmp: str, files: list[FileEntry],
    options: StagingOptions, script: str, log: Log,
) -> None:
    """Have the HPC side fetch ``files`` into ``tmp`` from presigned URLs (given on stdin)."""
    request = {
        "files": [
            {
                "name": f.path,
                "bytes": f.bytes,
                "sha256": f.sha256,
                "url": s3.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": prefix + f.path}, ExpiresIn=int(options.url_ttl_s)
                ),
            }
            for f in files
        ]
    }
    progress = _Progress(sum(f.bytes for f in files), len(files), log, "fetched by the HPC side")
    report = _ScriptReport(log, progress)
    command = f"{q(options.python, script)} --dest {q(tmp)} --parallel {int(options.parallel)}"
    payload = json.dumps(request).encode()
    del request  # the URLs live only in the payload sent on stdin
    rc, _, err = run_with_input(shell, command, payload, timeout=24 * 3600, on_line=report.on_line)
    progress.report()
    report.check(rc, err, files, what="fetch")


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


#: A temporary staging directory untouched for this long belongs to a stage that was killed.
ABANDONED_AFTER_MIN = 24 * 60


def _remove_abandoned(shell: RemoteShell, parent: str, *, keep: str, log: Log) -> None:
    """Remove temporary directories of stages that died (worker killed mid-transfer): those not
    modified for :data:`ABANDONED_AFTER_MIN` minutes. A stage still running keeps writing its own."""
    rc, out, _ = shell.run(
        f"find {q(parent)} -mindepth 1 -maxdepth 1 -type d \\( -name '.staging-*' -o -name '.old-*' \\) "
        f"-mmin +{ABANDONED_AFTER_MIN} ! -path {q(keep)} -print -exec rm -rf -- {{}} + 2>/dev/null || true",
        timeout=600,
    )
    gone = [line for line in out.splitlines() if line.strip()]
    if gone:
        log(f"stage: removed {len(gone)} abandoned temporary dir(s) of killed stages: {', '.join(gone[:3])}")


def stage_dataset(
    s3: Any,
    shell: RemoteShell,
    *,
    bucket: str,
    dataset_prefix: str,
    manifest: DatasetManifest,
    tenant_dir: str,
    log: Log = print,
    options: StagingOptions | None = None,
) -> StageResult:
    """Put exactly the manifest's files under the tenant's dataset dir; verify; rename into place.

    :param s3: a client from :func:`aifactory.data.s3.make_client` (also signs pull-mode URLs).
    :param shell: the HPC login (:class:`aifactory.hpc.remote.ParamikoShell` in production).
    :param bucket: the tenant's bucket.
    :param dataset_prefix: ``<tenant>/datasets/<name>/<version>/`` in the bucket.
    :param manifest: the version's manifest; only its files are staged.
    :param tenant_dir: ``<hpc_root>/<tenant>``; created 0700 if missing.
    :param log: progress sink.
    :param options: mode and parallelism (default: push, 4 in flight).
    """
    opts = options or StagingOptions()
    started = time.monotonic()
    prefix = dataset_prefix if dataset_prefix.endswith("/") else dataset_prefix + "/"
    final = dataset_remote_dir(tenant_dir, manifest.name, manifest.version)
    total = manifest.total_bytes
    n_files = len(manifest.files)

    present = _inspect(shell, final, manifest, reverify=opts.reverify, log=log)
    if len(present.good) == n_files:
        if not present.marker_fresh:
            _write_marker(shell, final, manifest)
        log(f"stage: {final} already holds all {n_files} files ({total} B), verified: nothing to send")
        return StageResult(final, n_files, total, True, time.monotonic() - started, opts.mode, 0, 0, n_files)
    if present.good or present.bad:
        log(
            f"stage: {final} exists; {len(present.good)} file(s) verified and kept, "
            f"{n_files - len(present.good)} missing or differ"
            + (f" ({', '.join(present.bad[:5])})" if present.bad else "")
        )

    parent = join(tenant_dir, "datasets", manifest.name)
    tmp = join(parent, f".staging-{manifest.version}-{secrets.token_hex(4)}")
    mkdir_private(shell, tenant_dir, join(tenant_dir, "datasets"), parent, tmp)
    _remove_abandoned(shell, parent, keep=tmp, log=log)
    good = set(present.good)
    to_send = [f for f in manifest.files if f.path not in good]
    send_bytes = sum(f.bytes for f in to_send)
    log(
        f"stage: {opts.mode} {len(to_send)} file(s), {send_bytes} B of {total} B to {final} "
        f"({opts.parallel} in flight)"
    )
    try:
        if good:
            links = " && ".join(f"ln -- {q(join(final, n))} {q(join(tmp, n))}" for n in sorted(good))
            check(shell, links, what="reusing verified files")
        t0 = time.monotonic()
        bulk = getattr(shell, "bulk", None)
        if opts.mode == "push" and bulk is not None and to_send:
            script = install_fetch_script(shell, tenant_dir)
            _push_stream(s3, bulk, bucket=bucket, prefix=prefix, tmp=tmp, files=to_send,
                         options=opts, script=script, log=log)
        elif opts.mode == "push":
            _push(s3, shell, bucket=bucket, prefix=prefix, tmp=tmp, files=to_send, parallel=opts.parallel, log=log)
        else:
            script = install_fetch_script(shell, tenant_dir)
            _pull(s3, shell, bucket=bucket, prefix=prefix, tmp=tmp, files=to_send, options=opts, script=script, log=log)
        transfer_s = time.monotonic() - t0
        with shell.sftp_client().open(join(tmp, MANIFEST_NAME), "wb") as remote:
            remote.write(manifest.to_json().encode())
        # Swap into place: an old (bad) copy is moved aside first and removed after the rename.
        old = join(parent, f".old-{manifest.version}-{secrets.token_hex(4)}")
        check(
            shell,
            f"if [ -e {q(final)} ]; then mv -- {q(final)} {q(old)}; fi && mv -- {q(tmp)} {q(final)} "
            f"&& chmod 0700 -- {q(final)} && rm -rf -- {q(old)}",
            what=f"moving the staged dataset into {final}",
        )
    except BaseException:
        shell.run("rm -rf -- " + q(tmp), timeout=120)
        raise
    _write_marker(shell, final, manifest)
    seconds = time.monotonic() - started
    log(
        f"stage: staged {n_files} file(s), {total} B to {final} in {seconds:.1f}s ({len(to_send)} sent, "
        f"{send_bytes / max(transfer_s, 1e-6) / 1e6:.1f} MB/s; {len(good)} reused), verified by sha256 on the HPC side"
    )
    return StageResult(final, n_files, total, False, seconds, opts.mode, len(to_send), send_bytes, len(good))
