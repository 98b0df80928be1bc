"""Airflow plugin: each tenant's catalogue entry and models, behind Airflow's own login.

Mounts a small read-only API at ``/aifactory`` on the api-server:

- ``GET /aifactory/tenants``: the specs (bucket, cluster, Slurm account, partitions, limits,
  recipes, allocation) of the tenants the caller may see.
- ``GET /aifactory/tenants/{tenant}``: one of them (404 for a tenant the caller may not see: the
  answer does not tell whether it exists).
- ``GET /aifactory/tenants/{tenant}/models``: the tenant's published model versions
  (``s3://<bucket>/<tenant>/models/<model>/<version>/``), listed with the platform's S3 connection.
- ``GET /aifactory/usage``: per visible tenant, its allocation, what Slurm says is used and remains,
  and one row per job of its account (CPU-/GPU-minutes from sacct).
- ``GET /aifactory/recipes``: the recipe folders and their hyperparameter schemas.
- ``GET /aifactory/tenants/{tenant}/jobs/{job_id}`` (and ``.../log``): one Slurm job of the
  tenant as ``sacct`` records it (and the tail of its log), asked over the tenant's own SSH login;
  another tenant's job answers 404.
- ``GET /aifactory/tenants/{tenant}/models/{model}/{version}/card``: a published model card, read
  with the tenant's own S3 credential.
- ``GET /aifactory/tasks/{slurm-job|slurm-log|model-card}?dag_id=..&run_id=..&task_id=..``: what
  the train and export tasks' extra links open (:mod:`operators.links`); redirects to the page above.

Every endpoint answers 401 without a login: the same Bearer token (``POST /auth/token``) or UI
cookie as the REST API, checked by Airflow's own FastAPI dependency (``GetUserDep``). Which
tenants a caller sees is not a second permission table: a tenant is visible when the auth manager
authorizes the caller to read its pipeline DAG (``get_authorized_dag_ids``), so a tenant's users
see their own tenant only and the platform role (every DAG) sees all of them.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.responses import PlainTextResponse, RedirectResponse

app = FastAPI(title="AI Factory Pipelines", description=__doc__)


def _specs() -> dict[str, Any]:
    """The specs the DAGs are built from: a broken spec file hides its own tenant only."""
    from aifactory.tenants import good_tenants

    return {t.tenant: t for t in good_tenants()}


def authorized_dag_ids(user: GetUserDep) -> set[str]:
    """The DAGs the auth manager lets ``user`` read (401 before this without a login)."""
    from airflow.api_fastapi.app import get_auth_manager

    return set(get_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


def visible_tenants(dag_ids: Annotated[set[str], Depends(authorized_dag_ids)]) -> dict[str, Any]:
    """``{tenant: spec}`` of the tenants whose pipeline DAG the caller may read."""
    from aifactory.layout import pipeline_dag_id

    return {name: spec for name, spec in _specs().items() if pipeline_dag_id(name) in dag_ids}


Visible = Annotated[dict[str, Any], Depends(visible_tenants)]


def _one(tenants: dict[str, Any], tenant: str) -> Any:
    if tenant not in tenants:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such tenant among those you may see")
    return tenants[tenant]


def _entry(spec: Any) -> dict[str, Any]:
    from aifactory.layout import pipeline_dag_id

    return {**asdict(spec), "dag_id": pipeline_dag_id(spec.tenant)}


@app.get("/tenants")
def tenants(visible: Visible) -> list[dict[str, Any]]:
    return [_entry(spec) for spec in visible.values()]


@app.get("/tenants/{tenant}")
def tenant(tenant: str, visible: Visible) -> dict[str, Any]:
    return _entry(_one(visible, tenant))


def list_models(bucket: str, prefix: str) -> list[dict[str, str]]:
    """``[{model, version, uri}]`` under ``prefix`` (one delimiter listing per model), with the
    platform's S3 connection: the api-server reads, the tenant's own credential stays with its tasks."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from aifactory import layout
    from aifactory.tenants.spec import PLATFORM_S3_CONN_ID

    s3 = S3Hook(aws_conn_id=PLATFORM_S3_CONN_ID).get_conn()
    pages = s3.get_paginator("list_objects_v2")

    def children(under: str) -> list[str]:
        out: list[str] = []
        for page in pages.paginate(Bucket=bucket, Prefix=under, Delimiter="/"):
            out += [c["Prefix"][len(under):].rstrip("/") for c in page.get("CommonPrefixes", [])]
        return out

    return [{"model": m, "version": v, "uri": layout.s3_uri(bucket, f"{prefix}{m}/{v}/")}
            for m in children(prefix) for v in children(f"{prefix}{m}/")]


@app.get("/tenants/{tenant}/models")
def models(tenant: str, visible: Visible) -> list[dict[str, str]]:
    from aifactory import layout

    spec = _one(visible, tenant)
    return list_models(spec.bucket, layout.models_prefix(spec.tenant))


@app.get("/usage")
def usage(visible: Visible) -> list[dict[str, Any]]:
    """Each visible tenant's allocation, Slurm's used / remaining budget and one row per job
    (operators.usage, over the cluster's service identity)."""
    from operators.usage import tenant_usage

    return [tenant_usage(spec) for spec in visible.values()]


@app.get("/recipes")
def recipes(user: GetUserDep) -> dict[str, Any]:
    """Platform-owned recipe folders (no tenant's data); a login is still required."""
    from aifactory.models.recipes import load_recipes

    return {
        name: {"description": r.description, "hyperparameters": r.schema, "resources": r.resources}
        for name, r in load_recipes().items()
    }


def _page(fetch: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one page fetch (operators.links): NotFound answers 404, an unreachable Slurm or S3 502."""
    from operators.links import NotFound

    try:
        return fetch(*args, **kwargs)
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except Exception as exc:  # the cluster or the object store did not answer: say which, not a 500
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"{type(exc).__name__}: {str(exc)[:500]}") from exc


@app.get("/tenants/{tenant}/jobs/{job_id}")
def job(tenant: str, job_id: str, visible: Visible) -> dict[str, Any]:
    """One Slurm job of the tenant (sacct over the tenant's own SSH login)."""
    from operators.links import job_page

    return _page(job_page, _one(visible, tenant), job_id)


@app.get("/tenants/{tenant}/jobs/{job_id}/log", response_class=PlainTextResponse)
def job_log(tenant: str, job_id: str, visible: Visible) -> str:
    """The tail of the job's log, read by the tenant's own Unix user."""
    from operators.links import job_page

    return _page(job_page, _one(visible, tenant), job_id, log_tail=True)


@app.get("/tenants/{tenant}/models/{model}/{version}/card", response_class=PlainTextResponse)
def model_card(tenant: str, model: str, version: str, visible: Visible) -> PlainTextResponse:
    """The model card (Markdown) of one published model version."""
    from operators.links import model_card as read_card

    card = _page(read_card, _one(visible, tenant), model, version)
    return PlainTextResponse(card, media_type="text/markdown; charset=utf-8")


@app.get("/tasks/{page}")
def task_page(page: str, dag_id: str, run_id: str, task_id: str, visible: Visible,
              dag_ids: Annotated[set[str], Depends(authorized_dag_ids)], map_index: int = -1) -> RedirectResponse:
    """What a task's extra link opens: the tenant page of the train task's Slurm job (or its log) or
    of the model version the export task published. A DAG the caller may not read answers 404."""
    from aifactory import views
    from operators import links

    spec = views.tenant_of_dag(dag_id, visible.values()) if dag_id in dag_ids else None
    if spec is None or page not in views.TASK_PAGES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such task page among the DAGs you may see")
    key = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index}
    if page == views.CARD_PAGE:
        found = views.model_of_export(links.export_result(**key))
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"task {task_id} of run {run_id} has published no "
                                                           "model version (yet)")
        target = views.card_page_path(spec.tenant, *found)
    else:
        job_id = _page(links.train_job_id, spec, **key)
        target = (views.job_page_path if page == views.JOB_PAGE else views.log_page_path)(spec.tenant, job_id)
    return RedirectResponse(links.base_path() + target, status_code=status.HTTP_307_TEMPORARY_REDIRECT)


def _links() -> list[Any]:
    from operators.links import LINKS

    return list(LINKS)


class AIFactoryPlugin(AirflowPlugin):
    name = "aifactory"
    # the train and export tasks' extra links (resolved in the api-server; see operators.links)
    global_operator_extra_links = _links()
    fastapi_apps = [{"app": app, "url_prefix": "/aifactory", "name": "AI Factory tenants and recipes"}]
    external_views = [
        {"name": "Factory tenants", "href": "/aifactory/tenants", "destination": "nav", "category": "browse"}
    ]
