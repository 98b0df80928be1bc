"""Slurm's job states, what each means for the pipeline, and the sentence a person reads about it.

:func:`classify` maps a state to keep polling / succeed / fail / not know: a job found nowhere is
UNKNOWN, never success, and ``COMPLETING`` is still active (``docs/failure-modes.md``, sections 2
and 5). :func:`describe` and :func:`failure_message` say what happened and what to do next.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Literal

from .resources import Resources

__all__ = [
    "ACTIVE_STATES",
    "FAILED_STATES",
    "OOM_LOG_HINTS",
    "Classification",
    "JobState",
    "classify",
    "describe",
    "failure_message",
]


class JobState(enum.StrEnum):
    """Slurm job states (long names, as ``squeue %T`` and ``sacct State`` print them) plus ours."""

    BOOT_FAIL = "BOOT_FAIL"
    CANCELLED = "CANCELLED"
    COMPLETED = "COMPLETED"
    COMPLETING = "COMPLETING"
    CONFIGURING = "CONFIGURING"
    DEADLINE = "DEADLINE"
    FAILED = "FAILED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PENDING = "PENDING"
    PREEMPTED = "PREEMPTED"
    REQUEUED = "REQUEUED"
    REQUEUE_FED = "REQUEUE_FED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    RESIZING = "RESIZING"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    REVOKED = "REVOKED"
    RUNNING = "RUNNING"
    SIGNALING = "SIGNALING"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    STAGE_OUT = "STAGE_OUT"
    STOPPED = "STOPPED"
    SUSPENDED = "SUSPENDED"
    TIMEOUT = "TIMEOUT"
    #: Ours: the state text was not recognised, or the job was found nowhere.
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, raw: str | JobState | None) -> JobState:
        """Parse ``CANCELLED by 1000``, ``CANCELLED+`` (fixed-width truncation), short codes."""
        if isinstance(raw, JobState):
            return raw
        text = (raw or "").strip().split(" ", 1)[0].rstrip("+").upper()
        if text in cls.__members__:
            return cls[text]
        return _SHORT_CODES.get(text, cls.UNKNOWN)


# squeue's %t codes, in case a site's wrapper prints them.
_SHORT_CODES: dict[str, JobState] = {
    "BF": JobState.BOOT_FAIL,
    "CA": JobState.CANCELLED,
    "CD": JobState.COMPLETED,
    "CF": JobState.CONFIGURING,
    "CG": JobState.COMPLETING,
    "DL": JobState.DEADLINE,
    "F": JobState.FAILED,
    "NF": JobState.NODE_FAIL,
    "OOM": JobState.OUT_OF_MEMORY,
    "PD": JobState.PENDING,
    "PR": JobState.PREEMPTED,
    "R": JobState.RUNNING,
    "RD": JobState.RESV_DEL_HOLD,
    "RF": JobState.REQUEUE_FED,
    "RH": JobState.REQUEUE_HOLD,
    "RQ": JobState.REQUEUED,
    "RS": JobState.RESIZING,
    "RV": JobState.REVOKED,
    "SI": JobState.SIGNALING,
    "SE": JobState.SPECIAL_EXIT,
    "SO": JobState.STAGE_OUT,
    "ST": JobState.STOPPED,
    "S": JobState.SUSPENDED,
    "TO": JobState.TIMEOUT,
}

#: Still going (or coming back): keep polling. COMPLETING is here on purpose (docs/failure-modes.md, 5):
#: the epilog is still running and outputs may not be flushed. REQUEUED/REQUEUE_* come back as
#: PENDING with the same id. SUSPENDED/STOPPED/held states need a person but are not finished.
ACTIVE_STATES: frozenset[JobState] = frozenset(
    {
        JobState.PENDING,
        JobState.CONFIGURING,
        JobState.RUNNING,
        JobState.COMPLETING,
        JobState.SUSPENDED,
        JobState.STOPPED,
        JobState.SIGNALING,
        JobState.STAGE_OUT,
        JobState.RESIZING,
        JobState.REQUEUED,
        JobState.REQUEUE_FED,
        JobState.REQUEUE_HOLD,
        JobState.RESV_DEL_HOLD,
        JobState.SPECIAL_EXIT,
    }
)
#: Finished without success. PREEMPTED is final once the job has left squeue: with requeue the
#: job would be PENDING again under the same id, which the poller sees first.
FAILED_STATES: frozenset[JobState] = frozenset(
    {
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
        JobState.REVOKED,
    }
)

Classification = Literal["active", "succeeded", "failed", "unknown"]


def classify(state: str | JobState) -> Classification:
    """Map a Slurm state to what the pipeline does next: keep polling, succeed, fail, or not know."""
    parsed = JobState.parse(state)
    if parsed is JobState.COMPLETED:
        return "succeeded"
    if parsed in ACTIVE_STATES:
        return "active"
    if parsed in FAILED_STATES:
        return "failed"
    return "unknown"


_DESCRIPTIONS: dict[JobState, str] = {
    JobState.PENDING: "is waiting in the queue{reason}. Nothing to do unless it waits longer than "
    "expected; a reason like 'AssocGrpCpuLimit' or 'QOSMaxJobsPerUserLimit' means the tenant's "
    "account is at its limit, 'ReqNodeNotAvail' means the nodes are down or reserved",
    JobState.CONFIGURING: "has nodes allocated and is booting them{reason}",
    JobState.RUNNING: "is running",
    JobState.COMPLETING: "has finished its script and Slurm is running the epilog; "
    "its outputs are not final yet",
    JobState.SUSPENDED: "was suspended by an administrator or a preemption rule{reason}; "
    "ask the HPC admins to resume it (scontrol resume {job_id})",
    JobState.STOPPED: "was stopped (SIGSTOP){reason}; it keeps its allocation; ask the HPC admins",
    JobState.SIGNALING: "is being signalled",
    JobState.STAGE_OUT: "is staging out data",
    JobState.RESIZING: "is changing size",
    JobState.REQUEUED: "was requeued and will start again from the beginning under the same id",
    JobState.REQUEUE_FED: "was requeued by the federation",
    JobState.REQUEUE_HOLD: "was requeued and is held; release it with 'scontrol release {job_id}' "
    "or cancel the task",
    JobState.RESV_DEL_HOLD: "is held because its reservation was deleted; release it with "
    "'scontrol release {job_id}' or cancel the task",
    JobState.SPECIAL_EXIT: "is held in SPECIAL_EXIT after a special exit code; release or cancel it",
    JobState.COMPLETED: "completed successfully (exit code 0)",
    JobState.FAILED: "failed: the training script exited with code {exit_code}. The last lines of "
    "the job log below say why; fix the data or hyperparameters and trigger a new run",
    JobState.CANCELLED: "was cancelled{by}. If nobody meant to, check with the HPC admins "
    "(maintenance, account limits); clear the task to submit it again",
    JobState.TIMEOUT: "hit its time limit{limit}. Raise resources.time_limit_minutes (up to the "
    "tenant's limit), or reduce epochs or data",
    JobState.OUT_OF_MEMORY: "ran out of memory{mem}. Raise resources.mem_gb (up to the tenant's "
    "limit) or reduce batch_size/hidden_units",
    JobState.NODE_FAIL: "was killed because its node failed. This is the cluster's fault, not the "
    "job's: retry the task; tell the HPC admins if it repeats",
    JobState.PREEMPTED: "was preempted by a higher-priority job and not requeued. Retry the task, "
    "or use a partition/QOS without preemption",
    JobState.BOOT_FAIL: "could not start because its node failed to boot. Retry the task; tell the "
    "HPC admins if it repeats",
    JobState.DEADLINE: "was removed because it could not finish before its deadline; resubmit "
    "with a shorter time limit or later deadline",
    JobState.REVOKED: "was revoked (a sibling cluster of the federation ran it)",
    JobState.UNKNOWN: "is in an unknown state{raw}: neither squeue nor sacct reports it. Check "
    "'sacct -j {job_id} -D' on the cluster and that slurmdbd is up; the task did NOT succeed",
}


def describe(
    state: str | JobState,
    *,
    job_id: str | None = None,
    reason: str | None = None,
    exit_code: int | None = None,
    signal: int | None = None,
    resources: Resources | Mapping[str, Any] | None = None,
    expected_start: str | None = None,
) -> str:
    """Return an operator-actionable sentence for ``state``: what happened and what to do next.

    :param state: raw Slurm text (``CANCELLED by 0``) or a :class:`JobState`.
    :param job_id: shown in the message and in suggested commands.
    :param reason: squeue's ``%r`` / sacct's ``Reason`` (``Resources``, ``Priority``...).
    :param exit_code: the script's exit code (sacct ``ExitCode`` before the colon).
    :param signal: the signal that ended it (after the colon).
    :param resources: the job's resources, to name the limit it hit.
    :param expected_start: squeue's estimate of a pending job's start (``%S``).
    """
    parsed = JobState.parse(state)
    raw = state if isinstance(state, str) else str(state)
    res = resources.as_dict() if isinstance(resources, Resources) else dict(resources or {})
    by = ""
    if parsed is JobState.CANCELLED and " by " in raw:
        by = f" by uid {raw.split(' by ', 1)[1].strip()}"
    fields = {
        "job_id": job_id or "?",
        "reason": f" (reason: {reason})" if reason and reason not in ("None", "(null)") else "",
        "exit_code": exit_code if exit_code is not None else "?",
        "by": by,
        "limit": f" of {res['time_limit_minutes']} min" if res.get("time_limit_minutes") else "",
        "mem": f" ({res['mem_gb']} GB per node)" if res.get("mem_gb") else "",
        "raw": f" ({raw.strip()!r})" if parsed is JobState.UNKNOWN and raw.strip() else "",
    }
    text = _DESCRIPTIONS[parsed].format(**fields)
    if parsed is JobState.PENDING and reason and "held" in reason.lower():
        text += f"; it is HELD and will not start until released: 'scontrol release {job_id or '?'}' (or cancel the task)"
    if parsed is JobState.PENDING and expected_start and expected_start not in ("N/A", "Unknown", "None"):
        text += f" [expected start: {expected_start}]"
    if signal and parsed in FAILED_STATES:
        text += f" [killed by signal {signal}]"
    return f"Slurm job {job_id or '?'} {text}."


#: What Slurm writes into a job's log when it kills a step for exceeding ``--mem`` without cgroups
#: (jobacct_gather's OverMemoryKill), and what the kernel's or CUDA's OOM killer leave behind.
OOM_LOG_HINTS = ("exceeded job memory limit", "exceeded step memory limit", "oom-kill", "out of memory")


def failure_message(
    state: str | JobState,
    *,
    job_id: str,
    log_tail: str = "",
    message: str | None = None,
    exit_code: int | None = None,
    signal: int | None = None,
    reason: str | None = None,
    resources: Resources | Mapping[str, Any] | None = None,
) -> str:
    """The operator-facing message of a job that did not succeed.

    The worker knows the job's resources (the trigger does not), so the limit that was hit is
    named. Where cgroups are not available Slurm ends an over-memory job as FAILED (signal 9) and
    says so only in the log; such a job is reported as OUT_OF_MEMORY, with the advice that goes
    with it. A job found nowhere keeps the watcher's own message (it says how long it looked).
    """
    parsed = JobState.parse(state)
    if parsed in (JobState.FAILED, JobState.CANCELLED, JobState.OUT_OF_MEMORY) and any(
        hint in log_tail.lower() for hint in OOM_LOG_HINTS
    ):
        return describe(JobState.OUT_OF_MEMORY, job_id=job_id, resources=resources)
    if parsed is JobState.UNKNOWN and message:
        return message
    return describe(state, job_id=job_id, exit_code=exit_code, signal=signal, reason=reason, resources=resources)

