"""A tenant's usage report: its allocation, what Slurm says is used and remains, and one row per job.

The figures of record are Slurm's own (:mod:`aifactory.hpc.slurm.budget`: the account's
``GrpTRESMins`` limit and usage, which Slurm enforces); the rows come from ``sacct`` for the
account (AllocTRES x Elapsed, as in the train task's result and the model card), so an engineer
can see which runs spent the budget. Building the report is pure; the platform's usage endpoint
(``GET /aifactory/usage``) gathers the two answers over the service identity's SSH connection.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from .accounting import accounting
from .budget import GPU_TRES, Budget
from .checks import check_accounts, check_since
from .commands import SACCT_FIELDS
from .parsing import SacctRecord

__all__ = ["sacct_account_command", "usage_report"]


def sacct_account_command(account: str, since: str) -> str:
    """``sacct`` for every job of one account submitted since ``since`` (allocations only, ``-X``)."""
    [account] = check_accounts([account])
    check_since(since)
    return " ".join(shlex.quote(a) for a in [
        "sacct", "--parsable2", "-X", "--noheader", "--allusers", f"--accounts={account}",
        f"--starttime={since}", f"--format={','.join(SACCT_FIELDS)}",
    ])


def usage_report(*, tenant: str, account: str, cpu_hours: int, gpu_hours: int, contact: str,
                 budget: Budget | None, records: Sequence[SacctRecord] | None,
                 errors: Sequence[str] = ()) -> dict[str, Any]:
    """The report (JSON-native). ``budget`` / ``records`` None: Slurm did not answer; ``errors`` says why."""
    runs = []
    for record in records or ():
        if record.account != account:
            continue
        use = accounting(record)
        runs.append({k: use[k] for k in ("job_id", "state", "elapsed_s", "cpu_minutes", "gpu_minutes",
                                         "nodes", "submit", "start", "end")} | {"job_name": record.name})
    runs.sort(key=lambda r: (str(r["submit"]), str(r["job_id"])))
    limits: dict[str, Any] = {}
    if budget is not None:
        for key, tres in (("cpu", "cpu"), ("gpu", GPU_TRES)):
            if tres in budget.tres:
                t = budget.tres[tres]
                limits[key] = {"limit_minutes": t.limit, "used_minutes": round(t.used, 3),
                               "held_by_running_minutes": round(t.held, 3),
                               "remaining_minutes": None if t.remaining is None else round(t.remaining, 3)}
    return {
        "tenant": tenant,
        "account": account,
        "contact": contact,
        "allocation": {"cpu_hours": cpu_hours, "gpu_hours": gpu_hours,
                       "cpu_minutes": cpu_hours * 60, "gpu_minutes": gpu_hours * 60},
        # what Slurm enforces (None: it did not answer)
        "budget": limits if budget is not None else None,
        # the sum of the rows below (jobs of this account in the report's window)
        "runs_total": {"jobs": len(runs),
                       "cpu_minutes": round(sum(r["cpu_minutes"] for r in runs), 3),
                       "gpu_minutes": round(sum(r["gpu_minutes"] for r in runs), 3)},
        "runs": runs if records is not None else None,
        "errors": list(errors),
    }
