"""A tenant's remaining allocation, as Slurm reports it, and the decision to submit or not.

Onboarding sets the allocation as ``GrpTRESMins`` on the tenant's account
(:mod:`aifactory.platform.slurm_accounts`); with ``PriorityDecayHalfLife=0`` and
``PriorityUsageResetPeriod=NONE`` the usage never decays. Slurm itself holds a job past the budget
(``AccountingStorageEnforce=...,safe``: it stays PENDING with reason ``AssocGrpCPUMinutesLimit``
and never starts; sbatch accepts it). A run must not wait forever on that, so the train task asks
first and fails, before any submission, naming what is used, what remains, what the job asks for
and whom to ask.

The figures come from ``scontrol -o show assoc_mgr accounts=<account> flags=assoc``: the account's
own association (``UserName=`` empty) carries ``GrpTRESMins=cpu=<limit>(<used>),...`` (``N``: no
limit) and ``GrpTRESRunMins=cpu=N(<held>)``, the minutes that running jobs still hold. Slurm starts
a job only if ``used + held + request <= limit``; so does :func:`decide_budget`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aifactory.errors import FactoryError

from .resources import tasks_per_node

__all__ = [
    "GPU_TRES",
    "Budget",
    "BudgetVerdict",
    "TresBudget",
    "budget_command",
    "decide_budget",
    "job_request_minutes",
    "parse_assoc_mgr",
]

GPU_TRES = "gres/gpu"
#: the TRES a tenant's allocation budgets, with the unit shown in messages
_UNITS = {"cpu": "CPU", GPU_TRES: "GPU"}


class BudgetUnknown(FactoryError):
    """Slurm's answer does not say what the account may still use."""


@dataclass(frozen=True)
class TresBudget:
    """One TRES of an account's budget, in TRES-minutes."""

    tres: str
    #: None: Slurm enforces no limit on this TRES for the account
    limit: int | None
    used: float
    #: minutes that the account's running jobs still hold (GrpTRESRunMins usage)
    held: float = 0.0

    @property
    def remaining(self) -> float | None:
        return None if self.limit is None else max(0.0, self.limit - self.used - self.held)


@dataclass(frozen=True)
class Budget:
    account: str
    tres: Mapping[str, TresBudget]

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account,
                "tres": {k: {"limit_minutes": t.limit, "used_minutes": round(t.used, 3),
                             "held_minutes": round(t.held, 3),
                             "remaining_minutes": None if t.remaining is None else round(t.remaining, 3)}
                         for k, t in sorted(self.tres.items())}}


@dataclass(frozen=True)
class BudgetVerdict:
    enough: bool
    #: what was decided and why, with the figures (the refusal's text when not enough)
    message: str
    request: Mapping[str, int]
    budget: Budget | None = None


def budget_command(account: str) -> str:
    """Slurm's live view of the account's limits and usage (readable by every user)."""
    return f"scontrol -o show assoc_mgr accounts={shlex.quote(account)} flags=assoc"


_TRES_ITEM = re.compile(r"([a-z][a-z0-9/:_.-]*)=(N|[0-9]+)\(([0-9.]+)\)")


def _tres_field(line: str, field: str) -> dict[str, tuple[int | None, float]]:
    match = re.search(rf"(?:^|\s){field}=(\S*)", line)
    if match is None:
        return {}
    return {name: (None if limit == "N" else int(limit), float(used))
            for name, limit, used in _TRES_ITEM.findall(match.group(1))}


def parse_assoc_mgr(text: str, account: str) -> Budget:
    """The account association's budget from ``scontrol -o show assoc_mgr ... flags=assoc``.

    :raises BudgetUnknown: no line for the account's own association (not onboarded, or Slurm
        answered something else).
    """
    for line in (text or "").splitlines():
        if f" Account={account} " not in f" {line} " or not re.search(r"(?:^|\s)UserName=(\s|$)", line):
            continue
        mins, run = _tres_field(line, "GrpTRESMins"), _tres_field(line, "GrpTRESRunMins")
        if not mins:
            break
        return Budget(account, {name: TresBudget(name, limit, used, run.get(name, (None, 0.0))[1])
                                for name, (limit, used) in mins.items()})
    raise BudgetUnknown(f"Slurm reports no association for account {account!r} with GrpTRESMins; "
                        "is the tenant onboarded (make onboard)?")


def job_request_minutes(resources: Mapping[str, Any]) -> dict[str, int]:
    """TRES-minutes one job may use: nodes x tasks per node x cpus_per_task x time limit (CPUs), and
    nodes x gpus_per_node x time limit (GPUs)."""
    nodes = int(resources.get("nodes", 1))
    minutes = int(resources.get("time_limit_minutes", 0))
    request = {"cpu": nodes * tasks_per_node(resources) * int(resources.get("cpus_per_task", 1)) * minutes}
    gpus = nodes * int(resources.get("gpus_per_node", 0) or 0)
    if gpus:
        request[GPU_TRES] = gpus * minutes
    return request


def _describe_request(resources: Mapping[str, Any], request: Mapping[str, int]) -> str:
    gpus, cpus = resources.get("gpus_per_node"), resources.get("cpus_per_task", 1)
    gpu = " ".join(filter(None, [str(gpus), resources.get("gpu_type"), "GPU(s)"]))
    shape = (f"{resources.get('nodes', 1)} node(s) x "
             + (f"{gpu} (one rank each, {cpus} CPU(s) per rank)" if gpus else f"{cpus} CPU(s)")
             + f" x {resources.get('time_limit_minutes')} min")
    amounts = ", ".join(f"{v} {_UNITS.get(k, k)}-minutes" for k, v in request.items())
    return f"{shape} = {amounts}"


def _fmt(minutes: float) -> str:
    return f"{minutes:.0f}" if float(minutes).is_integer() else f"{minutes:.1f}"


def decide_budget(budget: Budget | None, resources: Mapping[str, Any], *, account: str, contact: str,
                  why_unknown: str = "") -> BudgetVerdict:
    """Enough budget for this job, or a refusal with the figures and whom to ask.

    ``budget`` None means Slurm could not answer: refused, like the engine's other decisions
    (submitting blind would leave a job pending forever).
    """
    request = job_request_minutes(resources)
    asked = _describe_request(resources, request)
    if budget is None:
        return BudgetVerdict(False, f"Not submitting: Slurm did not say what account {account!r} may still use"
                                    f"{' (' + why_unknown + ')' if why_unknown else ''}; the job asks for {asked}. "
                                    "Retry when Slurm answers; ask " + contact + " if it persists", request)
    short, figures = [], []
    for tres, wanted in request.items():
        unit = _UNITS.get(tres, tres)
        have = budget.tres.get(tres)
        if have is None:
            if wanted:
                return BudgetVerdict(False, f"Not submitting: Slurm does not account {tres} for account "
                                            f"{account!r}, so its budget cannot be checked; the job asks for "
                                            f"{asked}. Ask {contact}", request, budget)
            continue
        if have.remaining is None:
            figures.append(f"{unit}: used {_fmt(have.used)} min, no limit")
            continue
        figures.append(f"{unit}: used {_fmt(have.used)} of {have.limit} min, running jobs hold {_fmt(have.held)}, "
                       f"remaining {_fmt(have.remaining)}")
        if wanted > have.remaining:
            short.append(unit)
    text = "; ".join(figures)
    if short:
        return BudgetVerdict(False, f"Not submitting: account {account!r} has not enough {'/'.join(short)} "
                                    f"allocation left for this job ({text}); the job asks for {asked}. Ask "
                                    f"{contact} for more allocation, or ask for fewer nodes/CPUs or a shorter "
                                    "time limit", request, budget)
    return BudgetVerdict(True, f"budget of account {account!r} is enough ({text}); the job asks for {asked}",
                         request, budget)
