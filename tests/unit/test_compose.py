"""docker-compose.yaml is checked statically (no Docker engine runs here): it must describe the same
services the local stack runs natively, wired the same way."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
AIRFLOW_SERVICES = ["airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker"]


def test_services_cover_the_stack():
    services = COMPOSE["services"]
    for name in ["postgres", "redis", "minio", "minio-init", "airflow-init", *AIRFLOW_SERVICES]:
        assert name in services, f"{name} missing from docker-compose.yaml"


def test_airflow_services_share_config_connections_and_code():
    for name in AIRFLOW_SERVICES:
        svc = COMPOSE["services"][name]
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert "AIRFLOW_CONN_AIFACTORY_S3" in env and "AIRFLOW_CONN_AIFACTORY_HPC_LOCAL" in env
        assert "http://minio:9000" in env["AIRFLOW_CONN_AIFACTORY_S3"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"] if v.startswith("./")}
        for target in ["/opt/airflow/dags", "/opt/airflow/plugins", "/opt/aifactory/operators",
                       "/opt/aifactory/include"]:
            assert target in mounts, f"{name} does not mount {target}"
            assert (REPO / mounts[target]).exists(), f"{mounts[target]} mounted by {name} is not in the repo"
        # the triggerer imports triggers by classpath: operators/ must be importable there too
        assert "/opt/aifactory" in env["PYTHONPATH"].split(":")
        deps = svc["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully"


def test_ports_bind_loopback_and_stateful_services_have_healthchecks():
    for name, svc in COMPOSE["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    for name in ["postgres", "redis", "minio", "airflow-api-server"]:
        assert "healthcheck" in COMPOSE["services"][name], f"{name} has no healthcheck"


def test_images_are_pinned():
    for name, svc in COMPOSE["services"].items():
        image = svc.get("image", "")
        assert image and not image.endswith(":latest") and ":" in image.replace("${AIRFLOW_IMAGE:-", ""), name


# -- secrets (docs/security.md) -----------------------------------------------------------------
# A variable reference: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}.
VAR_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
SECRET_NAME_RE = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|PRIVATE|CREDENTIAL|(^|_)KEY($|_)", re.I)
#: every secret of the stack, as (service, environment variable)
SECRET_SETTINGS = [
    *[(svc, var) for svc in ["airflow-init", *AIRFLOW_SERVICES] for var in [
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY"]],
    ("postgres", "POSTGRES_PASSWORD"),
    ("redis", "REDIS_PASSWORD"),
    ("airflow-init", "AIRFLOW_ADMIN_PASSWORD"),
]


class Unset(Exception):
    """A required variable (``${NAME:?...}``) is not set: compose refuses to start."""


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation, the forms this file uses ($$ is a literal $)."""
    def one(m: re.Match[str]) -> str:
        name, op, arg = m["name"], m["op"], m["arg"] or ""
        have = env.get(name)
        if op in (":?", "?") and (have is None or (op == ":?" and have == "")):
            raise Unset(f"{name}: {arg}")
        if op in (":-", "-") and (have is None or (op == ":-" and have == "")):
            return arg
        return have or ""
    return VAR_RE.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def walk_strings(node, path=()):
    """Every string of the compose file (keys of mappings are names, not values) with its path."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk_strings(v, (*path, str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_strings(v, (*path, str(i)))
    elif isinstance(node, str):
        yield path, node


def test_no_secret_has_a_default():
    """A default after ``:-`` would be a password every installation shares: secrets are required."""
    found = []
    for path, value in walk_strings(COMPOSE):
        for m in VAR_RE.finditer(value):
            if SECRET_NAME_RE.search(m["name"]) and m["op"] in (":-", "-"):
                found.append(f"{'.'.join(path)}: ${{{m['name']}{m['op']}...}}")
    assert not found, f"secret variables with a default in docker-compose.yaml: {found}"


def test_each_secret_is_a_required_variable():
    """With nothing set, every secret setting refuses to interpolate; with values set, the value is
    what was supplied (so no literal part of it is shared between installations)."""
    for svc, var in SECRET_SETTINGS:
        raw = COMPOSE["services"][svc]["environment"][var]
        with pytest.raises(Unset):
            interpolate(raw, {})
        names = {m["name"] for m in VAR_RE.finditer(raw)}
        assert all(m["op"] in (":?", "?") for m in VAR_RE.finditer(raw) if SECRET_NAME_RE.search(m["name"])), (
            f"{svc}.{var}: a secret in it is not a required variable: {raw}")
        assert any(SECRET_NAME_RE.search(n) for n in names), f"{svc}.{var} holds no secret variable: {raw}"


def test_no_literal_secret_in_connection_urls_or_json():
    """A password written into a URL or a connection's JSON must be a variable, never a literal."""
    env = {m["name"]: f"<{m['name']}>" for _, v in walk_strings(COMPOSE) for m in VAR_RE.finditer(v)}
    for path, value in walk_strings(COMPOSE):
        text = interpolate(value, env)
        for m in re.finditer(r"://[^/@\s:]*:(?P<pw>[^@/\s]*)@", text):
            assert m["pw"] == "" or re.fullmatch(r"<[A-Z0-9_]+>", m["pw"]), f"{'.'.join(path)}: literal password in {value}"
        if text.lstrip().startswith("{"):
            conn = json.loads(text)
            assert re.fullmatch(r"<[A-Z0-9_]+>", str(conn.get("password") or "<none>")), (
                f"{'.'.join(path)}: literal password in the connection {value}")


def volume_parts(spec: str) -> tuple[str, str]:
    """(source, target) of a short-syntax volume whose source may be ``${VAR:?msg}``."""
    m = re.fullmatch(r"(?P<src>\$\{[^}]*\}|[^:]+):(?P<dst>[^:]+)(?::[a-z,]+)?", spec)
    assert m, f"volume {spec!r} is not in the short syntax"
    return m["src"], m["dst"]


def test_no_airflow_service_mounts_the_login_nodes_host_key():
    """Airflow containers get the client key and the pinned host PUBLIC key, file by file. A directory
    mount of the stack's ssh folder would carry ``ssh_host_ed25519_key`` (the login node's identity:
    whoever holds it can impersonate the cluster to every client)."""
    for name in ["airflow-init", *AIRFLOW_SERVICES]:
        for spec in COMPOSE["services"][name]["volumes"]:
            src, dst = volume_parts(spec)
            assert "ssh_host" not in src and "ssh_host" not in dst, f"{name} mounts a host key: {spec}"
            if "ssh" in (src + dst).lower():
                assert Path(dst).name in {"id_ed25519", "known_hosts"}, (
                    f"{name} mounts {spec}: only the client key and known_hosts, file by file")
                assert src.startswith("${") and VAR_RE.fullmatch(src)["op"] == ":?", (
                    f"{name} mounts {spec}: the key's path must be a required variable")


# -- one object-store credential per tenant (aifactory.platform.objectstore) ---------------------


def test_minio_init_applies_the_generated_policy_of_every_tenant():
    """minio-init loads include/stack/minio/: each tenant's policy document must be exactly what
    onboarding applies through IAM on the local stack (objectstore.bucket_policy), for every spec."""
    from aifactory.platform.objectstore import MINIO_DIR, minio_files
    from aifactory.tenants import load_tenants

    init = COMPOSE["services"]["minio-init"]
    assert f"./{MINIO_DIR}:/aifactory-minio:ro" in init["volumes"]
    assert init["entrypoint"] == ["/bin/sh", "/aifactory-minio/init.sh"] and (REPO / MINIO_DIR / "init.sh").is_file()
    specs = load_tenants()
    assert {s.tenant for s in specs} >= {"demo", "acme"}
    for name, text in minio_files(specs).items():
        path = REPO / MINIO_DIR / name
        assert path.is_file() and path.read_text() == text, (
            f"{path} is not what bucket_policy generates: python -m aifactory.platform.objectstore minio {MINIO_DIR}")
    for airflow in AIRFLOW_SERVICES:
        deps = COMPOSE["services"][airflow]["depends_on"]
        assert deps["minio-init"]["condition"] == "service_completed_successfully", airflow


def test_each_tenant_has_its_own_connection_and_required_secret():
    """Tenant tasks use the tenant's connection (identity.s3_conn_id): its own MinIO user, its secret a
    required variable shared by minio-init and Airflow; the platform's connection is MinIO's root."""
    from aifactory.platform.objectstore import iam_user, minio_secret_variable
    from aifactory.tenants import load_tenants

    init_env = COMPOSE["services"]["minio-init"]["environment"]
    assert init_env["MINIO_ROOT_PASSWORD"].startswith("${MINIO_ROOT_PASSWORD:?")
    for spec in load_tenants():
        var = minio_secret_variable(spec)
        assert VAR_RE.fullmatch(init_env[var])["op"] == ":?", f"minio-init: {var} must be required"
        for airflow in ["airflow-init", *AIRFLOW_SERVICES]:
            env = COMPOSE["services"][airflow]["environment"]
            raw = env[f"AIRFLOW_CONN_{spec.identity.s3_conn_id.upper()}"]
            conn = json.loads(interpolate(raw, {var: "<secret>", "MINIO_ROOT_PASSWORD": "<root>"}))
            assert conn["login"] == iam_user(spec) and conn["password"] == "<secret>", (airflow, spec.tenant)
            platform = json.loads(interpolate(env["AIRFLOW_CONN_AIFACTORY_S3"], {"MINIO_ROOT_PASSWORD": "<root>"}))
            assert conn["extra"] == platform["extra"], f"{spec.identity.s3_conn_id}: extras differ from the platform's"
            with pytest.raises(Unset):
                interpolate(raw, {})


def test_airflow_uses_the_auth_manager_of_airflow_cfg():
    """No service overrides the mounted airflow.cfg's FAB auth manager with the simple one (whose
    users list and generated passwords file are outside FAB's roles)."""
    for name in ["airflow-init", *AIRFLOW_SERVICES]:
        env = COMPOSE["services"][name]["environment"]
        assert not any(k.startswith("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER") for k in env), name
        assert "SimpleAuthManager" not in env.get("AIRFLOW__CORE__AUTH_MANAGER", ""), name


def test_the_env_file_with_the_secrets_is_never_committed():
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert ".env" in ignored, "docker compose reads the secrets from .env: .gitignore must list it"


def test_each_tenant_reaches_the_cluster_with_its_own_login_and_key():
    """Tenant tasks SSH as the tenant's own Unix user (identity.ssh_conn_id), never the platform's
    service login: every tenant spec has its connection, a required variable, and its key mounted
    file by file at its own path in every Airflow service."""
    from aifactory.tenants import load_tenants

    for spec in load_tenants():
        conn_var = f"AIRFLOW_CONN_{spec.identity.ssh_conn_id.upper()}"
        key_var = f"AIFP_SSH_KEY_{spec.tenant.upper().replace('-', '_')}"
        for airflow in ["airflow-init", *AIRFLOW_SERVICES]:
            svc = COMPOSE["services"][airflow]
            assert VAR_RE.fullmatch(svc["environment"][conn_var])["op"] == ":?", f"{airflow}: {conn_var} must be required"
            mounts = dict(volume_parts(v) for v in svc["volumes"])
            src = next((src for src, dst in mounts.items() if dst == f"/opt/aifactory/ssh/{spec.tenant}/id_ed25519"), None)
            assert src is not None and VAR_RE.fullmatch(src)["name"] == key_var, f"{airflow}: {spec.tenant}'s key"
