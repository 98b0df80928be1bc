"""The object-store identity rules (aifactory.platform.objectstore) and the local endpoint's
presigned-URL check (include/stack/moto_iam_server.py), without a server."""

from __future__ import annotations

import datetime as dt
import importlib.util
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from aifactory.errors import InputError
from aifactory.platform.objectstore import bucket_policy, tenant_s3_conn_id
from aifactory.tenants import load_tenant
from aifactory.tenants.spec import PLATFORM_S3_CONN_ID

REPO = Path(__file__).resolve().parents[2]


def test_the_policy_allows_the_tenants_bucket_and_its_objects_only():
    doc = bucket_policy("aifactory-acme")
    resources = {r for st in doc["Statement"] for r in st["Resource"]}
    assert resources == {"arn:aws:s3:::aifactory-acme", "arn:aws:s3:::aifactory-acme/*"}
    assert all(st["Effect"] == "Allow" for st in doc["Statement"])
    actions = {a for st in doc["Statement"] for a in st["Action"]}
    assert "s3:*" not in actions and not any(a.startswith(("s3:PutBucket", "s3:DeleteBucket", "iam:")) for a in actions)


def test_tenant_tasks_use_the_tenants_own_connection():
    spec = load_tenant("demo")
    assert tenant_s3_conn_id(spec) == "aifactory_s3_demo"
    for broken in (replace(spec, identity=None),
                   replace(spec, identity=replace(spec.identity, s3_conn_id=PLATFORM_S3_CONN_ID))):
        with pytest.raises(InputError, match="S3 connection of its own"):
            tenant_s3_conn_id(broken)


def _launcher():
    spec = importlib.util.spec_from_file_location("moto_iam_server", REPO / "include/stack/moto_iam_server.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _environ(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    return {"REQUEST_METHOD": "GET", "RAW_URI": parts.path + "?" + parts.query, "QUERY_STRING": parts.query,
            "HTTP_HOST": parts.netloc, "PATH_INFO": parts.path}


@pytest.fixture
def presign(monkeypatch):
    from aifactory.data.s3 import make_client

    mod = _launcher()
    secrets = {"AKIAEXAMPLEKEY000001": "s" * 40}
    monkeypatch.setattr(mod, "_secret_of", secrets.get)
    client = make_client(endpoint_url="http://127.0.0.1:5555", access_key="AKIAEXAMPLEKEY000001",
                         secret_key="s" * 40)
    return mod, lambda key, ttl=60: client.generate_presigned_url(
        "get_object", Params={"Bucket": "aifactory", "Key": key}, ExpiresIn=ttl)


def test_a_presigned_get_becomes_the_same_request_signed_in_headers(presign):
    mod, url = presign
    env = _environ(url("demo/datasets/iris/v1/part 0.parquet"))
    assert mod.presigned_to_header_signed(env) is None
    assert env["HTTP_AUTHORIZATION"].startswith("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEKEY000001/")
    assert "X-Amz-Signature" not in env["QUERY_STRING"] and env["RAW_URI"].startswith("/aifactory/demo/")


def test_a_tampered_expired_or_unknown_presigned_url_is_refused(presign, monkeypatch):
    mod, url = presign
    good = url("demo/a.bin")
    assert mod.presigned_to_header_signed(_environ(good.replace("/a.bin?", "/b.bin?")))[0] == "SignatureDoesNotMatch"
    assert mod.presigned_to_header_signed(_environ(good.replace("X-Amz-Expires=60", "X-Amz-Expires=61")))[0] == (
        "SignatureDoesNotMatch")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    assert mod.presigned_to_header_signed(_environ(good), now=later) == ("AccessDenied", "Request has expired")
    monkeypatch.setattr(mod, "_secret_of", lambda _: None)
    assert mod.presigned_to_header_signed(_environ(good))[0] == "InvalidAccessKeyId"
