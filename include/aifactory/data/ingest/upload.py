"""Uploading shards while the next one is converted, and checking the store holds them."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from aifactory.data.ingest.sources import Log
from aifactory.data.manifest import FileEntry, sha256_file
from aifactory.data.s3 import SINGLE_PUT_LIMIT, head, put_file, upload_file
from aifactory.layout import s3_uri
from aifactory.text import shown


class _ShardUploader:
    """Uploads each shard as soon as it is complete, while the next one is being converted.

    A shard is hashed and uploaded from ONE open file descriptor, and the upload is recorded with
    the file's (inode, size, mtime): :meth:`finish` trusts a recorded upload only if the final
    shard is still that very file, and uploads anything else again, after every earlier upload has
    finished, so a shard rewritten by a widening restart can never be overtaken by its stale copy.
    """

    def __init__(self, s3: Any, bucket: str, prefix: str, *, log: Log) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.s3, self.bucket, self.prefix, self.log = s3, bucket, prefix, log
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-upload")
        self._futures: list[Any] = []
        self._done: dict[str, tuple[tuple[int, int, int], FileEntry]] = {}

    def submit(self, path: Path, rows: int) -> None:
        # Back-pressure: the conversion waits while an earlier shard is still uploading, so it
        # never runs more than one shard ahead (the uploads keep pace; bounded scratch space).
        for earlier in self._futures:
            earlier.result()
        self._futures.append(self._pool.submit(self._upload, path, rows))

    def _upload(self, path: Path, rows: int) -> None:
        started = time.monotonic()
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
            if st.st_size > SINGLE_PUT_LIMIT:
                digest = sha256_file(path)
                size = upload_file(self.s3, path, self.bucket, self.prefix + path.name)
            else:
                # The sha256 the PUT was signed with (and the store checked): no second pass.
                digest = put_file(self.s3, self.bucket, self.prefix + path.name, fh, st.st_size)
                size = st.st_size
        self._done[path.name] = (ident, FileEntry(path=path.name, bytes=size, sha256=digest, rows=rows))
        secs = max(time.monotonic() - started, 1e-6)
        self.log(f"ingest: uploaded {path.name} ({size} bytes, {rows} rows, {size / secs / 1e6:.0f} MB/s)")

    def finish(self, paths: list[Path], rows: list[int]) -> list[FileEntry]:
        for f in self._futures:
            f.result()
        self._pool.shutdown()
        files: list[FileEntry] = []
        for path, n in zip(paths, rows, strict=True):
            st = os.stat(path)
            rec = self._done.get(path.name)
            if rec is None or rec[0] != (st.st_ino, st.st_size, st.st_mtime_ns) or rec[1].rows != n:
                self._upload(path, n)
                rec = self._done[path.name]
            files.append(rec[1])
        for f in files:  # the store holds what we hashed (size check; sha256 is ours, in the manifest)
            info = head(self.s3, self.bucket, self.prefix + f.path)
            if info is None or info.size != f.bytes:
                raise OSError(
                    f"upload of {f.path} to {shown(s3_uri(self.bucket, self.prefix + f.path))} did not verify "
                    f"(local {f.bytes} bytes, remote {info.size if info else 'missing'}); retry the task"
                )
        return files

    def abort(self) -> None:
        """Stop, wait for uploads in flight, and delete what was uploaded: nothing half-built stays."""
        for f in self._futures:
            f.cancel()
        self._pool.shutdown(wait=True)
        for name in list(self._done):
            with contextlib.suppress(Exception):
                self.s3.delete_object(Bucket=self.bucket, Key=self.prefix + name)
