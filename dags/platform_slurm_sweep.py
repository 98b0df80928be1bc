"""
### Platform: orphan sweep

For platform engineers, one DAG per cluster (`platform_slurm_sweep_<cluster>`), every 5 minutes
once unpaused. It lists the factory's active Slurm jobs on the cluster and cancels those whose
Airflow task has ended (failed, upstream failed, skipped, removed or marked successful by hand),
for instance a training task marked failed before the triggerer had picked up its trigger.

Only jobs whose name and comment prove they belong to a task instance of this Airflow are
considered; queued, running, deferred, retrying and cleared tasks keep their jobs (they re-attach
by name). Trigger it with `dry_run` to see the decisions without cancelling anything.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from aifactory.layout import CLUSTERS_DIR, ssh_pool, sweep_dag_id
from aifactory.tenants import ClusterSpec, load_cluster
from operators.form import form_param
from operators.sweep import SlurmSweepOperator


def build_sweep(spec: ClusterSpec) -> DAG:
    with DAG(
        dag_id=sweep_dag_id(spec.name),
        description=f"Cancel factory jobs on {spec.name} whose Airflow task has ended",
        doc_md=__doc__,
        schedule=timedelta(minutes=5),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["ai-factory", "platform", f"cluster:{spec.name}"],
        params={"dry_run": form_param(False, type="boolean", title="Only log what would be cancelled")},
        default_args={"owner": "platform-team", "retries": 1, "retry_delay": timedelta(minutes=1)},
    ) as dag:
        # dry_run from the run's params; one SSH session to the cluster: its pool
        SlurmSweepOperator(task_id="sweep", cluster=spec.name, pool=ssh_pool(spec.name))
    return dag


for _path in sorted(CLUSTERS_DIR.glob("*.yaml")):
    _cluster = load_cluster(_path.stem)
    globals()[sweep_dag_id(_cluster.name)] = build_sweep(_cluster)
