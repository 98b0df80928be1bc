#!/bin/sh
# MinIO's side of onboarding's object-store step (docker-compose.yaml, service minio-init; the local
# stack's moto gets the same through IAM: aifactory.platform.objectstore). For each line of
# tenants.txt (<tenant> <bucket> <user> <policy>): the tenant's bucket, its user (access key = the
# user name, secret from the required variable AIFP_S3_SECRET_<TENANT>) and its one policy, the
# document <tenant>.json that aifactory.platform.objectstore.bucket_policy generates (regenerate:
# python -m aifactory.platform.objectstore minio include/stack/minio). Idempotent.
set -eu
here="$(dirname "$0")"
mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
while read -r tenant bucket user policy; do
  [ -n "$tenant" ] || continue
  var="AIFP_S3_SECRET_$(printf '%s' "$tenant" | tr 'a-z-' 'A-Z_')"
  secret="$(printenv "$var" || true)"
  [ -n "$secret" ] || { echo "minio-init: set $var (tenant $tenant's S3 secret; docs/security.md)" >&2; exit 1; }
  mc mb --ignore-existing "local/$bucket"
  mc admin user add local "$user" "$secret" >/dev/null
  mc admin policy create local "$policy" "$here/$tenant.json" >/dev/null
  # already attached: mc answers an error that changes nothing
  mc admin policy attach local "$policy" --user "$user" >/dev/null 2>&1 || true
  mc admin policy entities local --user "$user" | grep -qw "$policy" \
    || { echo "minio-init: policy $policy is not attached to $user" >&2; exit 1; }
  echo "minio-init: tenant $tenant: bucket $bucket, user $user, policy $policy"
done <"$here/tenants.txt"
