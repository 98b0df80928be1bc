"""What a DAG file builds in this parse, and what a tenant's DAGs share.

The dag-processor parses a DAG file to build every DAG in it; a task process parses the same file
again at its start (Airflow's task runner) and needs only its own DAG, which Airflow's parsing
context names (``get_parsing_context().dag_id``; None in the dag-processor). With 1000 tenants a
task's start parse of ``dags/factory_pipelines.py`` went from 4.3 s to about 0.5 s
(``bench/parse.py`` ``task_parse_files``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import get_parsing_context

if TYPE_CHECKING:
    from aifactory.tenants import TenantSpec


def builds(dag_id: str) -> bool:
    """Whether this parse builds ``dag_id``: every DAG in the dag-processor, one in a task process."""
    wanted = get_parsing_context().dag_id
    return wanted is None or wanted == dag_id


def tenant_dag_args(spec: TenantSpec, *kinds: str) -> dict[str, Any]:
    """What every DAG generated for a tenant shares: its tags (``tenant:<name>`` plus ``kinds``),
    no catch-up, and the default args of its tasks (the tenant's owner, one retry, and the tenant's
    failure notifications: ``operators.notify``)."""
    from operators.notify import failure_notifiers

    return {
        "catchup": False,
        "tags": ["ai-factory", *kinds, f"tenant:{spec.tenant}"],
        "default_args": {"owner": spec.owner, "retries": 1, "retry_delay": timedelta(seconds=20),
                         "on_failure_callback": failure_notifiers(spec)},
    }
