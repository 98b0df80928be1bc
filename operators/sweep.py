"""The orphan sweep as an Airflow operator (the rules live in :mod:`aifactory.hpc.sweep`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class SlurmSweepOperator(BaseOperator):
    """Cancel the factory's jobs on one cluster whose Airflow task has ended.

    One ``squeue --accounts=<the cluster's tenant accounts>`` over the cluster's service connection
    (a Slurm operator: tenants' jobs run as their own users), one task-state query per DAG that owns
    an active job, one ``scancel`` for all the jobs to cancel. Every decision is logged.

    :param cluster: cluster name (``include/clusters/<cluster>.yaml``).
    :param dry_run: log what would be cancelled, cancel nothing (also the run's ``dry_run`` param).
    """

    ui_color = "#fde8e8"

    def __init__(self, *, cluster: str, dry_run: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster = cluster
        self.dry_run = dry_run

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException

        from aifactory.hpc.slurm import scancel_command
        from aifactory.hpc.sweep import TenantIdentity, judge, owner_of, parse_active_jobs, sweep_command
        from aifactory.tenants import good_tenants, load_cluster
        from aifactory.text import printable
        from operators.hooks import FactorySSHHook

        dry_run = bool(self.dry_run or (context.get("params") or {}).get("dry_run", False))
        spec = load_cluster(self.cluster)
        tenants = {t.tenant: TenantIdentity(account=t.slurm_account, user=t.identity.unix_user)
                   for t in good_tenants() if t.cluster == self.cluster and t.identity is not None}
        hook = FactorySSHHook(ssh_conn_id=spec.ssh_conn_id)
        try:
            rc, out, err = hook.run(sweep_command(t.account for t in tenants.values()), timeout=60)
            if rc != 0:
                raise AirflowException(f"squeue on cluster {self.cluster} failed (exit {rc}): {err.strip()[-300:]}")
            jobs = parse_active_jobs(out)
            runs_by_dag: dict[str, set[str]] = {}
            for job in jobs:
                owner = owner_of(job, tenants)
                if owner is not None:
                    runs_by_dag.setdefault(owner.dag_id, set()).add(owner.run_id)
            ti = context["ti"]
            states = {
                dag_id: ti.get_task_states(dag_id=dag_id, run_ids=sorted(runs))
                for dag_id, runs in runs_by_dag.items()
            }
            verdicts = judge(jobs, states, tenants)
            for v in verdicts:
                who = f"{v.owner.dag_id}/{v.owner.run_id}/{v.owner.state_key}" if v.owner else "-"
                action = ("would cancel" if dry_run else "cancelling") if v.cancel else "keeping"
                # squeue's names, states and comments are whatever any user of the cluster submitted
                self.log.info("%s Slurm job %s (%s, %s, task %s): %s", action, printable(v.job.job_id),
                              printable(v.job.name), printable(v.job.state), printable(who), printable(v.why))
            cancel = [v.job.job_id for v in verdicts if v.cancel]
            if cancel and not dry_run:
                rc, out, err = hook.run(scancel_command(cancel), timeout=60)
                if rc != 0:
                    raise AirflowException(
                        f"scancel {' '.join(cancel)} failed (exit {rc}): {printable((err or out).strip()[-300:])}")
        finally:
            hook.close()
        self.log.info("sweep of %s: %d active job(s), %d of the factory, %d cancelled%s", self.cluster,
                      len(jobs), sum(v.owner is not None for v in verdicts), len(cancel),
                      " (dry run)" if dry_run else "")
        return {"active": len(jobs), "factory": sum(v.owner is not None for v in verdicts),
                "cancelled": [] if dry_run else cancel, "dry_run": dry_run}
