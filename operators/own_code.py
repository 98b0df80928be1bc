"""The tenant's own code, for the operators: fetched with the tenant's own S3 credential, checked, and
kept on this worker for as long as a task needs it (aifactory.models.own_code has the rules)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aifactory import layout
from aifactory.models.own_code import OwnCode, check_code, fetch_code, parse_code_uri
from aifactory.tenants.spec import TenantSpec

__all__ = ["fetched_code"]


@contextmanager
def fetched_code(s3: Any, spec: TenantSpec, code_uri: str, *, expect_digest: str | None = None) -> Iterator[OwnCode]:
    """The checked code folder of ``code_uri`` in a temporary directory, removed on exit.

    :param s3: a boto3 client with the tenant's own credential.
    :param expect_digest: the digest the run was validated with (later tasks): other bytes are refused.
    :raises InputError: from :func:`aifactory.models.own_code.check_code` and its kin.
    """
    prefix, _ = parse_code_uri(code_uri, spec.bucket, spec.tenant)
    with tempfile.TemporaryDirectory(prefix="aifp-code-") as tmp:
        folder = fetch_code(s3, spec.bucket, prefix, Path(tmp))
        yield check_code(folder, layout.s3_uri(spec.bucket, prefix), expect_digest=expect_digest)
