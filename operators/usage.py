"""A tenant's usage report, gathered over the platform's service identity (``GET /aifactory/usage``).

Thin adapter: asks Slurm (``scontrol show assoc_mgr`` for the enforced budget, ``sacct`` for the
account's jobs) over the cluster spec's service connection, which is an Operator in Slurm and
therefore sees every account, and builds the report with
:func:`aifactory.hpc.slurm.usage.usage_report`. A Slurm that does not answer gives a report whose
``budget`` / ``runs`` are None and whose ``errors`` say why, never an invented zero.
"""

from __future__ import annotations

from typing import Any

from aifactory.hpc.slurm import parse_sacct
from aifactory.hpc.slurm.budget import BudgetUnknown, budget_command, parse_assoc_mgr
from aifactory.hpc.slurm.usage import sacct_account_command, usage_report
from aifactory.tenants import load_cluster
from aifactory.tenants.spec import TenantSpec

__all__ = ["tenant_usage"]

#: the report's rows start here: a budget never resets (PriorityUsageResetPeriod=NONE)
DEFAULT_SINCE = "2000-01-01"


def tenant_usage(spec: TenantSpec, *, since: str = DEFAULT_SINCE, hook: Any = None) -> dict[str, Any]:
    """The usage report of one tenant (see :func:`~aifactory.hpc.slurm.usage.usage_report`)."""
    from operators.hooks import FactorySSHHook

    account = spec.slurm_account
    command = sacct_account_command(account, since)  # checks ``since`` before any connection
    own_hook = hook is None
    hook = hook or FactorySSHHook(ssh_conn_id=load_cluster(spec.cluster).ssh_conn_id)
    errors: list[str] = []
    budget = records = None
    try:
        rc, out, err = hook.run(budget_command(account), timeout=60)
        if rc == 0:
            try:
                budget = parse_assoc_mgr(out, account)
            except BudgetUnknown as exc:
                errors.append(str(exc))
        else:
            errors.append(f"scontrol exited {rc}: {err.strip()[:300]}")
        rc, out, err = hook.run(command, timeout=120)
        if rc == 0:
            records = parse_sacct(out)
        else:
            errors.append(f"sacct exited {rc}: {err.strip()[:300]}")
    except Exception as exc:  # SSH trouble: the report says so instead of failing the endpoint
        errors.append(f"could not ask Slurm over {type(hook).__name__}: {type(exc).__name__}: {exc}")
    finally:
        if own_hook:
            hook.close()
    allocation = spec.allocation
    return usage_report(
        tenant=spec.tenant, account=account,
        cpu_hours=allocation.cpu_hours if allocation else 0, gpu_hours=allocation.gpu_hours if allocation else 0,
        contact=allocation.contact if allocation else "", budget=budget, records=records, errors=errors,
    )
