"""What an operator sees of a run: the plugin pages behind the train and export tasks' extra links.

Airflow-free rules, used by :mod:`operators.links` (the links), the plugin
(``plugins/aifactory_plugin.py``, the pages) and the tests:

- A task link opens a **task page** of the plugin, keyed by the task instance
  (``/aifactory/tasks/<page>?dag_id=..&run_id=..&task_id=..``): the link needs nothing but the
  task instance's key, so it works while the train task is deferred or after it failed. The page
  redirects to the **tenant page** of what it found (``/aifactory/tenants/<tenant>/jobs/<id>``,
  ``.../models/<model>/<version>/card``), which checks everything again on its own.
- Which Slurm job belongs to a train task is not read from XCom or the task state store (anyone
  who may edit a run can rewrite those): the job's name is a hash of the task instance
  (:func:`aifactory.hpc.slurm.job_name`), so the page asks Slurm for that name.
- A job page shows a job only when Slurm records it under the tenant's own account with a name
  the factory made for that tenant (:func:`owns_job`); its log is read from the tenant's own run
  directory, as the tenant's own Unix user. A model card is read only from the tenant's models
  area, with names that :data:`layout.NAME_RE` / :data:`layout.VERSION_RE` accept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from aifactory import layout
from aifactory.hpc.slurm import SacctRecord, job_name
from aifactory.tenants.spec import TenantSpec

#: where the plugin's app is mounted on the api-server
PLUGIN_PREFIX = "/aifactory"
#: the task pages (``/aifactory/tasks/<page>``) the extra links open
JOB_PAGE = "slurm-job"
LOG_PAGE = "slurm-log"
CARD_PAGE = "model-card"
TASK_PAGES = (JOB_PAGE, LOG_PAGE, CARD_PAGE)
#: the most log bytes a log page shows (its tail)
LOG_TAIL_BYTES = 64 * 1024


def task_page_url(page: str, *, dag_id: str, run_id: str, task_id: str, map_index: int = -1,
                  base_path: str = "") -> str:
    """The URL of one task page (relative to the api-server, below ``base_path``)."""
    if page not in TASK_PAGES:
        raise ValueError(f"unknown task page {page!r}; known: {TASK_PAGES}")
    query: dict[str, Any] = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id}
    if map_index is not None and int(map_index) != -1:
        query["map_index"] = int(map_index)
    return f"{base_path.rstrip('/')}{PLUGIN_PREFIX}/tasks/{page}?{urlencode(query)}"


def job_page_path(tenant: str, job_id: str) -> str:
    return f"{PLUGIN_PREFIX}/tenants/{quote(tenant, safe='')}/jobs/{quote(job_id, safe='')}"


def log_page_path(tenant: str, job_id: str) -> str:
    return f"{job_page_path(tenant, job_id)}/log"


def card_page_path(tenant: str, model: str, version: str) -> str:
    return f"{PLUGIN_PREFIX}/tenants/{quote(tenant, safe='')}/models/{quote(model, safe='')}/{quote(version, safe='')}/card"


def tenant_of_dag(dag_id: str, specs: Iterable[TenantSpec]) -> TenantSpec | None:
    """The tenant among ``specs`` one of whose DAGs (``TenantSpec.dag_ids``) is ``dag_id`` (None: not a
    tenant DAG)."""
    return next((s for s in specs if dag_id in s.dag_ids), None)


def train_job_name(spec: TenantSpec, *, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The Slurm job name the train task instance submits under (the same for every try)."""
    return job_name(spec.tenant, dag_id, run_id, task_id, map_index)


def owns_job(record: SacctRecord, spec: TenantSpec) -> bool:
    """True when Slurm records the job under the tenant's account with a name made for the tenant."""
    name_ok = bool(layout.JOB_NAME_RE.fullmatch(record.name)) and record.name.startswith(
        f"{layout.JOB_NAME_PREFIX}{spec.tenant}-")
    return name_ok and record.account.lower() == spec.slurm_account.lower()


def job_log_path(areas: layout.TenantAreas, record: SacctRecord) -> str:
    """The batch log of a job the factory submitted: ``<project area>/runs/<job name>/slurm-<id>.out``."""
    return layout.job_log_path(layout.run_dir(areas, record.name), record.job_id)


def job_page(record: SacctRecord, spec: TenantSpec, *, log_path: str) -> dict[str, Any]:
    """The job page: what Slurm records about the job, where its log is, and the log page's path."""
    return {
        "tenant": spec.tenant,
        **record.as_dict(),
        "log_path": log_path,
        "log_page": log_page_path(spec.tenant, record.job_id),
    }


def model_of_export(result: Any) -> tuple[str, str] | None:
    """``(model, version)`` from the export task's XCom, when both are names the layout accepts."""
    if not isinstance(result, Mapping):
        return None
    model, version = result.get("model"), result.get("version")
    if isinstance(model, str) and isinstance(version, str) and layout.NAME_RE.fullmatch(model) \
            and layout.VERSION_RE.fullmatch(version):
        return model, version
    return None


def card_key(spec: TenantSpec, model: str, version: str) -> str | None:
    """The model card of one model version of the tenant (None when a name is not acceptable)."""
    if not (layout.NAME_RE.fullmatch(model) and layout.VERSION_RE.fullmatch(version)):
        return None
    return f"{spec.model_prefix(model, version)}{layout.MODEL_CARD_MD}"
