"""Onboarding step 3: one object-store credential per tenant, allowed only the tenant's own bucket.

Each tenant has its own bucket (``spec.bucket``), its own IAM user (named like its Unix login,
``identity.unix_user``: one identity name per tenant), one inline policy allowing that bucket and its
objects and nothing else (:func:`bucket_policy`, the one policy document: onboarding applies it
through IAM, and the MinIO setup of ``docker-compose.yaml`` loads the same document), one access key,
and its own Airflow connection (``identity.s3_conn_id``) holding that key. The platform's credential
(:data:`~aifactory.tenants.spec.PLATFORM_S3_CONN_ID`) is used by onboarding and platform tasks only.

Why a bucket per tenant and not a prefix: the local endpoint (moto in IAM mode) enforces a policy's
resource ARNs but ignores ListBucket's ``s3:prefix`` condition, so in a shared bucket a tenant could
list every other tenant's keys. A bucket each is enforced there, and on AWS and MinIO alike.

Credentials live in the secrets directory, each file 0600: ``s3/platform.json`` (the platform's;
made by ``include/stack/moto_iam_server.py`` when the local endpoint starts, and kept) and ``s3/<tenant>.json``. An
access key is created once and kept; a new one is made only when the store no longer knows the kept
one (moto keeps everything in memory, so after its restart every user and key is made again).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aifactory.errors import FactoryError, InputError
from aifactory.platform.onboard import Change, Context
from aifactory.platform.secrets import write_private
from aifactory.tenants.spec import PLATFORM_S3_CONN_ID, ClusterSpec, TenantSpec

STEP = "objectstore"
#: the platform's IAM user (the local endpoint's administrator; inline ``*`` policy)
PLATFORM_USER = "aifp-platform"
#: the platform user's inline policy (:func:`admin_policy`)
PLATFORM_POLICY = "platform-admin"
#: the inline policy of a tenant's user that :func:`bucket_policy` fills
TENANT_POLICY = "own-bucket"
#: botocore settings of every S3 connection: path-style addressing, checksums only when required
#: (``docs/failure-modes.md``, section 12)
CONFIG_KWARGS = {"s3": {"addressing_style": "path"}, "request_checksum_calculation": "when_required",
                 "response_checksum_validation": "when_required"}
REGION = "us-east-1"

#: what a tenant may do with its bucket, and with the objects in it; nothing else
BUCKET_ACTIONS = ("s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads")
OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                  "s3:ListMultipartUploadParts")


class ObjectStoreError(FactoryError):
    """The tenant's object-store identity could not be set up (what failed, and what to do)."""


def bucket_policy(bucket: str) -> dict[str, Any]:
    """The policy of a tenant's credential: its bucket and the objects in it, nothing else.

    The one policy document: onboarding puts it on the tenant's IAM user, and the MinIO setup loads
    the same document (``python -m aifactory.platform.objectstore minio DIR`` writes the files).
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "OwnBucket", "Effect": "Allow", "Action": list(BUCKET_ACTIONS),
             "Resource": [f"arn:aws:s3:::{bucket}"]},
            {"Sid": "OwnObjects", "Effect": "Allow", "Action": list(OBJECT_ACTIONS),
             "Resource": [f"arn:aws:s3:::{bucket}/*"]},
        ],
    }


def admin_policy() -> dict[str, Any]:
    """The platform user's inline policy (moto loads no AWS managed policies)."""
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def tenant_s3_conn_id(spec: TenantSpec) -> str:
    """The S3 connection every task of the tenant uses: its own credential (``identity.s3_conn_id``,
    allowed only its bucket), never the platform's."""
    conn_id = spec.identity.s3_conn_id if spec.identity is not None else None
    if not conn_id or conn_id == PLATFORM_S3_CONN_ID:
        raise InputError(f"tenant {spec.tenant!r} has no S3 connection of its own (identity.s3_conn_id in its "
                         f"spec); tenant tasks never use the platform's {PLATFORM_S3_CONN_ID!r}")
    return conn_id


def iam_user(spec: TenantSpec) -> str:
    """The tenant's IAM user: its one identity name, the Unix login of ``identity.unix_user``."""
    if spec.identity is None:
        raise ObjectStoreError(f"tenant {spec.tenant!r} has no identity in its spec; add identity: to it")
    return spec.identity.unix_user


# --------------------------------------------------------------------------------------------
# credentials (secrets directory, 0600)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    user: str
    access_key_id: str
    secret_access_key: str


def credential_file(secrets_dir: Path, name: str) -> Path:
    """``<secrets>/s3/<name>.json``: ``platform`` or a tenant's name."""
    return Path(secrets_dir) / "s3" / f"{name}.json"


def read_credential(path: Path) -> Credential | None:
    try:
        return Credential(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ObjectStoreError(f"{path} is not a credential file ({exc}); delete it and onboard again") from exc


def write_credential(path: Path, cred: Credential) -> None:
    write_private(path, json.dumps(asdict(cred), indent=2) + "\n")


def connection(cred: Credential, endpoint_url: str | None) -> dict[str, Any]:
    """An Airflow ``aws`` connection for one credential (ConnectionStore format); the platform's
    connection and every tenant's have the same extras."""
    extra: dict[str, Any] = {"region_name": REGION, "config_kwargs": CONFIG_KWARGS}
    if endpoint_url:
        extra["endpoint_url"] = endpoint_url
    return {"conn_type": "aws", "host": None, "port": None, "login": cred.access_key_id,
            "password": cred.secret_access_key, "extra_dejson": extra}


def connection_env(cred: Credential, endpoint_url: str | None) -> str:
    """The same connection as ``AIRFLOW_CONN_<ID>`` JSON (the platform's lives in stack.env)."""
    conn = connection(cred, endpoint_url)
    return json.dumps({"conn_type": conn["conn_type"], "login": conn["login"], "password": conn["password"],
                       "extra": conn["extra_dejson"]})


# --------------------------------------------------------------------------------------------
# clients
# --------------------------------------------------------------------------------------------


def _client(service: str, endpoint_url: str | None, access_key: str, secret_key: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(region_name=REGION, signature_version="s3v4", retries={"mode": "standard", "max_attempts": 3},
                    **CONFIG_KWARGS)
    return boto3.client(service, endpoint_url=endpoint_url or None, region_name=REGION, config=config,
                        aws_access_key_id=access_key, aws_secret_access_key=secret_key)


def _endpoint(ctx: Context) -> str | None:
    return ctx.env.get("AIFP_S3_ENDPOINT") or None


def _platform(ctx: Context) -> Credential:
    cred = read_credential(credential_file(ctx.secrets_dir, "platform"))
    if cred is not None:
        return cred
    key, secret = ctx.env.get("AWS_ACCESS_KEY_ID"), ctx.env.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise ObjectStoreError(f"no platform S3 credential: neither {credential_file(ctx.secrets_dir, 'platform')} "
                               "nor AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; run include/stack/stack.sh up")
    return Credential(user=PLATFORM_USER, access_key_id=key, secret_access_key=secret)


def _code(exc: BaseException) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


def platform_works(endpoint_url: str, secrets_dir: Path) -> bool:
    """Whether the kept platform credential is known to the endpoint (False after moto lost it)."""
    cred = read_credential(credential_file(secrets_dir, "platform"))
    if cred is None:
        return False
    from botocore.exceptions import ClientError

    try:
        _client("iam", endpoint_url, cred.access_key_id, cred.secret_access_key).get_user(UserName=cred.user)
    except ClientError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# the step
# --------------------------------------------------------------------------------------------


def onboard_objectstore(ctx: Context, spec: TenantSpec, cluster: ClusterSpec) -> list[Change]:
    """Bucket, IAM user, its one policy, its access key and the tenant's S3 connection; idempotent."""
    from botocore.exceptions import ClientError

    if spec.identity is None:
        raise ObjectStoreError(f"tenant {spec.tenant!r} has no identity in its spec; add identity: to it")
    changes: list[Change] = []

    def change(action: str) -> None:
        changes.append(Change(tenant=spec.tenant, step=STEP, action=action))

    endpoint = _endpoint(ctx)
    admin = _platform(ctx)
    s3 = _client("s3", endpoint, admin.access_key_id, admin.secret_access_key)
    iam = _client("iam", endpoint, admin.access_key_id, admin.secret_access_key)
    user = iam_user(spec)
    try:
        # bucket
        try:
            s3.head_bucket(Bucket=spec.bucket)
        except ClientError as exc:
            if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            change(f"create bucket {spec.bucket}")
            if not ctx.dry_run:
                s3.create_bucket(Bucket=spec.bucket)
        # user
        try:
            iam.get_user(UserName=user)
            have_user = True
        except ClientError as exc:
            if _code(exc) != "NoSuchEntity":
                raise
            have_user = False
            change(f"create IAM user {user}")
            if not ctx.dry_run:
                iam.create_user(UserName=user)
        # its one policy, and nothing else
        want = bucket_policy(spec.bucket)
        names = iam.list_user_policies(UserName=user)["PolicyNames"] if have_user else []
        for name in names:
            if name != TENANT_POLICY:
                change(f"remove inline policy {name} of {user}")
                if not ctx.dry_run:
                    iam.delete_user_policy(UserName=user, PolicyName=name)
        attached = iam.list_attached_user_policies(UserName=user)["AttachedPolicies"] if have_user else []
        for pol in attached:
            change(f"detach policy {pol['PolicyName']} from {user}")
            if not ctx.dry_run:
                iam.detach_user_policy(UserName=user, PolicyArn=pol["PolicyArn"])
        current = None
        if TENANT_POLICY in names:
            doc = iam.get_user_policy(UserName=user, PolicyName=TENANT_POLICY)["PolicyDocument"]
            current = json.loads(doc) if isinstance(doc, str) else doc
        if current != want:
            change(f"set policy {TENANT_POLICY} of {user}: bucket {spec.bucket} only")
            if not ctx.dry_run:
                iam.put_user_policy(UserName=user, PolicyName=TENANT_POLICY, PolicyDocument=json.dumps(want))
        # access key: the kept one while the store knows it
        path = credential_file(ctx.secrets_dir, spec.tenant)
        kept = read_credential(path)
        keys = iam.list_access_keys(UserName=user)["AccessKeyMetadata"] if have_user else []
        known = {k["AccessKeyId"]: k.get("Status") for k in keys}
        new_key = kept is None or kept.user != user or known.get(kept.access_key_id) != "Active"
        if new_key:
            change(f"create access key of {user} ({path})")
            if not ctx.dry_run:
                new = iam.create_access_key(UserName=user)["AccessKey"]
                kept = Credential(user=user, access_key_id=new["AccessKeyId"],
                                  secret_access_key=new["SecretAccessKey"])
                write_credential(path, kept)
        for key_id in known:
            if kept is None or key_id != kept.access_key_id:
                change(f"delete access key {key_id} of {user} (not the kept one)")
                if not ctx.dry_run:
                    iam.delete_access_key(UserName=user, AccessKeyId=key_id)
    except ClientError as exc:
        raise ObjectStoreError(f"tenant {spec.tenant!r}: the object store refused onboarding ({_code(exc)}: {exc}); "
                               f"check the platform credential ({credential_file(ctx.secrets_dir, 'platform')}) "
                               "and that the endpoint is up (include/stack/stack.sh up)") from exc
    # the tenant's connection (with --check and a key still to make: it would change too)
    if ctx.dry_run and new_key:
        change(f"set connection {spec.identity.s3_conn_id}")
    elif kept is not None:
        conn = connection(kept, endpoint)
        if ctx.connections.get(spec.identity.s3_conn_id) != conn:
            change(f"set connection {spec.identity.s3_conn_id}")
            if not ctx.dry_run:
                ctx.connections.put(spec.identity.s3_conn_id, conn)
    return changes


# --------------------------------------------------------------------------------------------
# MinIO (docker-compose.yaml): the same policy document, as files the mc init service loads
# --------------------------------------------------------------------------------------------

#: where the MinIO setup's generated files live (mounted into the compose file's ``minio-init``)
MINIO_DIR = "include/stack/minio"
#: the init service's list of tenants: one line ``<tenant> <bucket> <user> <policy>`` each
MINIO_TENANTS_FILE = "tenants.txt"


def minio_policy_name(spec: TenantSpec) -> str:
    """MinIO's policies are global: one per tenant, named after it."""
    return f"{TENANT_POLICY}-{spec.tenant}"


def minio_secret_variable(spec: TenantSpec) -> str:
    """The compose variable holding the tenant's MinIO secret (required; no default)."""
    return "AIFP_S3_SECRET_" + spec.tenant.upper().replace("-", "_")


def minio_files(specs: list[TenantSpec]) -> dict[str, str]:
    """File name -> content of :data:`MINIO_DIR`: each tenant's policy document (:func:`bucket_policy`)
    and the tenant list. ``python -m aifactory.platform.objectstore minio include/stack/minio``
    writes them; a unit test checks that the committed files are these."""
    ordered = sorted(specs, key=lambda s: s.tenant)
    files = {MINIO_TENANTS_FILE: "".join(f"{s.tenant} {s.bucket} {iam_user(s)} {minio_policy_name(s)}\n"
                                         for s in ordered)}
    for s in ordered:
        files[f"{s.tenant}.json"] = json.dumps(bucket_policy(s.bucket), indent=2) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aifactory.platform.objectstore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    chk = sub.add_parser("platform-ok", help="exit 0 if the kept platform credential works")
    chk.add_argument("--endpoint", required=True)
    chk.add_argument("--secrets", type=Path, required=True)
    env = sub.add_parser("platform-env", help="print the platform key, secret and connection for stack.env")
    env.add_argument("--endpoint", required=True)
    env.add_argument("--secrets", type=Path, required=True)
    onb = sub.add_parser("onboard", help="this step only, for every tenant (after the endpoint restarted)")
    onb.add_argument("--secrets", type=Path, required=True)
    onb.add_argument("--endpoint", required=True)
    mio = sub.add_parser("minio", help="write the MinIO setup's policy files into DIR")
    mio.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "platform-ok":
        return 0 if platform_works(args.endpoint, args.secrets) else 1
    if args.cmd == "platform-env":
        cred = read_credential(credential_file(args.secrets, "platform"))
        if cred is None:
            print(f"no {credential_file(args.secrets, 'platform')}: run include/stack/stack.sh up", file=sys.stderr)
            return 1
        # three lines for stack.sh's write_env: key, secret, AIRFLOW_CONN_AIFACTORY_S3's JSON
        print(cred.access_key_id, cred.secret_access_key, connection_env(cred, args.endpoint), sep="\n")
        return 0
    from aifactory.tenants import load_cluster, load_tenants
    from aifactory.tenants.spec import load_tenant_specs

    if args.cmd == "minio":
        args.dir.mkdir(parents=True, exist_ok=True)
        for name, text in minio_files(load_tenants()).items():
            (args.dir / name).write_text(text)
        return 0
    ctx = Context(secrets_dir=args.secrets, env={"AIFP_S3_ENDPOINT": args.endpoint})
    loaded = load_tenant_specs()
    for broken in loaded.errors:  # one broken spec fails its tenant alone
        print(f"{broken.path.stem}: {STEP}: FAILED: {broken.message}", file=sys.stderr)
    failed = len(loaded.errors)
    for spec in loaded.specs:
        try:
            for c in onboard_objectstore(ctx, spec, load_cluster(spec.cluster)):
                print(f"{c.tenant}: {c.step}: {c.action}")
        except FactoryError as exc:
            failed += 1
            print(f"{spec.tenant}: {STEP}: FAILED: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
