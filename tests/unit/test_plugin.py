from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow.api_fastapi.core_api.security import get_user
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))

import aifactory_plugin as plugin  # noqa: E402
from aifactory_plugin import AIFactoryPlugin, app  # noqa: E402


@pytest.fixture()
def as_dags() -> Iterator[callable]:
    """Log in as a user the auth manager authorizes for these DAG ids (Airflow's ``get_user``
    and the auth manager's answer are replaced; the real ones: tests/e2e/test_isolation_airflow.py)."""
    def login(*dag_ids: str) -> TestClient:
        app.dependency_overrides[get_user] = lambda: object()
        app.dependency_overrides[plugin.authorized_dag_ids] = lambda: set(dag_ids)
        return TestClient(app)

    yield login
    app.dependency_overrides.clear()


@pytest.mark.parametrize("path", ["/tenants", "/tenants/demo", "/tenants/demo/models", "/recipes"])
def test_every_endpoint_answers_401_without_a_login(path):
    answer = TestClient(app).get(path)
    assert answer.status_code == 401, answer.text  # a forged token: tests/e2e/test_isolation_airflow.py


def test_a_tenant_user_sees_its_own_spec_only(as_dags):
    client = as_dags("factory_demo", "platform_slurm_probe_demo")
    tenants = client.get("/tenants").json()
    assert [t["tenant"] for t in tenants] == ["demo"]
    demo = tenants[0]
    assert demo["dag_id"] == "factory_demo"
    assert demo["slurm_account"] == "demo" and demo["limits"]["max_nodes"] >= 1
    # the cap on one run's allocation across requeues is part of what an engineer checks
    assert demo["limits"]["max_hold_minutes"] >= demo["limits"]["max_time_limit_minutes"]
    assert client.get("/tenants/demo").json()["tenant"] == "demo"
    # another tenant's spec and models: not found, as for a tenant that does not exist
    for path in ("/tenants/acme", "/tenants/acme/models", "/tenants/nobody"):
        assert client.get(path).status_code == 404


def test_the_platform_sees_every_tenant(as_dags):
    client = as_dags("factory_demo", "factory_acme", "platform_slurm_sweep_local")
    assert {t["tenant"] for t in client.get("/tenants").json()} >= {"demo", "acme"}


def test_a_user_without_factory_dags_sees_no_tenant(as_dags):
    assert as_dags("platform_slurm_probe_demo").get("/tenants").json() == []


def test_recipe_catalogue_exposes_schemas(as_dags):
    recipes = as_dags().get("/recipes").json()
    assert "label_column" in recipes["tabular_classifier"]["hyperparameters"]["properties"]


def test_plugin_mounts_under_its_own_prefix():
    assert AIFactoryPlugin.fastapi_apps[0]["url_prefix"] == "/aifactory"
