"""A job's durable identity: its deterministic name, its ``--comment`` and where its log is.

:func:`job_name` is a hash of (tenant, DAG, run, task, map index), so a retry whose worker died
between ``sbatch`` and saving the job id can still find the job with ``squeue``/``sacct --name``.
The orphan sweep (:mod:`aifactory.hpc.sweep`) proves a job's owner by hashing its comment back
to its name, so the comment's ``aifp:tenant=..,dag=..,run=..,task=..,map=..`` format is fixed.
The name rules themselves (``TENANT_RE``, ``JOB_NAME_RE``) live in :mod:`aifactory.layout`.
"""

from __future__ import annotations

import hashlib
import re

from aifactory.errors import InputError
from aifactory.layout import JOB_COMMENT_PREFIX, JOB_NAME_PREFIX, TENANT_RE, job_log_path

from .checks import check_job_ids, check_remote_path

__all__ = ["job_comment", "job_name", "log_path"]


def job_name(tenant: str, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """Return the deterministic Slurm job name of one task instance.

    ``aifp-<tenant>-<sha1[:12]>``: short (squeue's default column is narrow and names show up in
    every ``sacct`` line), Slurm-safe (the inputs - run ids carry ``:`` and ``+`` - are hashed),
    and stable across tries on purpose: a retry must find the job an earlier try submitted
    (``docs/failure-modes.md``, section 1). The try number goes into :func:`job_comment` instead.

    :param tenant: tenant name (validated: lower-case letters, digits, ``_``, ``-``).
    :param dag_id: the DAG id.
    :param run_id: the DAG run id.
    :param task_id: the task id.
    :param map_index: the map index (``-1`` when the task is not mapped).
    """
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise InputError(f"tenant {tenant!r:.40} must match {TENANT_RE.pattern}")
    # NUL separators make ("a", "bc") and ("ab", "c") hash differently.
    key = "\0".join([tenant, dag_id, run_id, task_id, str(int(map_index))])
    digest = hashlib.sha1(key.encode("utf-8"), usedforsecurity=False).hexdigest()[:12]
    return f"{JOB_NAME_PREFIX}{tenant}-{digest}"


_COMMENT_UNSAFE = re.compile(r"[^A-Za-z0-9_.:+=/@-]")


def job_comment(
    tenant: str, dag_id: str, run_id: str, task_id: str, map_index: int = -1, try_number: int | None = None
) -> str:
    """Return a human-readable ``--comment`` tying a Slurm job back to its Airflow task instance.

    Everything outside ``[A-Za-z0-9_.:+=/@-]`` becomes ``_`` and the result is capped, because the
    comment is stored by slurmdbd and shown to anyone running ``sacct -o Comment``. It carries no
    secrets: only ids Airflow shows in its UI anyway.
    """

    def clean(value: object) -> str:
        return _COMMENT_UNSAFE.sub("_", str(value))[:100]

    parts = [
        f"{JOB_COMMENT_PREFIX}tenant={clean(tenant)}",
        f"dag={clean(dag_id)}",
        f"run={clean(run_id)}",
        f"task={clean(task_id)}",
        f"map={int(map_index)}",
    ]
    if try_number is not None:
        parts.append(f"try={int(try_number)}")
    return ",".join(parts)[:500]


def log_path(run_dir: str, job_id: str) -> str:
    """The batch log of ``job_id`` in ``run_dir`` (sbatch writes it from ``--output=<run_dir>/slurm-%j.out``)."""
    check_remote_path(run_dir, "run dir")
    (job,) = check_job_ids([job_id])
    return job_log_path(run_dir, job)

