"""The orphan sweep: cancel factory jobs whose Airflow task has ended.

A deferred task marked failed is cancelled by its trigger's ``on_kill``, but only once the
triggerer runs that trigger. Marked in the seconds before (or with the triggerer down), nothing is
there to call, and the job would burn the tenant's allocation to the end (``docs/failure-modes.md``,
section 8). The sweep closes that gap from the other side: it lists the active jobs of the
cluster's tenant accounts (each tenant's jobs run as its own Unix user; the platform's service login,
a Slurm operator, reads and cancels them), ties each one back to its task instance, and cancels
those whose task has ENDED.

Safety, in order:

* only jobs named ``aifp-<tenant>-<hash>`` whose ``--comment`` (``aifp:tenant=..,dag=..,run=..,
  task=..,map=..``) hashes back to exactly that name: a job of anyone else, or a comment that
  was changed or shortened, is never touched;
* only when the job runs under that tenant's own Slurm account AND Unix user: a job another
  tenant named and commented after a task of this one is not this tenant's;
* only task instances Airflow reports in an ended state (:data:`ENDED`). A task queued, running,
  deferred, up for retry or just cleared will (re)attach to its job by name, so it is left alone;
  so is a run this Airflow does not know (another deployment may share the service account).

No Airflow here: :mod:`operators.sweep` adapts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aifactory.errors import InputError
from aifactory.hpc.slurm import job_name
from aifactory.hpc.slurm.checks import check_accounts
from aifactory.layout import JOB_COMMENT_PREFIX, JOB_NAME_RE

#: Task states after which nobody will come back for the job (``success`` included: a task a user
#: marked successful by hand does not want its job any more).
ENDED = frozenset({"failed", "upstream_failed", "success", "skipped", "removed"})
#: squeue fields of the sweep: id, name, state, account, user, and ``%k`` the job's comment (last:
#: it is the only free text)
SWEEP_FORMAT = "%i|%j|%T|%a|%u|%k"


@dataclass(frozen=True)
class ActiveJob:
    job_id: str
    name: str
    state: str
    account: str
    user: str
    comment: str


@dataclass(frozen=True)
class TenantIdentity:
    """Who a tenant's jobs must run as: its Slurm account and its Unix user."""

    account: str
    user: str


@dataclass(frozen=True)
class JobOwner:
    """The task instance a job belongs to, as its comment says and its name proves."""

    tenant: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int

    @property
    def state_key(self) -> str:
        """The key of this task in Airflow's ``get_task_states`` answer."""
        return self.task_id if self.map_index < 0 else f"{self.task_id}_{self.map_index}"


@dataclass(frozen=True)
class Verdict:
    job: ActiveJob
    owner: JobOwner | None
    task_state: str | None
    cancel: bool
    why: str


def sweep_command(accounts: Iterable[str]) -> str:
    """The active jobs of the cluster's tenant accounts, with account, user and comment."""
    import shlex

    names = sorted(set(accounts))
    if not names:
        raise InputError("the sweep needs at least one tenant account on the cluster; onboard a tenant first")
    names = check_accounts(names)
    args = ["squeue", f"--accounts={','.join(names)}", "--noheader", f"--format={SWEEP_FORMAT}"]
    return " ".join(shlex.quote(a) for a in args)


def parse_active_jobs(out: str) -> list[ActiveJob]:
    jobs = []
    for line in out.splitlines():
        parts = line.strip().split("|", 5)
        if len(parts) == 6 and parts[0].strip():
            jobs.append(ActiveJob(*(p.strip() for p in parts)))
    return jobs


def owner_of(job: ActiveJob, tenants: Mapping[str, TenantIdentity]) -> JobOwner | None:
    """The task instance of a factory job, or ``None`` when the job is not provably ours: its name
    and comment must agree, and it must run as the named tenant's account and user."""
    if not JOB_NAME_RE.fullmatch(job.name) or not job.comment.startswith(JOB_COMMENT_PREFIX):
        return None
    fields: dict[str, str] = {}
    for part in job.comment[len(JOB_COMMENT_PREFIX):].split(","):
        key, sep, value = part.partition("=")
        if sep:
            fields[key] = value
    try:
        owner = JobOwner(
            tenant=fields["tenant"], dag_id=fields["dag"], run_id=fields["run"], task_id=fields["task"],
            map_index=int(fields["map"]),
        )
        expected = job_name(owner.tenant, owner.dag_id, owner.run_id, owner.task_id, owner.map_index)
    except (KeyError, ValueError, InputError):  # a malformed comment proves nothing
        return None
    if expected != job.name:
        return None
    identity = tenants.get(owner.tenant)
    if identity is None or (job.account, job.user) != (identity.account, identity.user):
        return None
    return owner


def judge(
    jobs: Iterable[ActiveJob],
    task_states: Mapping[str, Mapping[str, Mapping[str, Any]]],
    tenants: Mapping[str, TenantIdentity],
) -> list[Verdict]:
    """Decide for each active job. ``task_states[dag_id][run_id][state_key]`` is Airflow's answer
    (missing keys: Airflow does not know that run or task); ``tenants`` says whom each tenant's
    jobs run as."""
    verdicts = []
    for job in jobs:
        owner = owner_of(job, tenants)
        if owner is None:
            verdicts.append(Verdict(job, None, None, False,
                                    "not a factory job (name, comment, account and user do not all match)"))
            continue
        runs = task_states.get(owner.dag_id, {})
        if owner.run_id not in runs or owner.state_key not in runs[owner.run_id]:
            verdicts.append(Verdict(job, owner, None, False, "this Airflow does not know the run; left alone"))
            continue
        state = runs[owner.run_id][owner.state_key]
        state = None if state is None else str(state)
        if state in ENDED:
            verdicts.append(Verdict(job, owner, state, True, f"its task is {state}"))
        else:
            verdicts.append(Verdict(job, owner, state, False, f"its task is {state or 'cleared'}: it (re)attaches"))
    return verdicts
