"""Every shell command the engine sends to the login node: sbatch, squeue, sacct, scancel, log reads.

All interpolated values are validated job ids, job names, constants or quoted paths. Queries take
lists of jobs, so one command per cluster and poll interval serves every watched job
(:func:`poll_command`: squeue for all of them, sacct only for those that left the queue, and each
job's new log bytes).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence

from aifactory.errors import InputError

from .checks import check_job_ids, check_job_names, check_remote_path, check_since
from .states import ACTIVE_STATES

__all__ = [
    "POLL_MARK",
    "SACCT_FIELDS",
    "SQUEUE_FIELDS",
    "SQUEUE_FORMAT",
    "build_sbatch_command",
    "poll_command",
    "read_log_command",
    "sacct_by_name_command",
    "sacct_command",
    "scancel_command",
    "squeue_by_name_command",
    "squeue_command",
]


def build_sbatch_command(argv: Sequence[str], script_path: str) -> str:
    """Join sbatch options and the script path into one shell command, quoting every element.

    ``--parsable`` makes sbatch print ``<job id>[;<cluster>]`` only (see :func:`parse_sbatch_output`).
    """
    check_remote_path(script_path, "script path")
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg or any(c in arg for c in "\n\r\0"):
            raise InputError(f"sbatch argument {arg!r:.60} is not a single --opt=value element")
    return " ".join(shlex.quote(a) for a in ["sbatch", "--parsable", *argv, script_path])


#: squeue fields, in order: id, name, long state, reason, time used, expected start (pending jobs).
SQUEUE_FIELDS: tuple[str, ...] = ("job_id", "name", "state", "reason", "time_used", "expected_start")
SQUEUE_FORMAT = "%i|%j|%T|%r|%M|%S"
#: sacct fields (``--parsable2 -X``: one line per job allocation, '|' separated, never truncated).
SACCT_FIELDS: tuple[str, ...] = (
    "JobID",
    "JobName",
    "Account",
    "Partition",
    "State",
    "ExitCode",
    "Elapsed",
    "AllocTRES",
    "NodeList",
    "Submit",
    "Start",
    "End",
    "Reason",
)


def squeue_command(job_ids: Iterable[str]) -> str:
    """``squeue`` for a list of jobs. ``--states=all`` so that jobs finished within MinJobAge show too."""
    ids = ",".join(check_job_ids(job_ids))
    return " ".join(
        shlex.quote(a)
        for a in ["squeue", "--noheader", "--states=all", f"--jobs={ids}", f"--format={SQUEUE_FORMAT}"]
    )


def sacct_command(job_ids: Iterable[str]) -> str:
    """``sacct`` for a list of jobs: the source of truth once a job has left squeue.

    No ``-S``: with ``--jobs`` sacct searches from the epoch, so recycled ids return several
    records; :func:`select_record` picks ours by name and submit time.
    """
    ids = ",".join(check_job_ids(job_ids))
    return " ".join(
        shlex.quote(a)
        for a in ["sacct", "--parsable2", "-X", "--noheader", f"--jobs={ids}", f"--format={','.join(SACCT_FIELDS)}"]
    )


def squeue_by_name_command(names: Iterable[str]) -> str:
    """``squeue`` for jobs by their deterministic names (any state squeue still remembers)."""
    joined = ",".join(check_job_names(names))
    return " ".join(
        shlex.quote(a)
        for a in ["squeue", "--noheader", "--states=all", f"--name={joined}", f"--format={SQUEUE_FORMAT}"]
    )


def sacct_by_name_command(names: Iterable[str], since: str) -> str:
    """``sacct`` for jobs by their deterministic names, submitted since ``since``.

    Used before submitting, to find a job an earlier try submitted but could not record.

    :param names: names from :func:`job_name`.
    :param since: ``now-<n>days`` or ``YYYY-MM-DD[THH:MM[:SS]]`` (controller local time).
    """
    joined = ",".join(check_job_names(names))
    check_since(since)
    return " ".join(
        shlex.quote(a)
        for a in [
            "sacct",
            "--parsable2",
            "-X",
            "--noheader",
            f"--name={joined}",
            f"--starttime={since}",
            f"--format={','.join(SACCT_FIELDS)}",
        ]
    )


def scancel_command(job_ids: Iterable[str]) -> str:
    """``scancel`` for a list of jobs (ids only: cancelling by name could hit a newer try's job)."""
    ids = check_job_ids(job_ids)
    return " ".join(shlex.quote(a) for a in ["scancel", *ids])


def read_log_command(path: str, offset: int, max_bytes: int = 65536) -> str:
    """Read at most ``max_bytes`` of ``path`` from byte ``offset``, base64-encoded.

    Base64 so that the caller knows exactly how many bytes it got (a UTF-8 character may be cut
    in two at the chunk edge) and advances its offset by bytes, never by decoded characters.
    A missing file reads as empty.
    """
    check_remote_path(path, "log path")
    if not isinstance(offset, int) or offset < 0 or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError("offset must be >= 0 and max_bytes > 0")
    return (
        f"tail -c +{offset + 1} -- {shlex.quote(path)} 2>/dev/null | head -c {max_bytes} | base64 -w0; echo"
    )


POLL_MARK = "@@AIFP"


def poll_command(job_ids: Iterable[str], logs: Mapping[str, tuple[str, int]] | None = None, *,
                 max_log_bytes: int = 65536) -> str:
    """Build ONE shell command that observes many jobs and reads their new log bytes.

    squeue is asked first (cheap, served by slurmctld's memory); only the jobs squeue does not
    show as active are asked of sacct (slurmdbd), which is the source of truth for finished jobs.
    Sections are framed by ``@@AIFP`` marker lines so :func:`parse_poll_output` can split them.
    All interpolated values are validated job ids, constants, or quoted paths.

    :param job_ids: jobs to observe.
    :param logs: ``{job_id: (log path, byte offset)}`` of logs to stream.
    :param max_log_bytes: cap per log and poll, so a chatty job cannot flood the triggerer.
    """
    ids = check_job_ids(job_ids)
    active = " ".join(sorted(s.value for s in ACTIVE_STATES))
    id_list = ",".join(ids)
    lines = [
        f"q=$({squeue_command(ids)} 2>&1); rc=$?",
        f"printf '%s\\n' \"{POLL_MARK} squeue rc=$rc\"; printf '%s\\n' \"$q\"",
        # awk prints the ids squeue did not show in an active state (finished, or gone after MinJobAge).
        "miss=$(printf '%s\\n' \"$q\" | awk -F'|' -v "
        + shlex.quote(f"ids={id_list}")
        + " -v "
        + shlex.quote(f"active={active}")
        + " "
        + shlex.quote(
            'BEGIN{n=split(ids,want,",");m=split(active,a," ");for(i=1;i<=m;i++)act[a[i]]=1}'
            ' NF>=6 && ($3 in act){seen[$1]=1}'
            ' END{s="";for(i=1;i<=n;i++)if(!(want[i] in seen))s=s (s==""?"":",") want[i];print s}'
        )
        + ")",
        'if [ -n "$miss" ]; then',
        f"  s=$(sacct --parsable2 -X --noheader --jobs=\"$miss\" --format={','.join(SACCT_FIELDS)} 2>&1); rc=$?",
        f"  printf '%s\\n' \"{POLL_MARK} sacct rc=$rc\"; printf '%s\\n' \"$s\"",
        "fi",
    ]
    for job_id, (path, offset) in (logs or {}).items():
        (job,) = check_job_ids([job_id])
        lines.append(f"printf '%s\\n' '{POLL_MARK} log job={job} offset={int(offset)}'")
        lines.append(read_log_command(path, int(offset), max_log_bytes))
    lines.append(f"printf '%s\\n' '{POLL_MARK} end'")
    return "\n".join(lines)

