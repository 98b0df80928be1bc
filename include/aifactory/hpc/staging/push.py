"""Push: the worker streams each object from S3 to the HPC side, over OpenSSH through the fixed
script (hashed while written) or, without an ``ssh`` binary, over SFTP (hashed as each lands)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

from aifactory.data.manifest import FileEntry
from aifactory.data.readahead import chunks, prefetched
from aifactory.hpc.remote import OpenSSHPipe, RemoteError, RemoteShell, join, open_sftp, q, sha256_many
from aifactory.hpc.staging.options import Log, StagingOptions
from aifactory.hpc.staging.progress import _Progress
from aifactory.hpc.staging.script import _ScriptReport
from aifactory.layout import s3_uri
from aifactory.text import shown, shown_list

#: Bytes per read from the object store and per write to the HPC side.
CHUNK = 8 * 1024 * 1024


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
        log(f"stage: sent {shown(entry.path)} ({entry.bytes} B, {rate:.1f} MB/s)")
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
            f"sha256 mismatch on the HPC side after transfer for {shown_list(sorted(mismatches))}; "
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
                    f"{shown(s3_uri(bucket, prefix + entry.path))} gave {sent} bytes, the manifest says "
                    f"{entry.bytes}; the dataset changed in the store - ingest it again"
                )
            progress.file_done()
            rate = entry.bytes / max(time.monotonic() - t0, 1e-6) / 1e6
            log(f"stage: sent {shown(entry.path)} ({entry.bytes} B, {rate:.1f} MB/s)")

    def send() -> None:
        report = _ScriptReport(log)
        sent_files: list[FileEntry] = []
        rc, out, err = pipe.run(command, lambda stdin: feed(sent_files, stdin), timeout=24 * 3600)
        for line in out.splitlines():
            report.on_line(line)
        if rc == 255:
            raise RemoteError(f"ssh could not connect, log in or keep its connection (exit 255): {err.strip()[-500:]}; "
                              "nothing was moved into place. Retry the stage; if it repeats, check the cluster's sshd")
        report.check(rc, err, sent_files, what="receive")

    with ThreadPoolExecutor(max_workers=n_streams, thread_name_prefix="stage-push") as pool:
        for fut in [pool.submit(send) for _ in range(n_streams)]:
            fut.result()
    progress.report()
