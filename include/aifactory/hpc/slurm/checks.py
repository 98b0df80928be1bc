"""The checks every Slurm command argument passes before it reaches a shell.

A job id, a job name, a remote path or an ``sbatch`` option value is checked here, in one place,
whichever module builds the command: nothing that a user chose becomes shell text unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from aifactory.errors import FactoryError, InputError
from aifactory.layout import JOB_NAME_RE

__all__ = [
    "EXPORT_KEY_RE",
    "EXPORT_VALUE_RE",
    "JOB_ID_RE",
    "MAX_ARG_LEN",
    "REMOTE_PATH_RE",
    "SINCE_RE",
    "SLURM_NAME_RE",
    "SlurmError",
    "check_accounts",
    "check_job_ids",
    "check_job_names",
    "check_remote_path",
    "check_since",
]


class SlurmError(FactoryError):
    """Slurm answered something we cannot use (unparseable output, a refused submission).

    Unlike :class:`~aifactory.errors.InputError` this is the platform's to look at, not the user's.
    """


#: Partition, account and QOS names (Slurm allows more, we allow what our tenant specs use).
SLURM_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
#: Job ids we accept back from Slurm: plain, or an array element ``123_4``.
JOB_ID_RE = re.compile(r"^[0-9]{1,12}(?:_[0-9]{1,9})?$")
#: Remote paths we put on an sbatch command line. ``%`` is excluded because sbatch expands
#: ``%j``-style patterns in ``--output``; ``,`` because it separates ``--export`` items;
#: whitespace and quotes so that a path never needs quoting in a log line a person copies.
REMOTE_PATH_RE = re.compile(r"^/[A-Za-z0-9_./+-]{0,1023}$")
#: ``--export`` keys and values. No comma (the separator), no ``=`` in keys, no whitespace.
EXPORT_KEY_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
EXPORT_VALUE_RE = re.compile(r"^[A-Za-z0-9_./:@+-]{0,1024}$")
#: ``sacct -S`` values: ``now-<n><unit>`` or an ISO date/time (the controller's local time).
SINCE_RE = re.compile(
    r"^(?:now(?:-[0-9]{1,6}(?:seconds|minutes|hours|days|weeks))?"
    r"|[0-9]{4}-[0-9]{2}-[0-9]{2}(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2})?)?)$"
)
#: Longest argv element we hand to sbatch; anything longer is an attack or a bug.
MAX_ARG_LEN = 4096


def check_remote_path(value: str, what: str) -> str:
    if not isinstance(value, str) or not REMOTE_PATH_RE.fullmatch(value):
        raise InputError(
            f"{what} {value!r:.80} is not an absolute path made of letters, digits and '_./+-' "
            "(no spaces, '%', ',' or quotes); fix the cluster spec or the run key"
        )
    if any(part == ".." for part in value.split("/")):
        raise InputError(f"{what} {value!r:.80} contains '..'; paths must not leave their root")
    return value


def _check_each(values: Iterable[str], pattern: re.Pattern[str], what: str, rule: str) -> list[str]:
    """Every value must match ``pattern``; order kept, duplicates dropped (the list is also a
    squeue/sacct/scancel argument)."""
    out = [str(v) for v in values]
    if not out:
        raise ValueError(f"at least one {what} is required")
    for v in out:
        if not pattern.fullmatch(v):
            raise InputError(f"{what} {v!r:.60} {rule}")
    return list(dict.fromkeys(out))


def check_job_ids(job_ids: Iterable[str]) -> list[str]:
    return _check_each(job_ids, JOB_ID_RE, "job id", "is not a Slurm job id (digits, optionally _<index>)")


def check_job_names(names: Iterable[str]) -> list[str]:
    return _check_each(names, JOB_NAME_RE, "job name", "was not made by aifactory.hpc.slurm.job_name()")


def check_accounts(accounts: Iterable[str]) -> list[str]:
    return _check_each(accounts, SLURM_NAME_RE, "Slurm account", f"must match {SLURM_NAME_RE.pattern}")


def check_since(since: str) -> str:
    """A ``sacct --starttime`` value (:data:`SINCE_RE`)."""
    if not isinstance(since, str) or not SINCE_RE.fullmatch(since):
        raise InputError(f"sacct start time {since!r:.40} must be 'now-<n><unit>' or an ISO date")
    return since
