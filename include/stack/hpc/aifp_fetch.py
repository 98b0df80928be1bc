#!/usr/bin/env python3
"""aifp_fetch: the fixed HPC-side half of staging. Python 3 standard library only.

The worker uploads this file (checked by sha256) and runs it with the cluster's python, in one of
two modes::

    python aifp_fetch.py --dest DIR [--parallel N] < request.json        # pull
    python aifp_fetch.py --dest DIR --receive < request-line + bytes    # push

pull: the request on **stdin** (never argv: ``ps`` shows argv to every user of the login node) is::

    {"files": [{"name": "part-00000.parquet", "url": "<presigned GET URL>",
                "sha256": "<hex>", "bytes": 123}, ...]}

Each file is fetched with one streaming GET into ``DIR/<name>.part`` (several files in parallel),
hashed while it is written, checked against its size and sha256, and renamed to ``DIR/<name>``
only when both match; a mismatch or error is retried, then reported. URLs are never printed.

push (``--receive``): stdin carries the files one after the other, each as one JSON line
``{"name": ..., "bytes": N, "sha256": ...}`` followed by exactly ``N`` bytes; end of input ends
the run. Each file is written to ``DIR/<name>.part`` while it is hashed (one pass: no second read
to verify), and renamed when size and sha256 match.

stdout (one line each, for the worker's task log)::

    progress <bytes done> <bytes total> <files done> <files total>
    ok <name> <sha256> <bytes> <seconds>
    failed <name> <reason>
    summary {"ok": [...], "failed": {...}, "bytes": N, "seconds": S}

Exit status: 0 all files verified, 3 some failed, 2 bad request.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

#: a file name inside a dataset version: aifactory.layout.SAFE_FILE_RE, copied because this script
#: runs on the cluster without the package (tests/unit/test_layout.py checks the two are equal)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
CHUNK = 1024 * 1024
ATTEMPTS = 3
PROGRESS_EVERY_S = 2.0


class Progress:
    def __init__(self, total_bytes: int, total_files: int) -> None:
        self.lock = threading.Lock()
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.bytes = 0
        self.files = 0
        self.last = time.monotonic()

    def add(self, n: int, *, file_done: bool = False) -> None:
        with self.lock:
            self.bytes += n
            self.files += 1 if file_done else 0
            now = time.monotonic()
            if file_done or now - self.last >= PROGRESS_EVERY_S:
                self.last = now
                emit(f"progress {self.bytes} {self.total_bytes} {self.files} {self.total_files}")

    def undo(self, n: int) -> None:
        with self.lock:
            self.bytes -= n


_out_lock = threading.Lock()


def emit(line: str) -> None:
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class HashedWrite:
    """``<name>.part`` being written and hashed in one pass; renamed to ``<name>`` when it matches."""

    def __init__(self, dest: str, name: str, progress: Progress) -> None:
        self.dest, self.name, self.progress = dest, name, progress
        self.part = os.path.join(dest, name + ".part")
        self.digest = hashlib.sha256()
        self.got = 0
        self.started = time.monotonic()

    def copy(self, read, limit: int | None = None) -> None:
        """Copy ``read(n)`` chunks until it returns nothing, or ``limit`` bytes."""
        with open(self.part, "wb") as fh:
            while limit is None or self.got < limit:
                chunk = read(CHUNK if limit is None else min(CHUNK, limit - self.got))
                if not chunk:
                    break
                fh.write(chunk)
                self.digest.update(chunk)
                self.got += len(chunk)
                self.progress.add(len(chunk))

    def publish(self, size: int, want: str) -> str | None:
        """Rename into place if size and sha256 match (``None``), else the reason."""
        sha = self.digest.hexdigest()
        if self.got != size or sha != want:
            return f"got {self.got} bytes with sha256 {sha}, expected {size} bytes with {want}"
        os.replace(self.part, os.path.join(self.dest, self.name))
        self.progress.add(0, file_done=True)
        emit(f"ok {self.name} {sha} {self.got} {time.monotonic() - self.started:.3f}")
        return None


def _failed(part: str, name: str, reason: str) -> tuple[str, str]:
    try:
        os.unlink(part)
    except FileNotFoundError:
        pass
    emit(f"failed {name} {reason}")
    return name, reason


def fetch_one(entry: dict, dest: str, progress: Progress) -> tuple[str, str | None]:
    """Fetch one file; return ``(name, None)`` when verified, else ``(name, reason)``."""
    name, url, want, size = entry["name"], entry["url"], entry["sha256"], int(entry["bytes"])
    reason = "not attempted"
    for attempt in range(1, ATTEMPTS + 1):
        out = HashedWrite(dest, name, progress)
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                out.copy(resp.read)
        except urllib.error.HTTPError as exc:  # str() carries no URL
            reason = f"HTTP {exc.code} {exc.reason}"
            if exc.code in (400, 401, 403):  # expired or bad signature: retrying cannot help
                progress.undo(out.got)
                break
        except (urllib.error.URLError, OSError) as exc:
            reason = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc.__class__.__name__}"
        else:
            failure = out.publish(size, want)
            if failure is None:
                return name, None
            reason = failure
        progress.undo(out.got)
        if attempt < ATTEMPTS:
            time.sleep(min(2 ** attempt, 10))
    return _failed(os.path.join(dest, name + ".part"), name, reason)


class ReadAhead:
    """stdin read by a background thread, so that sshd never waits while a file is hashed and
    written (a pipe holds 64 KiB; asking for 1 MiB where the kernel allows it helps too)."""

    def __init__(self, fd: int, depth: int = 16) -> None:
        try:
            import fcntl

            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), CHUNK)
        except (ImportError, OSError):
            pass
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.buf = b""
        self.eof = False
        threading.Thread(target=self._run, args=(fd,), daemon=True).start()

    def _run(self, fd: int) -> None:
        try:
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                self.queue.put(chunk)
        except OSError:
            pass
        finally:
            self.queue.put(b"")

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.queue.get()
        if not chunk:
            self.eof = True
            return False
        self.buf = self.buf + chunk if self.buf else chunk
        return True

    def readline(self) -> bytes:
        while b"\n" not in self.buf and self._fill():
            pass
        end = self.buf.find(b"\n") + 1 or len(self.buf)
        line, self.buf = self.buf[:end], self.buf[end:]
        return line

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; ``b""`` only at the end of input."""
        if not self.buf:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data


def receive_one(entry: dict, dest: str, stream, progress: Progress) -> tuple[str, str | None]:
    """Write the next ``bytes`` of ``stream`` to ``dest/<name>``; ``(name, None)`` when verified."""
    name, want, size = entry["name"], entry["sha256"], int(entry["bytes"])
    out = HashedWrite(dest, name, progress)
    out.copy(stream.read, limit=size)
    reason = "the stream ended early" if out.got < size else out.publish(size, want)
    if reason is None:
        return name, None
    return _failed(out.part, name, reason)


def check_request(files: list, *, urls: bool) -> None:
    for f in files:
        if not NAME_RE.match(f["name"]):
            raise ValueError(f"bad entry {f.get('name')!r}")
        if urls and not str(f["url"]).startswith(("https://", "http://")):
            raise ValueError(f"bad URL for {f['name']!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", f["sha256"]) or int(f["bytes"]) < 0:
            raise ValueError(f"bad digest or size for {f['name']!r}")
    if len({f["name"] for f in files}) != len(files):
        raise ValueError("duplicate file names")


def finish(ok: list, failed: dict, progress: Progress, started: float) -> int:
    """Print the summary line; the exit status (0 all verified, 3 some failed)."""
    summary = {"ok": ok, "failed": failed, "bytes": progress.bytes, "seconds": round(time.monotonic() - started, 3)}
    emit("summary " + json.dumps(summary, sort_keys=True))
    return 3 if failed else 0


def receive(dest: str, stream) -> int:
    """Push mode: files from ``stream`` (a JSON line, then the bytes) until end of input."""
    started = time.monotonic()
    progress = Progress(0, 0)
    failed: dict[str, str] = {}
    ok: list[str] = []
    while True:
        line = stream.readline()
        if not line:
            break
        try:
            entry = json.loads(line)
            check_request([entry], urls=False)
            if entry["name"] in ok or entry["name"] in failed:
                raise ValueError(f"{entry['name']!r} sent twice")
        except (ValueError, KeyError, TypeError) as exc:
            # the stream cannot be followed any further: the rest is unknown bytes
            emit(f"summary {json.dumps({'error': f'bad request: {exc}', 'ok': ok, 'failed': failed})}")
            return 2
        name, reason = receive_one(entry, dest, stream, progress)
        if reason is None:
            ok.append(name)
        else:
            failed[name] = reason
            if reason == "the stream ended early":
                break
    return finish(ok, failed, progress, started)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dest", required=True, help="existing private directory to fill")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--receive", action="store_true", help="push: the files follow the request on stdin")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.dest):
        emit(f"summary {json.dumps({'error': 'destination directory does not exist'})}")
        return 2
    if args.receive:
        return receive(args.dest, ReadAhead(sys.stdin.fileno()))
    try:
        request = json.loads(sys.stdin.buffer.read())
        files = request["files"]
        check_request(files, urls=True)
    except (ValueError, KeyError, TypeError) as exc:
        emit(f"summary {json.dumps({'error': f'bad request: {exc}'})}")
        return 2
    started = time.monotonic()
    progress = Progress(sum(int(f["bytes"]) for f in files), len(files))
    failed: dict[str, str] = {}
    ok: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, min(args.parallel, 32))) as pool:
        for name, reason in pool.map(lambda f: fetch_one(f, args.dest, progress), files):
            if reason is None:
                ok.append(name)
            else:
                failed[name] = reason
    return finish(ok, failed, progress, started)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
