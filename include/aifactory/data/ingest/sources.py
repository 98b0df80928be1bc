"""The source objects of one ingest: resolved from the URI, read through a pinned, hashed reader.

Each source is fetched with ONE streaming GET pinned to the listed ETag (``If-Match``), so the
bytes converted are the bytes the version was derived from; every full read records the byte count
and sha256 that the manifest keeps. CSV and JSON Lines stream straight into the parser; Parquet
needs random access and is downloaded first, through the same reader.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from aifactory.data.ingest import limits
from aifactory.data.ingest.formats import SourceFormat, detect_format
from aifactory.data.s3 import ObjectInfo, get_object, head, is_precondition_failed, iter_objects, validate_key
from aifactory.errors import InputError
from aifactory.layout import s3_uri
from aifactory.text import shown

#: Where progress lines go (``print``, a logger's ``info``).
Log = Callable[[str], Any]


class SourceReadError(RuntimeError):
    """A source's bytes did not arrive whole (network, store): transient, the task should retry."""


class _HashingReader(io.RawIOBase):
    """A source's raw byte stream that hashes what passes through and checks the length at EOF."""

    def __init__(self, raw: Any, source: SourceObject) -> None:
        super().__init__()
        self._raw, self._source = raw, source
        self._hash = hashlib.sha256()
        self._count = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read() if size is None or size < 0 else self._raw.read(size)
        if data:
            self._hash.update(data)
            self._count += len(data)
            self._source.bytes_read = self._count
        elif not self._done:
            self._done = True
            if self._source.size is not None and self._count != self._source.size:
                raise SourceReadError(
                    f"short read from {self._source.shown_label}: got {self._count} of "
                    f"{self._source.size} bytes; retry the task"
                )
            self._source.digest = (self._count, self._hash.hexdigest())
        return bytes(data)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class SourceObject:
    """One input of a conversion: a label for messages, a name that tells its format, and a way
    to open its raw bytes again (a conversion restarts after widening a type, error messages look
    up a line). Every full read records the byte count and sha256 in :attr:`digest`.

    CSV and JSON Lines sources are streamed straight from the store into the parser (no local
    copy); Parquet needs random access, so Parquet sources are downloaded first (:meth:`local`).
    """

    def __init__(
        self, label: str, name: str, opener: Callable[[], Any], *, size: int | None = None,
        path: Path | None = None,
    ) -> None:
        self.label, self.name, self.size, self.path = label, name, size, path
        self._opener = opener
        self.digest: tuple[int, str] | None = None
        self.bytes_read = 0  # of the pass in progress (progress reports)

    @property
    def shown_label(self) -> str:
        """The label for a log line or a message (keys are user-chosen: escaped, quoted)."""
        return shown(self.label)

    @classmethod
    def local(cls, path: Path, label: str | None = None) -> SourceObject:
        path = Path(path)
        return cls(label or path.name, path.name, lambda: open(path, "rb"), size=path.stat().st_size, path=path)

    def open(self) -> IO[bytes]:
        return _HashingReader(self._opener(), self)  # type: ignore[return-value]

    def finish(self) -> tuple[int, str]:
        """Bytes and sha256 of the source; reads it once more only if no pass reached its end."""
        if self.digest is None:
            with self.open() as fh:
                while fh.read(_HASH_CHUNK):
                    pass
        assert self.digest is not None
        return self.digest


_HASH_CHUNK = 8 * 1024 * 1024


def _open_stream(src: SourceObject, fmt: SourceFormat) -> Any:
    """The source's bytes, decompressed; ``read(n)`` and ``close()``."""
    raw = src.open()
    if fmt.compression is None:
        return raw
    import pyarrow as pa

    return pa.input_stream(raw, compression=fmt.compression)


def _open_text(src: SourceObject, fmt: SourceFormat) -> IO[str]:
    """The source as text (error paths only: header names, line numbers)."""
    raw: Any = src.open()
    if fmt.compression == "gzip":
        raw = gzip.GzipFile(fileobj=raw, mode="rb")
    elif fmt.compression is not None:  # zstd: Python 3.11 has no stdlib codec; pyarrow's stream
        import pyarrow as pa

        raw = pa.input_stream(raw, compression=fmt.compression)
    return io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", errors="replace", newline="")  # type: ignore[arg-type]


def resolve_sources(s3: Any, *, bucket: str, key: str, uri: str) -> tuple[list[ObjectInfo], SourceFormat]:
    """List the objects a source URI stands for and check they are usable."""
    if key.endswith("/"):
        objects = []
        for obj in iter_objects(s3, bucket, key):
            base = obj.key.rsplit("/", 1)[-1]
            if obj.key.endswith("/") or base.startswith((".", "_")):
                continue
            validate_key(obj.key, uri=s3_uri(bucket, obj.key))
            objects.append(obj)
            if len(objects) > limits.MAX_SOURCE_OBJECTS:
                raise InputError(
                    f"{shown(uri)} holds more than {limits.MAX_SOURCE_OBJECTS} objects; combine them into fewer, "
                    "larger files"
                )
        if not objects:
            raise InputError(f"no object at {shown(uri)}; upload the dataset first or fix dataset_uri")
    else:
        info = head(s3, bucket, key)
        if info is None:
            hint = ""
            if next(iter_objects(s3, bucket, key + "/"), None) is not None:
                hint = f" (there is a folder {shown(uri + '/')} - end the URI with '/' to ingest the whole folder)"
            raise InputError(f"no object at {shown(uri)}; upload the dataset first or fix dataset_uri{hint}")
        objects = [info]

    formats = {detect_format(o.key) for o in objects}
    kinds = {f.kind for f in formats}
    if len(kinds) > 1:
        raise InputError(
            f"{shown(uri)} mixes formats ({', '.join(sorted(kinds))}); put one format in a dataset folder"
        )
    for obj in objects:
        if obj.size == 0:
            raise InputError(
                f"{shown(s3_uri(bucket, obj.key))} is empty (0 bytes); upload the file again "
                "(the upload may have been interrupted)"
            )
    # The kind is common to all objects; compression is decided per file when converting.
    return objects, sorted(formats, key=lambda f: f.extension)[0]


def _source_from_store(
    s3: Any, bucket: str, obj: ObjectInfo, *, index: int, srcdir: Path, fmt: SourceFormat, log: Log
) -> SourceObject:
    """A source object of the store, pinned to the listed ETag (``If-Match``): every read gets the
    bytes the version was derived from, or an InputError if the object was replaced meanwhile.
    Text formats stream from the GET into the parser; Parquet is downloaded first (random access)."""
    label = s3_uri(bucket, obj.key)

    def opener() -> Any:
        try:
            return get_object(s3, bucket, obj.key, if_match=obj.etag or None)["Body"]
        except Exception as exc:  # botocore ClientError, without importing botocore here
            if is_precondition_failed(exc):
                raise InputError(
                    f"{shown(label)} changed while it was being ingested; wait for the upload to finish and run again"
                ) from None
            raise

    src = SourceObject(label, obj.key.rsplit("/", 1)[-1], opener, size=obj.size)
    if fmt.kind != "parquet":
        return src
    # Local names never derive from the key: nothing in a key can steer a local path.
    target = srcdir / f"src-{index:05d}{detect_format(obj.key).extension}"
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with src.open() as body, open(target, "wb") as fh:  # the same pinned, hashed read
        shutil.copyfileobj(body, fh, _HASH_CHUNK)
    size, _ = src.finish()
    secs = max(time.monotonic() - started, 1e-6)
    log(f"ingest: downloaded {shown(label)} ({size} bytes, {size / secs / 1e6:.1f} MB/s)")
    local = SourceObject.local(target, label)
    local.digest = src.digest
    return local
