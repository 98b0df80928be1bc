"""Airflow plugin: the factory's tenant catalogue for platform engineers.

Mounts a small read-only API at ``/aifactory`` on the api-server:

- ``GET /aifactory/tenants``: every tenant spec (bucket, cluster, Slurm account, partitions,
  limits, recipes, schedule) as the DAG factory sees it, so an engineer can check an onboarding
  without reading YAML on the server.
- ``GET /aifactory/recipes``: the recipe folders and their hyperparameter schemas.

It reads only platform-owned files under ``include/``; nothing here reaches the cluster or S3.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI

app = FastAPI(title="AI Factory Pipelines", description=__doc__)


@app.get("/tenants")
def tenants() -> list[dict[str, Any]]:
    from aifactory.layout import pipeline_dag_id
    from aifactory.tenants import load_tenants

    return [{**asdict(t), "dag_id": pipeline_dag_id(t.tenant)} for t in load_tenants()]


@app.get("/recipes")
def recipes() -> dict[str, Any]:
    from aifactory.models.recipes import load_recipes

    return {
        name: {"description": r.description, "hyperparameters": r.schema, "resources": r.resources}
        for name, r in load_recipes().items()
    }


class AIFactoryPlugin(AirflowPlugin):
    name = "aifactory"
    fastapi_apps = [{"app": app, "url_prefix": "/aifactory", "name": "AI Factory tenants and recipes"}]
    external_views = [
        {"name": "Factory tenants", "href": "/aifactory/tenants", "destination": "nav", "category": "browse"}
    ]
