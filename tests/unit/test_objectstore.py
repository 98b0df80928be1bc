"""The object-store identity rules (aifactory.platform.objectstore) and the local endpoint's
presigned-URL check (include/stack/moto_iam_server.py), without a server."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from aifactory.errors import InputError
from aifactory.platform.objectstore import (
    TENANT_POLICY,
    bucket_policy,
    credential_file,
    onboard_objectstore,
    read_credential,
    tenant_s3_conn_id,
)
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


# -- the onboarding step, against moto's in-process fake of S3 and IAM -------------------------


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    from moto import mock_aws

    from aifactory.platform.onboard import Context

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    with mock_aws():
        yield Context(secrets_dir=tmp_path, env={"AWS_ACCESS_KEY_ID": "platform", "AWS_SECRET_ACCESS_KEY": "x"})


def _iam():
    import boto3

    return boto3.client("iam", region_name="us-east-1", aws_access_key_id="platform", aws_secret_access_key="x")


def test_onboarding_makes_everything_once_and_then_changes_nothing(ctx):
    spec = load_tenant("acme")
    cluster = None  # the step does not use the cluster
    assert {c.action.split(" ")[0] for c in onboard_objectstore(replace(ctx, dry_run=True), spec, cluster)} == {
        "create", "set"}
    assert ctx.connections.get(spec.identity.s3_conn_id) is None and not credential_file(ctx.secrets_dir, "acme").exists()
    made = [c.action for c in onboard_objectstore(ctx, spec, cluster)]
    assert len(made) == 5 and made[0] == "create bucket aifactory-acme"
    cred = read_credential(credential_file(ctx.secrets_dir, "acme"))
    assert oct(credential_file(ctx.secrets_dir, "acme").stat().st_mode & 0o777) == "0o600"
    conn = ctx.connections.get(spec.identity.s3_conn_id)
    assert (conn["login"], conn["password"]) == (cred.access_key_id, cred.secret_access_key)
    doc = _iam().get_user_policy(UserName="aifp-acme", PolicyName=TENANT_POLICY)["PolicyDocument"]
    assert (json.loads(doc) if isinstance(doc, str) else doc) == bucket_policy("aifactory-acme")
    assert onboard_objectstore(ctx, spec, cluster) == []
    assert onboard_objectstore(replace(ctx, dry_run=True), spec, cluster) == []


def test_a_lost_key_is_made_again_and_extra_rights_are_taken_away(ctx):
    spec = load_tenant("acme")
    onboard_objectstore(ctx, spec, None)
    old = read_credential(credential_file(ctx.secrets_dir, "acme"))
    iam = _iam()
    iam.delete_access_key(UserName="aifp-acme", AccessKeyId=old.access_key_id)  # what a moto restart does
    iam.put_user_policy(UserName="aifp-acme", PolicyName="everything",
                        PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
                                       '"Action": "*", "Resource": "*"}]}')
    actions = [c.action for c in onboard_objectstore(ctx, spec, None)]
    assert "remove inline policy everything of aifp-acme" in actions
    assert any(a.startswith("create access key") for a in actions) and "set connection aifactory_s3_acme" in actions
    new = read_credential(credential_file(ctx.secrets_dir, "acme"))
    assert new.access_key_id != old.access_key_id
    assert ctx.connections.get(spec.identity.s3_conn_id)["login"] == new.access_key_id
    assert iam.list_user_policies(UserName="aifp-acme")["PolicyNames"] == [TENANT_POLICY]
    assert onboard_objectstore(ctx, spec, None) == []
