"""Object storage access: one S3 client shape, strict URI checks, and whole-object transfers.

Why these choices:

* **Checksums only when required** (``docs/failure-modes.md``, section 12). Recent boto3 adds CRC checksums to every
  request by default, which several S3-compatible stores reject or mangle. We keep our own sha256
  in the dataset manifest instead, and never treat an ETag as a content checksum.
* **Whole-object streaming.** S3 emulators (moto) pay roughly the full object for every ranged GET,
  so boto3's parallel ``download_file`` is ~50x slower there than one streaming ``get_object``;
  on real S3 or MinIO a single stream is fine too. Uploads use one ``put_object`` up to 256 MiB
  and few, large multipart parts above that.
* **Strict URIs.** Dataset URIs come from a trigger form. ``parse_s3_uri`` refuses anything that
  could escape a prefix or confuse a log reader (``..``, empty segments, control characters,
  backslashes, a leading ``/``), and ``check_tenant_uri`` confines a tenant to its own raw area.
* **One conditional write.** :func:`put_if_absent` is the only way the factory writes an object
  that must never be overwritten (a dataset's or a model's ``manifest.json``, a quality verdict):
  ``If-None-Match: *``, which AWS S3, MinIO and moto enforce.

Nothing here imports Airflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.errors import InputError
from aifactory.layout import raw_prefix, s3_uri
from aifactory.text import shown

#: Objects up to this size are uploaded with one PUT; above it, multipart with large parts.
SINGLE_PUT_LIMIT = 256 * 1024 * 1024
MULTIPART_PART_SIZE = 64 * 1024 * 1024
_CHUNK = 1024 * 1024

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_KEY_BYTES = 1024


def make_client(
    *,
    endpoint_url: str | None,
    access_key: str | None,
    secret_key: str | None,
    region: str = "us-east-1",
) -> Any:
    """Return a boto3 S3 client configured for AWS S3 and S3-compatible stores alike.

    :param endpoint_url: ``None`` for AWS; otherwise the store's URL (MinIO, moto, ...).
    :param access_key: ``None`` to use boto3's default credential chain.
    :param secret_key: must be given together with ``access_key``.
    :param region: signing region; S3-compatible stores usually accept ``us-east-1``.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=region,
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": 5},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    kwargs: dict[str, Any] = {"config": config, "region_name": region}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    if access_key is not None:
        kwargs["aws_access_key_id"] = access_key
        kwargs["aws_secret_access_key"] = secret_key
    return boto3.client("s3", **kwargs)


# --------------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------------


def _bad(uri: str, rule: str) -> InputError:
    # shown() so that odd characters show up escaped in logs instead of acting on the terminal.
    return InputError(f"invalid S3 URI {shown(uri)}: {rule}")


def validate_bucket_name(bucket: str, *, uri: str | None = None) -> None:
    """Raise :class:`InputError` unless ``bucket`` is a valid S3 bucket name."""
    where = uri if uri is not None else bucket
    if not _BUCKET_RE.match(bucket) or ".." in bucket or _IPV4_RE.match(bucket):
        raise _bad(
            where,
            f"bucket name {shown(bucket)} is not valid (3-63 characters: lowercase letters, digits, "
            "'.' and '-', starting and ending with a letter or digit)",
        )


def validate_key(key: str, *, uri: str | None = None, allow_prefix: bool = True) -> None:
    """Raise :class:`InputError` unless ``key`` is a safe object key (or prefix ending in ``/``).

    Safe means: no control characters, no backslashes, no leading ``/``, no empty, ``.`` or ``..``
    segments, at most 1024 bytes. A trailing ``/`` (a prefix) is accepted when ``allow_prefix``.
    """
    where = uri if uri is not None else key
    if _CONTROL_RE.search(key):
        raise _bad(where, "it contains control characters; remove them")
    if "\\" in key:
        raise _bad(where, "it contains a backslash; use '/' to separate folders")
    if key.startswith("/"):
        raise _bad(where, "the key starts with '/' (write s3://bucket/path, with exactly one '/')")
    if len(key.encode("utf-8")) > _MAX_KEY_BYTES:
        raise _bad(where, f"the key is longer than {_MAX_KEY_BYTES} bytes")
    if not key:
        return
    body = key[:-1] if key.endswith("/") else key
    if key.endswith("/") and not allow_prefix:
        raise _bad(where, "it names a folder (ends with '/'); name one object")
    for segment in body.split("/"):
        if segment == "":
            raise _bad(where, "it contains an empty path segment ('//')")
        if segment in (".", ".."):
            raise _bad(where, f"it contains a {segment!r} path segment; use the plain path")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)`` after strict validation.

    The key may be empty (the bucket root) or end in ``/`` (a prefix). Raises
    :class:`InputError` naming the URI and the rule it broke.
    """
    if not isinstance(uri, str):
        raise InputError(f"invalid S3 URI {shown(uri)}: expected a string like s3://bucket/path")
    if uri != uri.strip():
        raise _bad(uri, "it has leading or trailing whitespace; remove it")
    if _CONTROL_RE.search(uri):
        raise _bad(uri, "it contains control characters; remove them")
    if not uri.startswith("s3://"):
        raise _bad(uri, "it must start with 's3://' (lowercase), e.g. s3://bucket/tenant/raw/data.csv")
    rest = uri[len("s3://") :]
    bucket, sep, key = rest.partition("/")
    if not bucket:
        raise _bad(uri, "the bucket name is missing")
    validate_bucket_name(bucket, uri=uri)
    validate_key(key, uri=uri)
    return bucket, key


def check_tenant_uri(uri: str, *, bucket: str, tenant: str) -> str:
    """Return the key of ``uri`` if it lies inside ``s3://<bucket>/<tenant>/raw/``.

    A tenant may only ingest from its own raw area; the bucket and tenant come from the
    platform-owned tenant spec, never from the user. Raises :class:`InputError` otherwise.
    """
    got_bucket, key = parse_s3_uri(uri)
    allowed = s3_uri(bucket, raw_prefix(tenant))
    if got_bucket != bucket or not key.startswith(raw_prefix(tenant)):
        raise InputError(
            f"dataset URI {shown(uri)} is outside this tenant's upload area; datasets must be under "
            f"{allowed} (upload the file there and point dataset_uri at it)"
        )
    if key == raw_prefix(tenant):
        raise InputError(
            f"dataset URI {shown(uri)} names the whole upload area; name one file or one folder "
            f"inside {allowed}"
        )
    return key


# --------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or HEAD tells us about one object. ``etag`` is unquoted."""

    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class Download:
    """Result of :func:`download_to`: the bytes written and their sha256, computed in-stream."""

    path: Path
    bytes: int
    sha256: str
    etag: str


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def is_not_found(exc: BaseException) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


def is_precondition_failed(exc: BaseException) -> bool:
    return _error_code(exc) in ("412", "PreconditionFailed", "ConditionalRequestConflict", "409")


def _etag(raw: str | None) -> str:
    return (raw or "").strip('"')


def head(s3: Any, bucket: str, key: str) -> ObjectInfo | None:
    """Return the object's size and ETag, or ``None`` if it does not exist."""
    from botocore.exceptions import ClientError

    try:
        resp = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise
    return ObjectInfo(key=key, size=int(resp["ContentLength"]), etag=_etag(resp.get("ETag")))


def object_exists(s3: Any, bucket: str, key: str) -> bool:
    return head(s3, bucket, key) is not None


def iter_objects(s3: Any, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
    """Yield every object under ``prefix`` (recursively), in key order."""
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []) or []:
            yield ObjectInfo(key=item["Key"], size=int(item["Size"]), etag=_etag(item.get("ETag")))


def list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    return [obj.key for obj in iter_objects(s3, bucket, prefix)]


def put_bytes(s3: Any, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
    """Write ``data`` to ``key``, replacing what is there (see :func:`put_if_absent` for the other case)."""
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)


#: How often :func:`put_if_absent` tries again when the store reports a conflicting write in flight.
PUT_IF_ABSENT_ATTEMPTS = 3


def put_if_absent(
    s3: Any, bucket: str, key: str, body: bytes, *, content_type: str = "application/octet-stream"
) -> bool:
    """Write ``body`` to ``key`` only if no object is there yet; ``True`` when written, ``False``
    when the key already existed (the object there is left as it is).

    ``If-None-Match: *`` makes the store decide atomically, so of two writers racing for the same
    key exactly one wins and the other learns it (412 Precondition Failed): a published manifest is
    never overwritten and a loser reads the winner's. AWS S3 can also answer 409
    ``ConditionalRequestConflict`` while another conditional write to the key is in flight; that
    write may still fail, so this tries again (:data:`PUT_IF_ABSENT_ATTEMPTS` times) before raising.
    There is deliberately no fallback to HEAD-then-PUT: a store that ignores ``If-None-Match``
    is not supported.
    """
    import time

    from botocore.exceptions import ClientError

    for attempt in range(PUT_IF_ABSENT_ATTEMPTS):
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, IfNoneMatch="*")
            return True
        except ClientError as exc:
            code = _error_code(exc)
            if code in ("412", "PreconditionFailed"):
                return False
            if code not in ("409", "ConditionalRequestConflict") or attempt + 1 == PUT_IF_ABSENT_ATTEMPTS:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def get_bytes(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def get_json(s3: Any, bucket: str, key: str) -> Any:
    return json.loads(get_bytes(s3, bucket, key).decode("utf-8"))


def get_object(s3: Any, bucket: str, key: str, *, if_match: str | None = None) -> Any:
    """One streaming GET (the response; its ``Body`` is read as it arrives). ``if_match`` (an
    ETag) makes it fail with a precondition error if the object changed since it was listed."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if if_match:
        kwargs["IfMatch"] = f'"{if_match}"'
    return s3.get_object(**kwargs)


def _copy_hashed(resp: Any, write: Any, *, label: str, chunk: int) -> tuple[int, str]:
    """A GET response's body into ``write``, hashing as it goes; ``(bytes, sha256)``.

    :raises OSError: the body ended before its ``Content-Length`` (retry the task).
    """
    expected = int(resp.get("ContentLength", -1))
    digest = hashlib.sha256()
    written = 0
    for piece in resp["Body"].iter_chunks(chunk):
        write(piece)
        digest.update(piece)
        written += len(piece)
    if expected >= 0 and written != expected:
        raise OSError(f"short read from {label}: got {written} of {expected} bytes; retry the task")
    return written, digest.hexdigest()


#: The PUT requests of this thread record the payload sha256 they were signed with here.
_SIGNED_PAYLOAD = threading.local()
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _record_signed_payload(request: Any, **_: Any) -> None:
    sink = getattr(_SIGNED_PAYLOAD, "sink", None)
    if sink is not None:
        value = request.headers.get("X-Amz-Content-SHA256")  # bytes once the request is prepared
        sink.append(value.decode("ascii", "replace") if isinstance(value, bytes) else value)


def put_file(s3: Any, bucket: str, key: str, fh: Any, size: int, *, content_type: str = "application/octet-stream") -> str:
    """One ``put_object`` of ``size`` bytes of an open file, from its position; returns their sha256.

    botocore hashes a PUT body for its SigV4 signature (``x-amz-content-sha256``: always over plain
    HTTP and, with checksums only when required, over HTTPS too) and the store checks the body it
    receives against that hash. The hash is taken from the signed request, so the file is not read
    a second time to hash it, and the sha256 recorded in a manifest is the one the store verified.
    Where a request carries no payload hash (``UNSIGNED-PAYLOAD``) the file is hashed here.
    """
    start = fh.tell()
    if os.fstat(fh.fileno()).st_size - start != size:
        raise OSError(f"{getattr(fh, 'name', 'file')} is not {size} bytes from offset {start}; it changed while uploading")
    s3.meta.events.register("before-send.s3.PutObject", _record_signed_payload, unique_id="aifactory-signed-payload")
    _SIGNED_PAYLOAD.sink = signed = []
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=fh, ContentLength=size, ContentType=content_type)
    finally:
        _SIGNED_PAYLOAD.sink = None
    if signed and isinstance(signed[-1], str) and _SHA256_HEX.fullmatch(signed[-1]):
        return signed[-1]
    fh.seek(start)
    return hashlib.file_digest(fh, hashlib.sha256).hexdigest()


def download_bytes(s3: Any, bucket: str, key: str) -> tuple[bytearray, str]:
    """One object into memory with a single streaming GET; ``(bytes, sha256)``, hashed in-stream.

    For objects that are read whole anyway (a Parquet shard to validate): no local file to write
    and read back. The pieces go into one buffer of the object's size (none kept to join), so
    memory holds the object once.

    :raises OSError: the body is shorter or longer than its ``Content-Length`` (retry the task).
    """
    resp = get_object(s3, bucket, key)
    size = int(resp.get("ContentLength", -1))
    if size < 0:
        raise OSError(f"{shown(s3_uri(bucket, key))}: the endpoint sent no Content-Length; cannot check the download")
    buf = bytearray(size)
    view = memoryview(buf)
    filled = 0

    def write(piece: bytes) -> None:
        nonlocal filled
        end = filled + len(piece)
        if end > size:
            raise OSError(f"{shown(s3_uri(bucket, key))} sent more than its {size} bytes; retry the task")
        view[filled:end] = piece
        filled = end

    try:
        _, digest = _copy_hashed(resp, write, label=shown(s3_uri(bucket, key)), chunk=8 * _CHUNK)
    finally:
        view.release()
    return buf, digest


def download_to(
    s3: Any, bucket: str, key: str, path: Path, *, if_match: str | None = None
) -> Download:
    """Stream one object to ``path`` with a single GET, hashing as it goes.

    The file is written as ``<path>.part`` and renamed when complete, so a crash never leaves a
    truncated file under the final name. ``if_match`` (an ETag) makes the GET fail if the object
    changed since it was listed, so the bytes we convert are the ones the version was derived from.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "wb") as fh:
            resp = get_object(s3, bucket, key, if_match=if_match)
            written, digest = _copy_hashed(resp, fh.write, label=shown(s3_uri(bucket, key)), chunk=_CHUNK)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return Download(path=path, bytes=written, sha256=digest, etag=_etag(resp.get("ETag")))


def upload_file(
    s3: Any,
    path: Path,
    bucket: str,
    key: str,
    *,
    content_type: str = "application/octet-stream",
    single_put_limit: int = SINGLE_PUT_LIMIT,
    part_size: int = MULTIPART_PART_SIZE,
) -> int:
    """Upload a local file; return its size.

    One ``put_object`` up to ``single_put_limit``; above it a multipart upload with large parts
    (aborted on any error so no orphaned parts accumulate). The size is checked with a HEAD after
    the upload.
    """
    path = Path(path)
    size = path.stat().st_size
    if size <= single_put_limit:
        with open(path, "rb") as fh:
            s3.put_object(Bucket=bucket, Key=key, Body=fh, ContentLength=size, ContentType=content_type)
    else:
        _multipart_upload(s3, path, bucket, key, content_type=content_type, part_size=part_size)
    info = head(s3, bucket, key)
    if info is None or info.size != size:
        raise OSError(
            f"upload of {path.name} to {shown(s3_uri(bucket, key))} did not verify "
            f"(local {size} bytes, remote {info.size if info else 'missing'}); retry the task"
        )
    return size


def _multipart_upload(
    s3: Any, path: Path, bucket: str, key: str, *, content_type: str, part_size: int
) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)
    upload_id = upload["UploadId"]
    parts: list[dict[str, Any]] = []
    try:
        with open(path, "rb") as fh:
            number = 1
            while True:
                data = fh.read(part_size)
                if not data:
                    break
                resp = s3.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                )
                parts.append({"PartNumber": number, "ETag": resp["ETag"]})
                number += 1
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        # Best effort: the original error is the one worth reporting.
        with contextlib.suppress(Exception):
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
