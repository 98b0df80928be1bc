#!/usr/bin/env python3
"""aifp_fetch: the fixed HPC-side half of pull-mode staging. Python 3 standard library only.

The worker uploads this file (checked by sha256) and runs it with the cluster's python::

    python aifp_fetch.py --dest DIR [--parallel N] < request.json

The request on **stdin** (never argv: ``ps`` shows argv to every user of the login node) is::

    {"files": [{"name": "part-00000.parquet", "url": "<presigned GET URL>",
                "sha256": "<hex>", "bytes": 123}, ...]}

Each file is fetched with one streaming GET into ``DIR/<name>.part`` (several files in parallel),
hashed while it is written, checked against its size and sha256, and renamed to ``DIR/<name>``
only when both match; a mismatch or error is retried, then reported. URLs are never printed.

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
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

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


def fetch_one(entry: dict, dest: str, progress: Progress) -> tuple[str, str | None]:
    """Fetch one file; return ``(name, None)`` when verified, else ``(name, reason)``."""
    name, url, want, size = entry["name"], entry["url"], entry["sha256"], int(entry["bytes"])
    part = os.path.join(dest, name + ".part")
    reason = "not attempted"
    for attempt in range(1, ATTEMPTS + 1):
        started = time.monotonic()
        digest = hashlib.sha256()
        got = 0
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as fh:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    fh.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    progress.add(len(chunk))
        except urllib.error.HTTPError as exc:  # str() carries no URL
            reason = f"HTTP {exc.code} {exc.reason}"
            if exc.code in (400, 401, 403):  # expired or bad signature: retrying cannot help
                progress.undo(got)
                break
        except (urllib.error.URLError, OSError) as exc:
            reason = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc.__class__.__name__}"
        else:
            sha = digest.hexdigest()
            if got == size and sha == want:
                os.replace(part, os.path.join(dest, name))
                progress.add(0, file_done=True)
                emit(f"ok {name} {sha} {got} {time.monotonic() - started:.3f}")
                return name, None
            reason = f"got {got} bytes with sha256 {sha}, expected {size} bytes with {want}"
        progress.undo(got)
        if attempt < ATTEMPTS:
            time.sleep(min(2 ** attempt, 10))
    try:
        os.unlink(part)
    except FileNotFoundError:
        pass
    emit(f"failed {name} {reason}")
    return name, reason


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dest", required=True, help="existing private directory to fill")
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        request = json.loads(sys.stdin.read())
        files = request["files"]
        for f in files:
            if not NAME_RE.match(f["name"]) or not str(f["url"]).startswith(("https://", "http://")):
                raise ValueError(f"bad entry {f.get('name')!r}")
            if not re.fullmatch(r"[0-9a-f]{64}", f["sha256"]) or int(f["bytes"]) < 0:
                raise ValueError(f"bad digest or size for {f['name']!r}")
    except (ValueError, KeyError, TypeError) as exc:
        emit(f"summary {json.dumps({'error': f'bad request: {exc}'})}")
        return 2
    if not os.path.isdir(args.dest):
        emit(f"summary {json.dumps({'error': 'destination directory does not exist'})}")
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
    summary = {"ok": ok, "failed": failed, "bytes": progress.bytes, "seconds": round(time.monotonic() - started, 3)}
    emit("summary " + json.dumps(summary, sort_keys=True))
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
