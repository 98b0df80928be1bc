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


# -- the production topology (issue 12): what a reviewer of Airflow's own compose file checks --------
AIRFLOW_CFG = REPO / "airflow.cfg"
IMAGE_DIR = REPO / "include" / "stack" / "airflow-image"
COMMON_ENV_HOLDER = "airflow-scheduler"  # a service that takes x-airflow-common's environment unchanged


def airflow_setting(svc: str, section: str, key: str, default: str) -> str:
    """What Airflow reads in ``svc``'s container: AIRFLOW__SECTION__KEY, else the mounted airflow.cfg."""
    import configparser

    env = COMPOSE["services"][svc]["environment"]
    var = f"AIRFLOW__{section.upper()}__{key.upper()}"
    if var in env:
        return str(env[var])
    assert "./airflow.cfg:/opt/airflow/airflow.cfg:ro" in COMPOSE["services"][svc]["volumes"], svc
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(AIRFLOW_CFG)
    return cfg.get(section, key, fallback=default)


def test_the_api_server_listens_where_the_workers_reach_it():
    """Workers run every task through the Execution API at EXECUTION_API_SERVER_URL. The mounted
    airflow.cfg binds the native stack's api-server to 127.0.0.1, which inside a container nobody
    else can reach: the api-server service must listen on every interface of its container, at
    the URL's port; the host still reaches it on its own loopback only."""
    from urllib.parse import urlsplit

    host = airflow_setting("airflow-api-server", "api", "host", "0.0.0.0")
    assert host in {"0.0.0.0", "::"}, (
        f"the api-server binds {host} in its container (airflow.cfg's [api] host): set AIRFLOW__API__HOST: "
        "0.0.0.0 on the airflow-api-server service")
    port = int(airflow_setting("airflow-api-server", "api", "port", "8080"))
    for name in AIRFLOW_SERVICES:
        url = urlsplit(COMPOSE["services"][name]["environment"]["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        assert url.hostname == "airflow-api-server" and (url.port or 80) == port, (
            f"{name}: {url.geturl()} is not the api-server service's port {port}")
    published = [str(p) for p in COMPOSE["services"]["airflow-api-server"]["ports"]]
    assert any(p.startswith("127.0.0.1:") and p.endswith(f":{port}") for p in published), published
    # only the api-server listens on the container's interfaces (nothing else serves the API)
    assert "AIRFLOW__API__HOST" not in COMPOSE["services"][COMMON_ENV_HOLDER]["environment"]
    # the workers start once the API answers
    worker_deps = COMPOSE["services"]["airflow-worker"]["depends_on"]
    assert worker_deps.get("airflow-api-server", {}).get("condition") == "service_healthy", worker_deps


def image_repository(svc: dict) -> str:
    """The image a service runs, by repository: a built image by its Dockerfile's base."""
    if "build" in svc:
        return dockerfile_base(REPO / svc["build"]["context"] / svc["build"]["dockerfile"]).split(":")[0]
    return svc["image"].split(":")[0]


def dockerfile_base(path: Path) -> str:
    """The base image of a Dockerfile (its ``FROM``, through the ARG default it names)."""
    text = path.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) == 1, f"{path}: one FROM expected, found {froms}"
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], froms[0])


#: the executables each pinned image ships (its own build files), for healthchecks. Not MinIO's
#: curl: its release image (ubi-micro) only has a static curl fetched from a third party's
#: "latest" at build time (absent from the images of November 2023 to September 2024, never on
#: s390x), while mc is MinIO's own client, copied next to minio in every image.
IMAGE_TOOLS: dict[str, set[str]] = {
    "postgres": {"pg_isready", "psql", "sh", "bash"},           # the official postgres image (Debian)
    "redis": {"redis-cli", "redis-server", "sh", "bash"},       # the official redis image (Debian)
    "minio/minio": {"mc", "minio"},
    "minio/mc": {"mc"},
    # RUNTIME_APT_DEPS of Airflow's Dockerfile (curl, bash), airflow itself, and (celery) the
    # celery provider's dependency, which the image installs from requirements.txt
    "apache/airflow": {"airflow", "python", "curl", "bash", "sh", "celery"},
}


def healthcheck_executables(test: list[str] | str) -> list[str]:
    """The programs a healthcheck runs: CMD's first word, or each command of a CMD-SHELL line."""
    import shlex

    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    kind, *rest = test
    if kind == "CMD":
        return [rest[0]]
    assert kind == "CMD-SHELL" and len(rest) == 1, test
    commands = re.split(r"\|\||&&|;|\|", rest[0])
    return [shlex.split(c)[0] for c in commands if c.strip()]


def test_healthchecks_use_only_tools_their_images_ship():
    """A healthcheck whose program is missing from the image reports a healthy service unhealthy
    forever, and every service that waits for it (service_healthy) never starts."""
    for name, svc in COMPOSE["services"].items():
        if "healthcheck" not in svc:
            continue
        repo = image_repository(svc)
        assert repo in IMAGE_TOOLS, f"{name}: which tools does {repo} ship? (IMAGE_TOOLS)"
        for exe in healthcheck_executables(svc["healthcheck"]["test"]):
            assert exe in IMAGE_TOOLS[repo], f"{name}'s healthcheck runs {exe}, which {repo} does not ship"
    for name in ["airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker"]:
        assert "healthcheck" in COMPOSE["services"][name], f"{name} has no healthcheck"


def test_airflow_healthchecks_check_their_own_component():
    """Like Airflow's own compose file: the scheduler, dag-processor and triggerer each check that
    this container's job heartbeats (the command parsed by Airflow's real CLI), the workers that
    this worker (celery@<its hostname>) answers the broker, the api-server its health endpoint."""
    from airflow.cli.cli_parser import get_parser

    jobs = {"scheduler": "SchedulerJob", "dag-processor": "DagProcessorJob", "triggerer": "TriggererJob"}
    for command, job in jobs.items():
        svc = COMPOSE["services"][f"airflow-{command}"]
        assert svc["command"] == command and "healthcheck" in svc, f"airflow-{command} has no healthcheck"
        test = svc["healthcheck"]["test"]
        assert test[:2] == ["CMD", "airflow"], test
        args = get_parser().parse_args(test[2:])
        assert args.job_type == job and args.local, f"airflow-{command} checks {args.job_type} (local={args.local})"
        assert args.func.__name__ == "check", test
    worker = COMPOSE["services"]["airflow-worker"]
    assert "healthcheck" in worker, "airflow-worker has no healthcheck"
    kind, line = worker["healthcheck"]["test"]
    assert kind == "CMD-SHELL", worker["healthcheck"]
    line = interpolate(line, {})
    app = "airflow.providers.celery.executors.celery_executor.app"
    assert f"--app {app} inspect ping" in line and '-d "celery@${HOSTNAME}"' in line, line
    import importlib.util

    assert importlib.util.find_spec(app.rsplit(".", 1)[0]) is not None, f"{app}: no such module"
    api = COMPOSE["services"]["airflow-api-server"]["healthcheck"]["test"]
    port = airflow_setting("airflow-api-server", "api", "port", "8080")
    assert api[:2] == ["CMD", "curl"] and f"http://localhost:{port}/api/v2/monitor/health" in api, api
    for name in AIRFLOW_SERVICES:
        check = COMPOSE["services"][name]["healthcheck"]
        assert {"interval", "timeout", "retries", "start_period"} <= set(check), f"{name}: {check}"


def load_image_requirements():
    """include/stack/airflow-image/image_requirements.py (a build script, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_requirements", IMAGE_DIR / "image_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_requirement_lines() -> list[str]:
    """What the image pip-installs: image_requirements.py over requirements.txt, as the build runs it."""
    text = load_image_requirements().image_requirements((REPO / "requirements.txt").read_text())
    return [line.split("#", 1)[0].strip() for line in text.splitlines()
            if line.split("#", 1)[0].strip() and not line.lstrip().startswith("-")]


def installed_closure(requirement_lines: list[str]) -> set[str]:
    """Every distribution those requirements install (their dependencies, markers evaluated here),
    by canonical name, from the metadata of the same pins installed in .venv."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    canonical = load_image_requirements().canonical
    seen: set[tuple[str, str]] = set()
    todo = [(Requirement(line), "") for line in requirement_lines]
    names: set[str] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        for wanted in [""] + sorted(req.extras):
            key = (canonical(req.name), wanted)
            if key in seen:
                continue
            seen.add(key)
            names.add(key[0])
            try:
                requires = distribution(req.name).requires or []
            except PackageNotFoundError:
                raise AssertionError(f"{req.name} is not installed in .venv: pip install -r requirements.txt") from None
            todo.extend((Requirement(r), wanted) for r in requires)
    return names


#: what Airflow components of the image import: the DAG files, the plugin, the operators (with the
#: triggers), airflow-init's pool generator, and (followed from them) the aifactory modules they use
TASK_ENTRY_FILES = [*sorted((REPO / "dags").glob("*.py")), *sorted((REPO / "plugins").glob("*.py")),
                    *sorted((REPO / "operators").glob("*.py")), REPO / "include" / "stack" / "pools.py"]
FIRST_PARTY = {"aifactory": REPO / "include", "operators": REPO}
#: imported only when the module runs inside a job's run directory on the cluster (contract.py)
JOB_SIDE = {"aifp_runtime"}


def _first_party_file(module: str) -> Path | None:
    root = FIRST_PARTY.get(module.split(".")[0])
    if root is None:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports at run time, anywhere in it (lazy imports in functions too;
    not those under ``if TYPE_CHECKING:``)."""
    import ast

    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def task_third_party_imports() -> set[str]:
    """The non-standard-library modules the image's Airflow code reaches, first-party followed."""
    import sys

    todo = [(p, "") for p in TASK_ENTRY_FILES]
    done: set[Path] = set()
    third: set[str] = set()
    local_names = {p.stem for p in TASK_ENTRY_FILES}
    while todo:
        path, package = todo.pop()
        if path in done:
            continue
        done.add(path)
        for module in _imports(path, package):
            top = module.split(".")[0]
            if top in FIRST_PARTY:
                parts = module.split(".")
                for i in range(1, len(parts) + 1):  # the packages' __init__ run too
                    found = _first_party_file(".".join(parts[:i]))
                    if found:
                        pkg = ".".join(parts[:i]) if found.name == "__init__.py" else ".".join(parts[: i - 1])
                        todo.append((found, pkg))
            elif top and top not in sys.stdlib_module_names | local_names | JOB_SIDE | {"__future__"}:
                parts = module.split(".")
                third.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return third


def distribution_of(module: str, among: set[str]) -> str | None:
    """Which of the distributions ``among`` installs ``module`` (the longest part of its dotted
    path one owns); None when none does, or for a name that is an attribute, not a module."""
    if not _MODULE_OWNER:
        from importlib.metadata import distribution

        canonical = load_image_requirements().canonical
        for name in sorted(among):
            dist = distribution(name)
            owner = canonical(dist.metadata["Name"])
            # RECORD's first column, read as text (dist.files builds an object per file: slow)
            for path in (line.split(",", 1)[0] for line in (dist.read_text("RECORD") or "").splitlines()):
                if path.endswith((".py", ".so", ".pyd")):  # pkg/mod.py, pkg/__init__.py, pkg/_ext.cpython-311-….so
                    key = path.rsplit(".", 1)[0].split(".", 1)[0].removesuffix("/__init__")
                    _MODULE_OWNER.setdefault(key, owner)
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        owner = _MODULE_OWNER.get("/".join(parts[:i]))
        if owner:
            return owner
    return None


#: module path (``pkg/sub/mod``) -> the distribution that installed it, from .venv's RECORDs
_MODULE_OWNER: dict[str, str] = {}


def test_the_image_has_every_dependency_the_dags_and_tasks_import():
    """The Airflow image is built from requirements.txt (one list of pins: image_requirements.py
    leaves out only the local-stack and test tooling), not pip-installed at each start from a
    list of its own; and every package the DAG files, the plugin, the operators and the aifactory
    code they import (export's ONNX Runtime and safetensors, the SSH/SFTP/Amazon/FAB providers,
    Great Expectations, ...) is one it installs."""
    common = COMPOSE["x-airflow-common"]
    assert common.get("build") == {"context": ".", "dockerfile": "include/stack/airflow-image/Dockerfile"}, (
        f"x-airflow-common does not build the image of include/stack/airflow-image/: build={common.get('build')}")
    for name, svc in COMPOSE["services"].items():
        assert not svc.get("environment", {}).get("_PIP_ADDITIONAL_REQUIREMENTS"), (
            f"{name} pip-installs packages at every start: they belong in the image (requirements.txt)")
    # the base is the slim image of the Airflow requirements.txt pins, on the .venv's Python
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", (REPO / "requirements.txt").read_text(), re.M))
    import sys

    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = dockerfile_base(IMAGE_DIR / "Dockerfile")
    assert base == f"apache/airflow:slim-{pins['apache-airflow']}-{python}", base
    assert f":{pins['apache-airflow']}-{python}" in common["image"], common["image"]
    # the build runs image_requirements.py over requirements.txt and installs what it writes;
    # the context (the repo root, with .venv and .stack's secrets) admits only what it copies
    dockerfile = (IMAGE_DIR / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (\S+) ", dockerfile, re.M)
    assert set(copied) == {"requirements.txt", "include/constraints.txt",
                           "include/stack/airflow-image/image_requirements.py"}, copied
    assert re.search(r"image_requirements\.py \S*requirements\.txt\s*\\?\s*> (\S+requirements-image\.txt)", dockerfile)
    assert re.search(r"pip install --no-cache-dir -r \S+requirements-image\.txt", dockerfile)
    ignore = [line for line in (IMAGE_DIR / "Dockerfile.dockerignore").read_text().splitlines()
              if line and not line.startswith("#")]
    assert ignore[0] == "**" and set(ignore[1:]) == {f"!{c}" for c in copied}, ignore
    # and what the code imports is installed by it
    image = installed_closure(image_requirement_lines())
    left_out = set(load_image_requirements().NOT_IN_IMAGE)
    missing = {}
    for module in sorted(task_third_party_imports()):
        dist = distribution_of(module, image)
        if dist is None and "." in module:
            continue  # ``from pkg import name``: a name, or a module of a package counted on its own
        if dist is None or dist in left_out:
            missing[module] = dist
    assert not missing, f"imported by the DAGs/tasks but not installed in the Airflow image: {missing}"
    for needed in ["onnxruntime", "safetensors", "apache-airflow-providers-ssh", "apache-airflow-providers-sftp",
                   "apache-airflow-providers-amazon", "apache-airflow-providers-fab", "great-expectations"]:
        assert needed in image, f"{needed} is not in the Airflow image"


def test_the_image_has_the_executor_and_database_drivers():
    """The CeleryExecutor lives in the celery provider (with the redis client for the broker), the
    Postgres metadata database and result backend need psycopg2 (postgres provider): the slim
    base has none of them, so the image's requirements must."""
    build = COMPOSE["x-airflow-common"].get("build", {})
    assert build.get("dockerfile") == "include/stack/airflow-image/Dockerfile", (
        f"the Airflow services do not run the image built from requirements.txt: {build}")
    assert COMPOSE["services"][COMMON_ENV_HOLDER]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    direct = {load_image_requirements().requirement_name(line) for line in image_requirement_lines()}
    assert {"apache-airflow-providers-celery", "apache-airflow-providers-postgres"} <= direct, sorted(direct)
    image = installed_closure(image_requirement_lines())
    for needed in ["celery", "redis", "psycopg2-binary"]:
        assert needed in image, f"{needed} (broker, result backend, metadata database) is not in the Airflow image"
    env = COMPOSE["services"][COMMON_ENV_HOLDER]["environment"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")


def test_two_celery_workers_each_its_own_name():
    """The production shape runs two workers: replicas of one service, so neither a fixed
    container name nor a fixed Celery hostname (two workers of one name share their inspect
    replies and the second is refused) may be set."""
    worker = COMPOSE["services"]["airflow-worker"]
    replicas = worker.get("deploy", {}).get("replicas", worker.get("scale", 1))
    assert replicas >= 2, f"airflow-worker runs {replicas} worker(s): the production shape has two"
    assert "container_name" not in worker and "hostname" not in worker, worker
    assert worker["command"] == "celery worker", worker["command"]
    # warm shutdown: SIGTERM to the worker alone (Airflow's entrypoint docs), so running tasks finish
    assert worker["environment"]["DUMB_INIT_SETSID"] == "0"


def test_airflow_init_makes_a_pool_per_cluster_bounding_its_ssh_sessions():
    """airflow-init imports one pool per cluster spec (include/stack/pools.py over the mounted
    include/clusters), so tasks against a login node are bounded however many workers run."""
    import importlib.util
    import shlex

    command = COMPOSE["services"]["airflow-init"]["command"]
    assert command[:2] == ["bash", "-c"], command
    steps = [shlex.split(step) for step in command[2].split("&&")]
    gen = next((s for s in steps if s[:2] == ["python", "/opt/aifactory/include/stack/pools.py"]), None)
    assert gen is not None, f"airflow-init does not run include/stack/pools.py: {command}"
    assert gen[2] == "/opt/aifactory/include/clusters" and gen[3] == ">", gen
    assert ["airflow", "pools", "import", gen[4]] in steps, f"airflow-init does not import {gen[4]}: {command}"
    assert "./include:/opt/aifactory/include:ro" in COMPOSE["services"]["airflow-init"]["volumes"]
    # what it writes: the pools of every cluster spec of the repo
    spec = importlib.util.spec_from_file_location("aifactory_pools", REPO / "include" / "stack" / "pools.py")
    pools_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pools_module)
    from aifactory.layout import CLUSTERS_DIR, ssh_pool

    made = pools_module.pools(CLUSTERS_DIR)
    clusters = sorted(p.stem for p in CLUSTERS_DIR.glob("*.yaml"))
    # the pools the DAGs' SSH tasks name (layout.ssh_pool), one per cluster spec
    assert clusters and sorted(made) == sorted(ssh_pool(c) for c in clusters), (made, clusters)
    for name, pool in made.items():
        assert pool["slots"] >= 1 and pool["include_deferred"] is False and pool["description"], (name, pool)
