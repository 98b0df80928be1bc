"""moto's S3 server for the LOCAL STACK ONLY, with IAM policies enforced and presigned URLs that work.

``python moto_iam_server.py -H 127.0.0.1 -p 5555 --platform-credential <secrets>/s3/platform.json``
(started by ``stack.sh up_s3``) serves moto's own WSGI app, with IAM enforced from its very first
request, behind a small middleware. Before it listens, it makes the platform's IAM user
(:data:`aifactory.platform.objectstore.PLATFORM_USER`, an inline ``*`` policy: moto loads no AWS
managed policies) in moto's backend, in this process, with the access key kept in the credential
file (written 0600 the first time). So no request ever reaches moto unauthenticated (moto's
``INITIAL_NO_AUTH_ACTION_COUNT`` would let the first N requests of anyone through), and after a
restart the platform key is the same: the ``AIRFLOW_CONN_AIFACTORY_S3`` of running Airflow
components stays valid; the tenants' users and keys are made again by onboarding (their
connections are read from the connections file at every lookup).

Why the middleware, as measured with moto 5.2.5 in IAM mode:

* object-level resource ARNs in a user's policy are enforced (Get/Put/Head/Delete/multipart on
  another bucket: AccessDenied), and so is ListBucket on another bucket: one bucket per tenant.
* a presigned (SigV4 *query*-signed) GET answers HTTP 500: moto's IAM check reads only the
  ``Authorization`` header (``KeyError: 'Authorization'`` in ``moto/iam/access_control.py``), so pull
  staging could not work. The middleware verifies the query signature itself, with the secret of
  the access key it names (taken from moto's IAM backend, in this process), refuses an expired,
  tampered or unknown one (403), and otherwise re-signs the same request with the same key as a
  header-signed one. moto then checks that signature and applies *that user's* policy as for any
  other request: a presigned URL grants exactly what its signer may do, no more.
* a request with no credentials at all also answered 500; it is refused here (403 AccessDenied).
* ``/moto-api/`` answers anyone without credentials and can reset every backend, dump every
  model (secret keys included: ``/moto-api/data.json``) or switch authentication off
  (``/moto-api/reset-auth``): refused here. ``x-moto-account-id`` (which picks another account) is
  dropped.
* copy_object (and upload_part_copy) did not check the *source* against the signer's policy: a
  tenant could copy another bucket's object into its own. AWS and MinIO require s3:GetObject on the
  source; so does the middleware, with moto's own policy evaluation, before moto sees the request
  (moto still checks the signature and PutObject on the destination).

Real S3 and MinIO verify presigned URLs themselves; nothing here is needed there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

#: the query parameters of a SigV4 presigned URL (removed when the request is re-signed)
_QUERY_AUTH = ("x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-expires", "x-amz-signedheaders",
               "x-amz-signature", "x-amz-security-token")
_MAX_EXPIRES_S = 7 * 24 * 3600  # the SigV4 limit


def _error(start_response: Callable[..., Any], status: str, code: str, message: str) -> list[bytes]:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            "</Error>").encode()
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


def _quote(value: str) -> str:
    return quote(value, safe="-_.~")


def _raw_path(environ: dict[str, Any]) -> str:
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or quote(environ.get("PATH_INFO", "/"))
    if "://" in raw.split("?", 1)[0]:
        raw = "/" + raw.split("://", 1)[1].partition("/")[2]
    return raw.split("?", 1)[0] or "/"


def _secret_of(access_key_id: str) -> str | None:
    """The secret of an IAM user's access key, from moto's backend in this process (None: unknown)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.access_control import CreateAccessKeyFailure, IAMUserAccessKey

    try:
        key = IAMUserAccessKey(account_id=DEFAULT_ACCOUNT_ID, partition="aws", access_key_id=access_key_id,
                               headers={})
    except CreateAccessKeyFailure:
        return None
    return key._secret_access_key


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _header(environ: dict[str, Any], name: str) -> str:
    if name == "host":
        return environ.get("HTTP_HOST", "")
    if name in ("content-type", "content-length"):
        return environ.get(name.upper().replace("-", "_"), "")
    return environ.get("HTTP_" + name.upper().replace("-", "_"), "")


def presigned_to_header_signed(environ: dict[str, Any], now: dt.datetime | None = None) -> tuple[str, str] | None:
    """Verify a SigV4 query-signed request; on success rewrite ``environ`` into the same request
    signed with the same key in an ``Authorization`` header and return None, else return the S3
    error (code, message) saying why not."""
    pairs = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    auth = {k.lower(): v for k, v in pairs if k.lower() in _QUERY_AUTH}
    if auth.get("x-amz-algorithm") != "AWS4-HMAC-SHA256" or "x-amz-security-token" in auth:
        return "AccessDenied", "only AWS4-HMAC-SHA256 presigned URLs of an IAM user's access key are accepted"
    try:
        akid, date, region, service, terminal = auth["x-amz-credential"].split("/")
        amz_date, signed, signature = auth["x-amz-date"], auth["x-amz-signedheaders"], auth["x-amz-signature"]
        expires = int(auth["x-amz-expires"])
        issued = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except (KeyError, ValueError):
        return "AuthorizationQueryParametersError", "the presigned URL's X-Amz-* parameters are incomplete or malformed"
    now = now or dt.datetime.now(dt.UTC)
    if terminal != "aws4_request" or service != "s3" or not amz_date.startswith(date):
        return "AuthorizationQueryParametersError", "the presigned URL's credential scope is not an S3 SigV4 scope"
    if not 0 < expires <= _MAX_EXPIRES_S or now > issued + dt.timedelta(seconds=expires):
        return "AccessDenied", "Request has expired"
    secret = _secret_of(akid)
    if secret is None:
        return "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."
    method = environ["REQUEST_METHOD"]
    path = _raw_path(environ)
    query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(pairs) if k != "X-Amz-Signature")
    names = signed.split(";")
    headers = "".join(f"{n}:{' '.join(_header(environ, n).split())}\n" for n in names)
    canonical = "\n".join([method, path, query, headers, signed, "UNSIGNED-PAYLOAD"])
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    expected = hmac.new(_signing_key(secret, date, region, service), to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided."
    _resign(environ, akid, secret, region, method, path, [(k, v) for k, v in pairs if k.lower() not in _QUERY_AUTH])
    return None


def _resign(environ: dict[str, Any], akid: str, secret: str, region: str, method: str, path: str,
            rest: list[tuple[str, str]]) -> None:
    """The same request, signed in headers with the same key (what moto's IAM check reads)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in rest)
    url = path + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=f"http://{environ.get('HTTP_HOST', '')}{url}",
                         headers={"host": environ.get("HTTP_HOST", "")})
    S3SigV4Auth(Credentials(akid, secret), "s3", region).add_auth(request)
    environ["QUERY_STRING"] = query
    environ["RAW_URI"] = environ["REQUEST_URI"] = url
    environ["HTTP_AUTHORIZATION"] = request.headers["Authorization"]
    environ["HTTP_X_AMZ_DATE"] = request.headers["X-Amz-Date"]
    environ["HTTP_X_AMZ_CONTENT_SHA256"] = request.headers["X-Amz-Content-SHA256"]


def _copy_source_allowed(environ: dict[str, Any]) -> bool:
    """Whether the signer of a copy (``x-amz-copy-source``) may GetObject the source (moto does not check)."""
    from urllib.parse import unquote

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.access_control import CreateAccessKeyFailure, IAMPolicy, IAMUserAccessKey, PermissionResult

    source = unquote(environ["HTTP_X_AMZ_COPY_SOURCE"].split("?versionId=", 1)[0]).lstrip("/")
    credential = environ.get("HTTP_AUTHORIZATION", "").partition("Credential=")[2].partition("/")[0]
    try:
        key = IAMUserAccessKey(account_id=DEFAULT_ACCOUNT_ID, partition="aws", access_key_id=credential, headers={})
    except CreateAccessKeyFailure:
        return True  # an unknown key: moto refuses the request itself (InvalidAccessKeyId)
    results = [IAMPolicy(p).is_action_permitted("s3:GetObject", f"arn:aws:s3:::{source}")
               for p in key.collect_policies()]
    return PermissionResult.PERMITTED in results and PermissionResult.DENIED not in results


class Guard:
    """WSGI middleware in front of moto's app (see the module docstring for what it closes)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ.pop("HTTP_X_MOTO_ACCOUNT_ID", None)
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return _error(start_response, "403 Forbidden", "AccessDenied", "moto's admin API is disabled here")
        if "HTTP_AUTHORIZATION" not in environ:
            if "x-amz-signature=" not in environ.get("QUERY_STRING", "").lower():
                return _error(start_response, "403 Forbidden", "AccessDenied", "Anonymous access is not allowed")
            refused = presigned_to_header_signed(environ)
            if refused is not None:
                return _error(start_response, "403 Forbidden", *refused)
        if "HTTP_X_AMZ_COPY_SOURCE" in environ and not _copy_source_allowed(environ):
            return _error(start_response, "403 Forbidden", "AccessDenied", "Access Denied (the copy's source)")
        return self.app(environ, start_response)


def bootstrap(credential_file: Path) -> None:
    """The platform's user, policy and key, made in moto's IAM backend before the server listens."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends

    from aifactory.platform.objectstore import (
        PLATFORM_POLICY,
        PLATFORM_USER,
        Credential,
        admin_policy,
        read_credential,
        write_credential,
    )

    backend = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_user("us-east-1", PLATFORM_USER)
    backend.put_user_policy(PLATFORM_USER, PLATFORM_POLICY, json.dumps(admin_policy()))
    key = backend.create_access_key(PLATFORM_USER)
    kept = read_credential(credential_file)
    if kept is not None and kept.user == PLATFORM_USER:
        # the same key as before the restart (moto keeps its IAM state in memory only)
        del backend.access_keys[key.physical_resource_id]
        key.access_key_id, key.secret_access_key = kept.access_key_id, kept.secret_access_key
        backend.access_keys[key.physical_resource_id] = key
    else:
        write_credential(credential_file, Credential(user=PLATFORM_USER, access_key_id=key.access_key_id,
                                                     secret_access_key=key.secret_access_key))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument("--platform-credential", type=Path, required=True,
                        help="the platform's key: kept here (0600), made the first time")
    args = parser.parse_args(argv)
    # IAM checks from the first request on (moto reads this when it is imported)
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    os.environ.setdefault("MOTO_PORT", str(args.port))
    import signal

    from moto import settings

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    bootstrap(args.platform_credential)
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, Guard(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
