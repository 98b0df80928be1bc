"""The object-store side of the cross-tenant matrix, against the real local endpoint (moto with IAM
enforced, behind include/stack/moto_iam_server.py).

Tenant A (demo) uses the credential of its own Airflow connection (``identity.s3_conn_id``, read
from the connections file onboarding wrote), exactly what its tasks get. A may do everything its
pipeline needs in its own bucket and nothing in B's (acme); the platform's credential may do
everything; presigned URLs (pull staging) carry exactly their signer's rights.
"""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from aifactory.data.s3 import make_client, put_if_absent
from aifactory.platform.secrets import ConnectionStore
from aifactory.tenants import load_cluster, load_tenant

A = load_tenant("demo")
B = load_tenant("acme")
DENIED = {"AccessDenied", "403"}

pytestmark = pytest.mark.e2e


def connection_of(stack_env: dict[str, str], spec: Any) -> dict[str, Any]:
    """The tenant's S3 connection as its tasks get it: from the connections file onboarding wrote."""
    conn = ConnectionStore(Path(stack_env["AIFP_SECRETS_DIR"])).get(spec.identity.s3_conn_id)
    assert conn, (f"no connection {spec.identity.s3_conn_id} in {stack_env['AIFP_SECRETS_DIR']}/connections.json: "
                  "run make onboard (or include/stack/stack.sh up)")
    assert conn["login"] != stack_env["AWS_ACCESS_KEY_ID"], "the tenant's connection holds the platform's key"
    return conn


def client_of(conn: dict[str, Any]) -> Any:
    extra = conn["extra_dejson"]
    return make_client(endpoint_url=extra["endpoint_url"], access_key=conn["login"], secret_key=conn["password"],
                       region=extra["region_name"])


@pytest.fixture(scope="module")
def a_conn(stack_env) -> dict[str, Any]:
    return connection_of(stack_env, A)


@pytest.fixture(scope="module")
def a(a_conn):
    return client_of(a_conn)


@pytest.fixture(scope="module")
def platform(s3_client):
    return s3_client


@pytest.fixture
def keys(platform):
    """One object in each bucket, under a fresh prefix of the tenant's area; removed afterwards."""
    run = uuid.uuid4().hex[:12]
    made = {"a": f"{A.tenant}/isolation-s3/{run}/a.txt", "b": f"{B.tenant}/isolation-s3/{run}/b.txt"}
    platform.put_object(Bucket=A.bucket, Key=made["a"], Body=b"tenant A's data")
    platform.put_object(Bucket=B.bucket, Key=made["b"], Body=b"tenant B's data")
    yield made
    for bucket, prefix in ((A.bucket, f"{A.tenant}/isolation-s3/{run}/"), (B.bucket, f"{B.tenant}/isolation-s3/{run}/")):
        for item in platform.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
            platform.delete_object(Bucket=bucket, Key=item["Key"])
        for up in platform.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []):
            platform.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])


def refused(call: Any, codes: set[str] = DENIED) -> str:
    with pytest.raises(ClientError) as exc:
        call()
    code = exc.value.response["Error"]["Code"]
    assert code in codes, f"expected one of {codes}, got {code}: {exc.value}"
    return code


def test_tenant_does_its_pipelines_work_in_its_own_bucket(a, keys):
    key = keys["a"].rsplit("/", 1)[0] + "/own.bin"
    a.put_object(Bucket=A.bucket, Key=key, Body=b"x" * 10)
    assert a.get_object(Bucket=A.bucket, Key=key)["Body"].read() == b"x" * 10
    assert a.head_object(Bucket=A.bucket, Key=keys["a"])["ContentLength"] == len(b"tenant A's data")
    listed = [o["Key"] for o in a.list_objects_v2(Bucket=A.bucket, Prefix=key.rsplit("/", 1)[0]).get("Contents", [])]
    assert key in listed and keys["a"] in listed
    # the conditional write of manifests and quality verdicts
    assert put_if_absent(a, A.bucket, key + ".once", b"1") is True
    assert put_if_absent(a, A.bucket, key + ".once", b"2") is False
    # a multipart upload (large shards) and its abort
    up = a.create_multipart_upload(Bucket=A.bucket, Key=key + ".mp")
    part = a.upload_part(Bucket=A.bucket, Key=key + ".mp", UploadId=up["UploadId"], PartNumber=1, Body=b"p")
    a.complete_multipart_upload(Bucket=A.bucket, Key=key + ".mp", UploadId=up["UploadId"],
                                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    a.delete_object(Bucket=A.bucket, Key=key)
    assert "Contents" not in a.list_objects_v2(Bucket=A.bucket, Prefix=key + "/")


@pytest.mark.parametrize("op", ["get", "put", "head", "list", "delete", "multipart", "conditional-put",
                                "list-buckets", "create-bucket", "delete-bucket", "policy-of-own-bucket"])
def test_tenant_is_refused_everything_in_the_other_tenants_bucket(a, platform, keys, op):
    other = keys["b"]
    calls = {
        "get": lambda: a.get_object(Bucket=B.bucket, Key=other),
        "put": lambda: a.put_object(Bucket=B.bucket, Key=other, Body=b"overwritten by A"),
        "head": lambda: a.head_object(Bucket=B.bucket, Key=other),
        "list": lambda: a.list_objects_v2(Bucket=B.bucket, Prefix=f"{B.tenant}/"),
        "delete": lambda: a.delete_object(Bucket=B.bucket, Key=other),
        "multipart": lambda: a.create_multipart_upload(Bucket=B.bucket, Key=other + ".mp"),
        "conditional-put": lambda: put_if_absent(a, B.bucket, other + ".new", b"x"),
        # bucket names of other tenants are not A's to see, nor are new buckets A's to make
        "list-buckets": lambda: a.list_buckets(),
        "create-bucket": lambda: a.create_bucket(Bucket=f"stolen-{uuid.uuid4().hex[:8]}"),
        "delete-bucket": lambda: a.delete_bucket(Bucket=B.bucket),
        # nor may A open its own bucket to others (a bucket policy is the platform's to set)
        "policy-of-own-bucket": lambda: a.put_bucket_policy(Bucket=A.bucket, Policy="{}"),
    }
    refused(calls[op])
    # B's object is untouched
    assert platform.get_object(Bucket=B.bucket, Key=other)["Body"].read() == b"tenant B's data"
    assert "Contents" not in platform.list_objects_v2(Bucket=B.bucket, Prefix=other + ".")


def test_unknown_key_and_wrong_secret_are_refused(stack_env, a_conn, keys):
    endpoint = stack_env["AIFP_S3_ENDPOINT"]
    unknown = make_client(endpoint_url=endpoint, access_key="AKIAUNKNOWNKEY000000", secret_key="x" * 40)
    refused(lambda: unknown.get_object(Bucket=A.bucket, Key=keys["a"]), {"InvalidAccessKeyId", "403"})
    refused(lambda: unknown.list_objects_v2(Bucket=A.bucket), {"InvalidAccessKeyId"})
    wrong = make_client(endpoint_url=endpoint, access_key=a_conn["login"], secret_key="y" * 40)
    refused(lambda: wrong.list_objects_v2(Bucket=A.bucket), {"SignatureDoesNotMatch"})


def test_anonymous_requests_and_motos_admin_api_are_refused(stack_env, keys):
    endpoint = stack_env["AIFP_S3_ENDPOINT"]
    for url in (f"{endpoint}/{A.bucket}/{keys['a']}", f"{endpoint}/{B.bucket}?list-type=2",
                f"{endpoint}/moto-api/data.json", f"{endpoint}/moto-api/reset-auth"):
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(urllib.request.Request(url, data=b"" if "reset" in url else None), timeout=30)
        assert exc.value.code == 403, url


def test_platform_credential_works_in_every_bucket(platform, keys):
    for spec, key in ((A, keys["a"]), (B, keys["b"])):
        platform.put_object(Bucket=spec.bucket, Key=key + ".p", Body=b"p")
        assert platform.get_object(Bucket=spec.bucket, Key=key + ".p")["Body"].read() == b"p"
        assert key + ".p" in [o["Key"] for o in platform.list_objects_v2(Bucket=spec.bucket,
                                                                          Prefix=key).get("Contents", [])]
        platform.delete_object(Bucket=spec.bucket, Key=key + ".p")


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_presigned_get_carries_exactly_its_signers_rights(a, keys):
    """Pull staging: the HPC side fetches with presigned GETs signed by the tenant's credential."""
    own = a.generate_presigned_url("get_object", Params={"Bucket": A.bucket, "Key": keys["a"]}, ExpiresIn=300)
    assert fetch(own) == (200, b"tenant A's data")
    # the same signature on another key, a changed signature, B's object signed by A: refused
    tampered_key = own.replace("/a.txt?", "/b.txt?")
    assert tampered_key != own and fetch(tampered_key)[0] == 403
    sig = own.rsplit("X-Amz-Signature=", 1)
    flipped = sig[0] + "X-Amz-Signature=" + ("0" if sig[1][0] != "0" else "1") + sig[1][1:]
    status, body = fetch(flipped)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    longer = own.replace("X-Amz-Expires=300", "X-Amz-Expires=600000")
    assert fetch(longer)[0] == 403
    foreign = a.generate_presigned_url("get_object", Params={"Bucket": B.bucket, "Key": keys["b"]}, ExpiresIn=300)
    status, body = fetch(foreign)
    assert status == 403 and b"tenant B" not in body
    # a presigned PUT is no way around the policy either
    put = a.generate_presigned_url("put_object", Params={"Bucket": B.bucket, "Key": keys["b"]}, ExpiresIn=300)
    req = urllib.request.Request(put, data=b"overwritten", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=30)
    assert exc.value.code == 403


def test_copy_from_the_other_tenants_bucket_is_refused(a, platform, keys):
    """moto (5.2.5) does not check a copy's SOURCE against the signer's policy; AWS and MinIO require
    s3:GetObject on it, and so does the local endpoint's launcher (include/stack/moto_iam_server.py)."""
    dest = keys["a"] + ".copied"
    refused(lambda: a.copy_object(Bucket=A.bucket, Key=dest, CopySource={"Bucket": B.bucket, "Key": keys["b"]}))
    up = a.create_multipart_upload(Bucket=A.bucket, Key=dest)
    refused(lambda: a.upload_part_copy(Bucket=A.bucket, Key=dest, UploadId=up["UploadId"], PartNumber=1,
                                       CopySource={"Bucket": B.bucket, "Key": keys["b"]}))
    a.abort_multipart_upload(Bucket=A.bucket, Key=dest, UploadId=up["UploadId"])
    assert "Contents" not in platform.list_objects_v2(Bucket=A.bucket, Prefix=dest)
    # a copy inside A's own bucket is A's to make
    a.copy_object(Bucket=A.bucket, Key=dest, CopySource={"Bucket": A.bucket, "Key": keys["a"]})
    assert a.get_object(Bucket=A.bucket, Key=dest)["Body"].read() == b"tenant A's data"


def test_copy_into_the_other_tenants_bucket_is_refused(a, platform, keys):
    """The destination of a copy is checked (PutObject on B's bucket): A cannot write into B."""
    refused(lambda: a.copy_object(Bucket=B.bucket, Key=keys["b"] + ".c", CopySource={"Bucket": A.bucket,
                                                                                     "Key": keys["a"]}))
    assert "Contents" not in platform.list_objects_v2(Bucket=B.bucket, Prefix=keys["b"] + ".c")


def test_pull_staging_with_the_tenants_credential(stack_env, a, platform, ssh_client, tmp_path):
    """Pull staging end to end as tenant A's tasks run it: A ingests with its own credential, the
    stage hands the HPC side (A's login) URLs signed by A's key, the fixed fetch script gets every
    shard and the sha256s match. B's credential gets nothing of A's dataset."""
    from aifactory import layout
    from aifactory.data.ingest import ingest_dataset
    from aifactory.errors import FactoryError
    from aifactory.hpc.remote import ParamikoShell, q
    from aifactory.hpc.staging import StagingOptions, stage_dataset

    run = uuid.uuid4().hex[:8]
    raw = f"{layout.raw_prefix(A.tenant)}isolation{run}.csv"
    platform.put_object(Bucket=A.bucket, Key=raw, Body=(Path(__file__).parents[2] / "include/sample_data/iris.csv")
                        .read_bytes())
    manifest = ingest_dataset(a, source_uri=f"s3://{A.bucket}/{raw}", bucket=A.bucket, tenant=A.tenant,
                              workdir=tmp_path, log=lambda m: None, row_group_rows=16, shard_rows=64)
    prefix = A.dataset_prefix(manifest.name, manifest.version)
    areas = A.areas(load_cluster(A.cluster))
    dest = f"{areas.scratch}/itest-s3-{run}"  # a fresh area of its own, in A's scratch area
    options = StagingOptions(mode="pull", parallel=2, python="/srv/aifactory/venv/bin/python")
    with ParamikoShell(ssh_client) as shell:
        try:
            logs: list[str] = []
            result = stage_dataset(a, shell, bucket=A.bucket, dataset_prefix=prefix, manifest=manifest,
                                   areas=layout.TenantAreas(dest, dest), log=logs.append, options=options)
            assert result.mode == "pull" and result.files == result.sent_files == len(manifest.files) >= 2, logs
            assert any("fetched by the HPC side" in line for line in logs), logs
            b = client_of(connection_of(stack_env, B))
            with pytest.raises((ClientError, FactoryError)):
                stage_dataset(b, shell, bucket=A.bucket, dataset_prefix=prefix, manifest=manifest,
                              areas=layout.TenantAreas(dest + "-b", dest + "-b"), log=lambda m: None,
                              options=options)
        finally:
            shell.run(f"rm -rf -- {q(dest)} {q(dest + '-b')}")
            for key in [raw, *(o["Key"] for o in platform.list_objects_v2(Bucket=A.bucket, Prefix=prefix)
                               .get("Contents", []))]:
                platform.delete_object(Bucket=A.bucket, Key=key)
