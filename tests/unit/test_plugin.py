from __future__ import annotations

import sys
from pathlib import Path

from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))

from aifactory_plugin import AIFactoryPlugin, app  # noqa: E402


def test_tenant_catalogue_lists_demo_with_its_limits():
    client = TestClient(app)
    tenants = client.get("/tenants").json()
    demo = next(t for t in tenants if t["tenant"] == "demo")
    assert demo["dag_id"] == "factory_demo"
    assert demo["slurm_account"] == "demo" and demo["limits"]["max_nodes"] >= 1
    # the cap on one run's allocation across requeues is part of what an engineer checks
    assert demo["limits"]["max_hold_minutes"] >= demo["limits"]["max_time_limit_minutes"]


def test_recipe_catalogue_exposes_schemas():
    recipes = TestClient(app).get("/recipes").json()
    assert "label_column" in recipes["tabular_classifier"]["hyperparameters"]["properties"]


def test_plugin_mounts_under_its_own_prefix():
    assert AIFactoryPlugin.fastapi_apps[0]["url_prefix"] == "/aifactory"
