"""Reading Slurm's answers: ``sbatch --parsable``, ``squeue``, ``sacct`` and one poll's framed output.

Parsers skip lines that are not records (warnings, MOTD notices, a foreign job's name holding
``|``) and never guess: a job id that Slurm recycled for someone else's job is told apart by name
and submit time (``docs/failure-modes.md``, section 3), and a job found nowhere is UNKNOWN.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .checks import JOB_ID_RE, SlurmError, check_job_ids
from .commands import POLL_MARK, SACCT_FIELDS
from .states import ACTIVE_STATES, JobState

__all__ = [
    "JobObservation",
    "PollResult",
    "SacctRecord",
    "SqueueRecord",
    "SubmitResult",
    "is_transient_slurm_error",
    "parse_poll_output",
    "parse_sacct",
    "parse_sbatch_output",
    "parse_squeue",
    "select_record",
]


@dataclass(frozen=True)
class SubmitResult:
    """What ``sbatch --parsable`` told us."""

    job_id: str
    cluster: str | None = None


_SBATCH_RE = re.compile(r"^([0-9]{1,12})(?:;([A-Za-z0-9_-]{1,64}))?$")


def parse_sbatch_output(text: str) -> SubmitResult:
    """Parse ``sbatch --parsable`` stdout: ``12345`` or ``12345;cluster``.

    Sites print MOTD-like notices from ``job_submit`` plugins; the id is the last non-empty line.

    :raises SlurmError: if no job id is found (the submission may still have happened: look the
        job up by name before submitting again).
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines:
        match = _SBATCH_RE.fullmatch(lines[-1])
        if match:
            return SubmitResult(job_id=match.group(1), cluster=match.group(2))
    raise SlurmError(f"sbatch printed no job id (stdout: {text.strip()[:300]!r})")


@dataclass(frozen=True)
class SqueueRecord:
    """One ``squeue`` line (:data:`SQUEUE_FORMAT`)."""

    job_id: str
    name: str
    state: JobState
    raw_state: str
    reason: str
    time_used: str
    #: squeue's %S: the scheduler's expected start time of a pending job (``N/A`` when unknown)
    expected_start: str = ""


def parse_squeue(text: str) -> list[SqueueRecord]:
    """Parse ``squeue --noheader --format=SQUEUE_FORMAT`` output; skips lines that are not records.

    Error lines (``slurm_load_jobs error: ...``) have no ``|`` and are skipped; the caller looks at
    the exit status to tell "not in the queue" from "controller down".
    """
    records = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 6 or not JOB_ID_RE.fullmatch(parts[0]):
            continue
        # A foreign job's name could contain '|': take id first and the last four from the right.
        job_id, rest = parts[0], parts[1:]
        name = "|".join(rest[:-4])
        raw_state, reason, time_used, expected_start = rest[-4:]
        records.append(
            SqueueRecord(
                job_id=job_id,
                name=name,
                state=JobState.parse(raw_state),
                raw_state=raw_state,
                reason=reason,
                time_used=time_used,
                expected_start=expected_start,
            )
        )
    return records


@dataclass(frozen=True)
class SacctRecord:
    """One ``sacct --parsable2 -X`` line (:data:`SACCT_FIELDS`)."""

    job_id: str
    name: str
    account: str
    partition: str
    state: JobState
    raw_state: str
    exit_code: int | None
    signal: int | None
    elapsed: str
    alloc_tres: str
    node_list: str
    submit: str
    start: str
    end: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the trigger event carries it)."""
        return {
            "job_id": self.job_id,
            "name": self.name,
            "account": self.account,
            "partition": self.partition,
            "state": str(self.state),
            "raw_state": self.raw_state,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "elapsed": self.elapsed,
            "alloc_tres": self.alloc_tres,
            "node_list": self.node_list,
            "submit": self.submit,
            "start": self.start,
            "end": self.end,
            "reason": self.reason,
        }


def _parse_exit_code(text: str) -> tuple[int | None, int | None]:
    match = re.fullmatch(r"\s*([0-9]+):([0-9]+)\s*", text or "")
    if not match:
        return None, None
    return int(match.group(1)), int(match.group(2))


def parse_sacct(text: str) -> list[SacctRecord]:
    """Parse ``sacct --parsable2 -X --noheader --format=<SACCT_FIELDS>`` output.

    Lines with the wrong number of fields (warnings, a foreign job's name containing '|') are skipped.
    """
    records = []
    n = len(SACCT_FIELDS)
    for line in text.splitlines():
        parts = line.rstrip("\n").split("|")
        if len(parts) != n or not JOB_ID_RE.fullmatch(parts[0].strip()):
            continue
        row = dict(zip(SACCT_FIELDS, parts, strict=True))
        exit_code, signal = _parse_exit_code(row["ExitCode"])
        records.append(
            SacctRecord(
                job_id=row["JobID"].strip(),
                name=row["JobName"],
                account=row["Account"],
                partition=row["Partition"],
                state=JobState.parse(row["State"]),
                raw_state=row["State"],
                exit_code=exit_code,
                signal=signal,
                elapsed=row["Elapsed"],
                alloc_tres=row["AllocTRES"],
                node_list=row["NodeList"],
                submit=row["Submit"],
                start=row["Start"],
                end=row["End"],
                reason=row["Reason"],
            )
        )
    return records


def select_record(records: Iterable[SacctRecord], *, job_id: str | None = None, name: str | None = None):
    """Pick the record of *our* job: matching id and/or name, latest submit time wins.

    Slurm recycles job ids (docs/failure-modes.md, 3), so an id alone can match an old, unrelated job.
    ISO timestamps (``2026-01-01T10:00:00``) sort correctly as text; ``Unknown`` sorts first.
    """
    matches = [
        r
        for r in records
        if (job_id is None or r.job_id == job_id) and (name is None or r.name == name)
    ]
    if not matches:
        return None
    return max(matches, key=lambda r: (r.submit if r.submit[:1].isdigit() else "", _job_id_key(r.job_id)))


def _job_id_key(job_id: str) -> tuple[int, int]:
    head, _, tail = job_id.partition("_")
    return int(head), int(tail or -1)


@dataclass
class JobObservation:
    """What one poll learned about one job.

    ``state`` is :attr:`JobState.UNKNOWN` with ``source=None`` when the job was found nowhere.
    """

    job_id: str
    state: JobState
    raw_state: str = ""
    source: Literal["squeue", "sacct"] | None = None
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    record: SacctRecord | None = None
    expected_start: str = ""

    @property
    def found(self) -> bool:
        return self.source is not None


@dataclass
class PollResult:
    """Everything one :func:`poll_command` run told us.

    :ivar jobs: one observation per requested job id.
    :ivar errors: transient trouble (controller or database unreachable). When non-empty, a job
        found nowhere must not count towards "unknown": Slurm simply did not answer.
    :ivar logs: ``{job_id: (bytes read, new offset)}``.
    :ivar complete: False if the output was cut short (the end marker is missing).
    """

    jobs: dict[str, JobObservation] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    logs: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    complete: bool = False


_TRANSIENT_HINTS = (
    "unable to contact slurm controller",
    "connection refused",
    "socket timed out",
    "slurm_receive_msg",
    "problem talking to the database",
    "slurmdbd",
    "temporarily unavailable",
    "communication connection failure",
)


def is_transient_slurm_error(text: str) -> bool:
    """True for Slurm client errors that say "ask again later" (docs/failure-modes.md, 4)."""
    lowered = text.lower()
    return any(h in lowered for h in _TRANSIENT_HINTS)


def parse_poll_output(
    text: str, job_ids: Iterable[str], names: Mapping[str, str] | None = None
) -> PollResult:
    """Split :func:`poll_command` output into per-job observations, errors and log chunks.

    :param text: the command's stdout.
    :param job_ids: the ids that were asked about.
    :param names: ``{job_id: expected job name}``; a record with another name is a recycled id
        of someone else's job and is ignored.
    """
    ids = check_job_ids(job_ids)
    names = dict(names or {})
    sections: dict[str, tuple[str, list[str]]] = {}
    log_sections: list[tuple[str, int, list[str]]] = []
    current: list[str] | None = None
    result = PollResult()
    for line in text.splitlines():
        if line.startswith(POLL_MARK + " "):
            header = line[len(POLL_MARK) + 1 :].split()
            kind = header[0] if header else ""
            attrs = dict(item.split("=", 1) for item in header[1:] if "=" in item)
            current = []
            if kind in ("squeue", "sacct"):
                sections[kind] = (attrs.get("rc", "?"), current)
            elif kind == "log" and "job" in attrs:
                log_sections.append((attrs["job"], int(attrs.get("offset", "0")), current))
            elif kind == "end":
                result.complete = True
                current = None
            continue
        if current is not None:
            current.append(line)

    squeue_rc, squeue_lines = sections.get("squeue", ("missing", []))
    squeue_text = "\n".join(squeue_lines)
    squeue_records = {r.job_id: r for r in parse_squeue(squeue_text)}
    if squeue_rc != "0":
        # rc=1 with "Invalid job id specified" is the normal answer once every job left the queue.
        if "invalid job id" not in squeue_text.lower():
            result.errors.append(f"squeue failed (rc={squeue_rc}): {squeue_text.strip()[:300]}")
    sacct_rc, sacct_lines = sections.get("sacct", ("0", []))
    sacct_text = "\n".join(sacct_lines)
    sacct_records = parse_sacct(sacct_text)
    if sacct_rc != "0":
        result.errors.append(f"sacct failed (rc={sacct_rc}): {sacct_text.strip()[:300]}")
    if not result.complete:
        result.errors.append("poll output was cut short (no end marker)")

    for job_id in ids:
        expected = names.get(job_id)
        sq = squeue_records.get(job_id)
        if sq is not None and (expected is None or sq.name == expected) and sq.state in ACTIVE_STATES:
            result.jobs[job_id] = JobObservation(
                job_id=job_id, state=sq.state, raw_state=sq.raw_state, source="squeue", reason=sq.reason,
                expected_start=sq.expected_start,
            )
            continue
        rec = select_record(sacct_records, job_id=job_id, name=expected)
        if rec is not None:
            result.jobs[job_id] = JobObservation(
                job_id=job_id,
                state=rec.state,
                raw_state=rec.raw_state,
                source="sacct",
                reason=rec.reason,
                exit_code=rec.exit_code,
                signal=rec.signal,
                record=rec,
            )
            continue
        if sq is not None and (expected is None or sq.name == expected):
            # Finished per squeue but sacct has no record yet (it lags the controller,
            # docs/failure-modes.md, 3): report the squeue state without an exit code; the caller keeps polling for sacct.
            result.jobs[job_id] = JobObservation(
                job_id=job_id, state=sq.state, raw_state=sq.raw_state, source="squeue", reason=sq.reason
            )
            continue
        result.jobs[job_id] = JobObservation(job_id=job_id, state=JobState.UNKNOWN)

    for job_id, offset, chunk_lines in log_sections:
        encoded = "".join(chunk_lines).strip()
        try:
            data = base64.b64decode(encoded, validate=True) if encoded else b""
        except ValueError:
            result.errors.append(f"log chunk of job {job_id} was not valid base64")
            data = b""
        result.logs[job_id] = (data, offset + len(data))
    return result
