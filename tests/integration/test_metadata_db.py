"""The local stack's Airflow metadata database: Postgres from Debian (include/stack/metadata_db.sh).

SQLite took one writer at a time, and triggers sent while the scheduler worked got HTTP 500
"database is locked" (tests/e2e/test_trigger_burst.py sends the burst). These tests check the
shape the stack promises: every component is pointed at Postgres, the database holds Airflow's
and FAB's tables, the server answers on the loopback address only, its password is a generated
secret only root can read, and each cluster has its SSH pool.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from aifactory import layout
from aifactory.local.localstack import secrets_dir
from aifactory.tenants import load_cluster

pytestmark = pytest.mark.integration


def _url(stack_env) -> str:
    return stack_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def _listeners(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses with a listening TCP socket on ``port`` (/proc/net/tcp*)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                out.add(addr)
    return out


def test_airflow_points_at_postgres_with_the_generated_password(stack_env):
    url = urlsplit(_url(stack_env))
    assert url.scheme == "postgresql+psycopg2", f"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is {url.scheme}://, not Postgres"
    assert (url.hostname, url.username, url.path) == ("127.0.0.1", "airflow", "/airflow")
    secret = secrets_dir(stack_env) / "postgres_airflow_password"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600, f"{secret} is {oct(secret.stat().st_mode)}"
    assert url.password == secret.read_text().strip(), f"stack.env's database password is not {secret}'s"
    assert len(url.password) >= 32


def test_the_database_holds_airflows_and_fabs_tables(stack_env):
    import sqlalchemy

    engine = sqlalchemy.create_engine(_url(stack_env))
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    for table in ("alembic_version", "dag_run", "task_instance", "slot_pool", "ab_user", "ab_role"):
        assert table in tables, f"{table} missing from the metadata database: did airflow db migrate run on it?"


def test_postgres_listens_on_loopback_only(stack_env):
    port = urlsplit(_url(stack_env)).port
    assert port
    addrs = _listeners(port)
    assert addrs, f"nothing listens on port {port}"
    assert addrs == {"0100007F"}, f"Postgres listens on {addrs} (hex /proc/net/tcp form), want 127.0.0.1 only"


def test_a_wrong_password_is_refused(stack_env):
    import sqlalchemy

    url = urlsplit(_url(stack_env))
    wrong = _url(stack_env).replace(f":{url.password}@", ":not-the-password@")
    engine = sqlalchemy.create_engine(wrong)
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
            engine.connect()
    finally:
        engine.dispose()


def test_every_cluster_has_its_ssh_pool(stack_env):
    clusters = [load_cluster(p.stem).name for p in sorted(layout.CLUSTERS_DIR.glob("*.yaml"))]
    out = subprocess.run(["airflow", "pools", "list", "-o", "json"], capture_output=True, text=True,
                         env={**os.environ, **stack_env}, check=True, timeout=120).stdout
    pools = {p["pool"]: p for p in json.loads(out)}
    for name in clusters:
        pool = pools.get(layout.ssh_pool(name))
        assert pool, f"no pool {layout.ssh_pool(name)} for cluster {name} (stack.sh up_pools): its SSH tasks would never run"
        assert int(pool["slots"]) >= 1
