"""The Slurm engine's pure half: no network, no Airflow, unit-tested in milliseconds.

The operator (``operators/slurm.py``) and the trigger (``operators/triggers.py``) build every
shell string they send, read every answer from Slurm, and take every decision about a job with
these modules. Where to look:

========================  =========================================================================
``identity``              the job's deterministic name, its ``--comment``, its log path
``resources``             the tenant's bounds (:class:`TenantSlurmPolicy`), :class:`Resources`, sbatch options
``commands``              sbatch, squeue, sacct, scancel, log reads; one poll command for many jobs
``states``                Slurm states, :func:`classify`, :func:`describe`, :func:`failure_message`
``parsing``               squeue/sacct/sbatch/poll output parsing
``accounting``            elapsed, TRES, CPU- and GPU-hours of a finished job
``checks``                argument checks shared by all of the above
``plan``                  :func:`plan_job`: everything a submission needs, fixed before any side effect
``decision``              :func:`decide_prior_job`: what to do about an earlier try's job (a table)
========================  =========================================================================

The failure modes these rules answer are described in ``docs/failure-modes.md``.
"""

from __future__ import annotations

from .accounting import accounting, parse_elapsed, parse_tres
from .checks import JOB_ID_RE, SLURM_NAME_RE, SlurmError
from .commands import (
    SACCT_FIELDS,
    SQUEUE_FIELDS,
    SQUEUE_FORMAT,
    build_sbatch_command,
    poll_command,
    read_log_command,
    sacct_by_name_command,
    sacct_command,
    scancel_command,
    squeue_by_name_command,
    squeue_command,
)
from .decision import Action, Decision, PriorJobFacts, decide_prior_job
from .identity import job_comment, job_name, log_path
from .parsing import (
    JobObservation,
    PollResult,
    SacctRecord,
    SqueueRecord,
    SubmitResult,
    is_transient_slurm_error,
    parse_poll_output,
    parse_sacct,
    parse_sbatch_output,
    parse_squeue,
    select_record,
)
from .plan import JobPlan, TaskIds, plan_job, tenant_ssh_conn_id
from .resources import Resources, TenantSlurmPolicy, sbatch_argv
from .states import ACTIVE_STATES, FAILED_STATES, OOM_LOG_HINTS, JobState, classify, describe, failure_message

__all__ = [
    "ACTIVE_STATES",
    "Action",
    "Decision",
    "JobPlan",
    "PriorJobFacts",
    "TaskIds",
    "decide_prior_job",
    "plan_job",
    "tenant_ssh_conn_id",
    "FAILED_STATES",
    "JOB_ID_RE",
    "OOM_LOG_HINTS",
    "SACCT_FIELDS",
    "SLURM_NAME_RE",
    "SQUEUE_FIELDS",
    "SQUEUE_FORMAT",
    "JobObservation",
    "JobState",
    "PollResult",
    "Resources",
    "SacctRecord",
    "SlurmError",
    "SqueueRecord",
    "SubmitResult",
    "TenantSlurmPolicy",
    "accounting",
    "build_sbatch_command",
    "classify",
    "describe",
    "failure_message",
    "is_transient_slurm_error",
    "job_comment",
    "job_name",
    "log_path",
    "parse_elapsed",
    "parse_poll_output",
    "parse_sacct",
    "parse_sbatch_output",
    "parse_squeue",
    "parse_tres",
    "poll_command",
    "read_log_command",
    "sacct_by_name_command",
    "sacct_command",
    "sbatch_argv",
    "scancel_command",
    "select_record",
    "squeue_by_name_command",
    "squeue_command",
]
