"""
### Platform: Slurm probe

For platform engineers, one DAG per tenant (`platform_slurm_probe_<tenant>`). Submits `jobs`
small probe jobs under the tenant's Slurm account and partition, through exactly the path training
takes (the tenant's own SSH connection and Unix login with the pinned host key, the fixed sbatch
wrapper, the tenant's limits), and watches them from the triggerer. It runs under the tenant's
identity, never the platform's service login, so it checks the tenant's own setup: its login and
key, its directory (owned by its user, 0700) and its user's association with its account.

Use it to check a newly onboarded tenant end to end (account association, partition, HPC
directories, accounting in `sacct`), and to see how the engine behaves with many jobs in flight:
all jobs of one cluster share one SSH connection and one `squeue`/`sacct` query per poll interval
(`bench/slurm_watch.py` measures it). A probe reads no data and writes only a completion marker.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, task

from aifactory.layout import probe_dag_id, ssh_pool
from aifactory.tenants import TenantSpec, good_tenants
from operators.dagfile import builds
from operators.form import form_param
from operators.slurm import SlurmJobOperator

PLATFORM_RECIPES = Path(__file__).resolve().parent.parent / "include" / "platform_recipes"


@task
def probe_jobs(params: dict) -> list[dict]:
    """One hyperparameter set per probe job: the map of the probe task."""
    return [{"mode": "sleep", "seconds": int(params["seconds"])} for _ in range(int(params["jobs"]))]


def build_probe(spec: TenantSpec) -> DAG:
    with DAG(
        dag_id=probe_dag_id(spec.tenant),
        description=f"Submit and watch probe jobs under {spec.tenant}'s Slurm account",
        doc_md=__doc__,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["ai-factory", "platform", f"tenant:{spec.tenant}"],
        params={
            "jobs": form_param(1, type="integer", minimum=1, maximum=200, title="Probe jobs"),
            "seconds": form_param(5, type="integer", minimum=0, maximum=600, title="Seconds each job runs"),
        },
        default_args={"owner": "platform-team", "retries": 1, "retry_delay": timedelta(seconds=20)},
    ) as dag:
        SlurmJobOperator.partial(
            task_id="probe",
            tenant=spec.tenant,
            recipe="probe",
            recipes_root=PLATFORM_RECIPES,
            purpose="probe",  # the tenant's probe QOS (slurm.qos.probe), if it has one
            pool=ssh_pool(spec.cluster),  # each probe job's submit holds an SSH session to the cluster
            slurm_resources={"nodes": 1, "cpus_per_task": 1, "mem_gb": 1, "time_limit_minutes": 15},
        ).expand(hyperparameters=probe_jobs())
    return dag


# good specs only: a broken tenant spec fails that tenant alone (see aifactory.tenants.spec.good_tenants)
for _spec in good_tenants():
    if builds(probe_dag_id(_spec.tenant)):  # a task process builds its own DAG only (operators.dagfile)
        globals()[probe_dag_id(_spec.tenant)] = build_probe(_spec)
