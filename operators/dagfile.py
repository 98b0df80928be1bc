"""What a DAG file builds in this parse.

The dag-processor parses a DAG file to build every DAG in it; a task process parses the same file
again at its start (Airflow's task runner) and needs only its own DAG, which Airflow's parsing
context names (``get_parsing_context().dag_id``; None in the dag-processor). With 1000 tenants a
task's start parse of ``dags/factory_pipelines.py`` went from 4.3 s to about 0.5 s
(``bench/parse.py`` ``task_parse_files``).
"""

from __future__ import annotations

from airflow.sdk import get_parsing_context


def builds(dag_id: str) -> bool:
    """Whether this parse builds ``dag_id``: every DAG in the dag-processor, one in a task process."""
    wanted = get_parsing_context().dag_id
    return wanted is None or wanted == dag_id
