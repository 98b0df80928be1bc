"""The Slurm engine's pure half: job identity, resource validation, command building, output parsing.

Nothing here talks to a network or imports Airflow. The operator (``operators/slurm.py``) and the
trigger (``operators/triggers.py``) build every shell string they send with these functions, and
read every answer from Slurm through these parsers, so all of it is unit-tested in milliseconds.

Rules this module enforces (see ``/work/shared/FAILURE-MODES.md``):

* **No user value becomes shell text or script text.** Resources are validated to ints within the
  tenant's bounds and a partition from the tenant's allowlist; the account and QOS come from the
  tenant spec only. Every ``sbatch`` option is one ``--opt=value`` argv element, checked again here
  and ``shlex.quote``-d. Hyperparameters never reach this module: they travel as ``params.json``.
* **A job's identity is deterministic.** :func:`job_name` is a hash of (tenant, DAG, run, task,
  map index), so a retry whose worker died between ``sbatch`` and saving the job id can still find
  the job with ``sacct --name``. Job ids are recycled by Slurm, so lookups by id also check the name.
* **Queries take lists of job ids** so one command per cluster and interval can serve every watched
  job (squeue and sacct both accept ``--jobs=1,2,3``).
* **A job found nowhere is UNKNOWN, never success**; ``COMPLETING`` is still active.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aifactory.errors import FactoryError, InputError

__all__ = [
    "ACTIVE_STATES",
    "FAILED_STATES",
    "SACCT_FIELDS",
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


class SlurmError(FactoryError):
    """Slurm answered something we cannot use (unparseable output, a refused submission).

    Unlike :class:`~aifactory.errors.InputError` this is the platform's to look at, not the user's.
    """


# --------------------------------------------------------------------------------------------------
# Validation primitives
# --------------------------------------------------------------------------------------------------

#: Tenant names appear in job names, paths and Slurm accounts; keep them boring.
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
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
#: Job names we generate (checked again when they come back in as arguments).
JOB_NAME_RE = re.compile(r"^aifp-[a-z0-9_-]{1,32}-[0-9a-f]{12}$")
#: Longest argv element we hand to sbatch; anything longer is an attack or a bug.
MAX_ARG_LEN = 4096


def _check_remote_path(value: str, what: str) -> str:
    if not isinstance(value, str) or not REMOTE_PATH_RE.fullmatch(value):
        raise InputError(
            f"{what} {value!r:.80} is not an absolute path made of letters, digits and '_./+-' "
            "(no spaces, '%', ',' or quotes); fix the cluster spec or the run key"
        )
    if any(part == ".." for part in value.split("/")):
        raise InputError(f"{what} {value!r:.80} contains '..'; paths must not leave their root")
    return value


def _check_job_ids(job_ids: Iterable[str]) -> list[str]:
    ids = [str(j) for j in job_ids]
    if not ids:
        raise ValueError("at least one job id is required")
    for j in ids:
        if not JOB_ID_RE.fullmatch(j):
            raise InputError(f"job id {j!r:.40} is not a Slurm job id (digits, optionally _<index>)")
    # Keep order, drop duplicates: the id list is also the squeue/sacct argument.
    return list(dict.fromkeys(ids))


def _check_job_names(names: Iterable[str]) -> list[str]:
    out = [str(n) for n in names]
    if not out:
        raise ValueError("at least one job name is required")
    for n in out:
        if not JOB_NAME_RE.fullmatch(n):
            raise InputError(f"job name {n!r:.60} was not made by aifactory.hpc.slurm.job_name()")
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------------------------------
# Job identity
# --------------------------------------------------------------------------------------------------


def job_name(tenant: str, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """Return the deterministic Slurm job name of one task instance.

    ``aifp-<tenant>-<sha1[:12]>``: short (squeue's default column is narrow and names show up in
    every ``sacct`` line), Slurm-safe (the inputs - run ids carry ``:`` and ``+`` - are hashed),
    and stable across tries on purpose: a retry must find the job an earlier try submitted
    (FAILURE-MODES 1). The try number goes into :func:`job_comment` instead.

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
    return f"aifp-{tenant}-{digest}"


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
        f"aifp:tenant={clean(tenant)}",
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
    _check_remote_path(run_dir, "run dir")
    (job,) = _check_job_ids([job_id])
    return f"{run_dir.rstrip('/')}/slurm-{job}.out"


# --------------------------------------------------------------------------------------------------
# Resources and tenant policy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TenantSlurmPolicy:
    """What a tenant may ask Slurm for. Built from the tenant spec (``include/tenants/*.yaml``).

    :param account: the Slurm account charged for every job of the tenant.
    :param partitions: partitions the tenant may use; the first is the default.
    :param qos: the QOS to submit with, or ``None`` for the account's default.
    :param max_nodes: upper bound of ``nodes``.
    :param max_cpus_per_task: upper bound of ``cpus_per_task``.
    :param max_mem_gb: upper bound of ``mem_gb`` (per node).
    :param max_gpus_per_node: upper bound of ``gpus_per_node`` (0 forbids GPUs).
    :param max_time_limit_minutes: upper bound of ``time_limit_minutes``.
    """

    account: str
    partitions: tuple[str, ...]
    qos: str | None = None
    max_nodes: int = 1
    max_cpus_per_task: int = 1
    max_mem_gb: int = 1
    max_gpus_per_node: int = 0
    max_time_limit_minutes: int = 60

    def __post_init__(self) -> None:
        # A broken tenant spec is the platform's bug, but it must still never reach a shell.
        for name in (self.account, *self.partitions, *([self.qos] if self.qos else [])):
            if not isinstance(name, str) or not SLURM_NAME_RE.fullmatch(name):
                raise InputError(f"tenant spec: Slurm name {name!r:.80} must match {SLURM_NAME_RE.pattern}")
        if not self.partitions:
            raise InputError("tenant spec: slurm.partitions must list at least one partition")


#: Resource fields a user may set, with their lower bound and the policy attribute bounding them.
_INT_FIELDS: dict[str, tuple[int, str]] = {
    "nodes": (1, "max_nodes"),
    "cpus_per_task": (1, "max_cpus_per_task"),
    "mem_gb": (1, "max_mem_gb"),
    "gpus_per_node": (0, "max_gpus_per_node"),
    "time_limit_minutes": (1, "max_time_limit_minutes"),
}
_PLATFORM_FIELDS = {"account", "qos"}


def _as_int(name: str, value: Any) -> int:
    # bool is an int subclass; "true" nodes is a typo, not a count.
    if isinstance(value, bool):
        raise InputError(f"resources.{name}: expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    # Templated fields render to strings unless the DAG renders native objects; accept plain digits.
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,7}", value):
        return int(value)
    raise InputError(f"resources.{name}: expected an integer, got {value!r:.40}")


@dataclass(frozen=True, kw_only=True)
class Resources:
    """Validated resources of one job. Build it with :meth:`from_request`, not directly.

    ``account`` and ``qos`` are copied from the tenant policy; a request naming them is refused.
    ``mem_gb`` is per node. One task per node: multi-node recipes start their ranks with ``srun``.
    """

    account: str
    partition: str
    qos: str | None = None
    nodes: int = 1
    cpus_per_task: int = 1
    mem_gb: int = 1
    gpus_per_node: int = 0
    time_limit_minutes: int = 30

    @classmethod
    def from_request(
        cls,
        request: Mapping[str, Any] | None,
        *,
        policy: TenantSlurmPolicy,
        defaults: Mapping[str, Any] | None = None,
    ) -> Resources:
        """Validate a user's resource request against the tenant policy.

        :param request: what the user asked for (trigger-form params); missing keys take ``defaults``.
        :param policy: the tenant's bounds, partitions and account.
        :param defaults: the recipe's default resources (``recipe.yaml``), clipped to nothing:
            a default above the tenant's bound is an error too, so the platform notices.
        :raises InputError: naming the field, the value and the allowed range.
        """
        request = dict(request or {})
        merged: dict[str, Any] = {k: v for k, v in (defaults or {}).items() if k not in _PLATFORM_FIELDS}
        for key in _PLATFORM_FIELDS & request.keys():
            raise InputError(
                f"resources.{key} is set by the platform from the tenant spec and cannot be chosen"
            )
        merged.update(request)
        unknown = sorted(set(merged) - set(_INT_FIELDS) - {"partition"})
        if unknown:
            raise InputError(
                f"resources: unknown field(s) {', '.join(repr(u)[:40] for u in unknown)}; "
                f"allowed: partition, {', '.join(_INT_FIELDS)}"
            )
        values: dict[str, Any] = {}
        for name, (low, bound_attr) in _INT_FIELDS.items():
            if name not in merged:
                continue
            value = _as_int(name, merged[name])
            high = getattr(policy, bound_attr)
            if not low <= value <= high:
                raise InputError(
                    f"resources.{name}={value} is outside {low}..{high} allowed for this tenant "
                    f"(limits.{bound_attr} in the tenant spec)"
                )
            values[name] = value
        partition = merged.get("partition") or policy.partitions[0]
        if not isinstance(partition, str) or not SLURM_NAME_RE.fullmatch(partition):
            raise InputError(f"resources.partition {partition!r:.40} must match {SLURM_NAME_RE.pattern}")
        if partition not in policy.partitions:
            raise InputError(
                f"resources.partition {partition!r} is not allowed for this tenant; "
                f"choose one of {list(policy.partitions)}"
            )
        return cls(account=policy.account, partition=partition, qos=policy.qos, **values)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for XCom, logs and the trigger)."""
        return {
            "account": self.account,
            "partition": self.partition,
            "qos": self.qos,
            "nodes": self.nodes,
            "cpus_per_task": self.cpus_per_task,
            "mem_gb": self.mem_gb,
            "gpus_per_node": self.gpus_per_node,
            "time_limit_minutes": self.time_limit_minutes,
        }


# --------------------------------------------------------------------------------------------------
# Submission
# --------------------------------------------------------------------------------------------------


def _opt(name: str, value: object) -> str:
    text = str(value)
    # Defence in depth: the values were validated upstream, but this is the last line before a
    # shell. A value starting with '-' could be read as a new option by sbatch's getopt if it ever
    # ended up as a separate argument; a newline could fake an '#SBATCH' line in a log or script.
    if not text or text.startswith("-") or any(c in text for c in "\n\r\0") or len(text) > MAX_ARG_LEN:
        raise InputError(f"sbatch --{name}: value {text!r:.60} is empty, starts with '-', or is unsafe")
    return f"--{name}={text}"


def sbatch_argv(
    resources: Resources,
    *,
    job_name: str,
    comment: str,
    chdir: str,
    output_path: str,
    export_vars: Mapping[str, str],
    signal: str | None = None,
) -> list[str]:
    """Return the sbatch options of one job, each as a single ``--opt=value`` element.

    The job script carries no ``#SBATCH`` lines from user data: every option is here, so the
    submitter owns them and they are checked in one place.

    :param resources: validated resources (account and QOS from the tenant spec).
    :param job_name: from :func:`job_name`.
    :param comment: from :func:`job_comment`.
    :param chdir: the run directory; the job starts there (``--chdir``).
    :param output_path: the batch log; may contain ``%j`` (job id). Must lie under ``chdir``.
    :param export_vars: the job's whole environment besides Slurm's own (``--export=NONE,...``):
        nothing of the submitting shell leaks into the job, and nothing secret may be put here,
        because ``SubmitLine`` is visible to other users.
    :param signal: ``--signal`` value from the recipe (``[B:|R:]<SIG>[@<seconds>]``, e.g. ``USR1@60``:
        warn the job's steps before the time limit so they checkpoint); None adds nothing.
    """
    _check_job_names([job_name])
    _check_remote_path(chdir, "run dir")
    # Allow exactly one sbatch filename pattern, %j, then check the rest as a path.
    if output_path.count("%") != output_path.count("%j"):
        raise InputError(f"output path {output_path!r:.80} may only use the %j pattern")
    _check_remote_path(output_path.replace("%j", "JOBID"), "output path")
    if not output_path.startswith(chdir.rstrip("/") + "/"):
        raise InputError(f"output path {output_path!r:.80} must lie under the run dir {chdir!r:.80}")
    exports = ["NONE"]
    for key, value in export_vars.items():
        if not EXPORT_KEY_RE.fullmatch(key) or not EXPORT_VALUE_RE.fullmatch(str(value)):
            raise InputError(
                f"--export {key!r:.40}={value!r:.40}: keys are UPPER_CASE, values use "
                "[A-Za-z0-9_./:@+-] only (no ',' or whitespace)"
            )
        exports.append(f"{key}={value}")
    argv = [
        _opt("job-name", job_name),
        _opt("comment", comment),
        _opt("account", resources.account),
        _opt("partition", resources.partition),
    ]
    if resources.qos:
        argv.append(_opt("qos", resources.qos))
    argv += [
        _opt("nodes", resources.nodes),
        _opt("ntasks-per-node", 1),
        _opt("cpus-per-task", resources.cpus_per_task),
        _opt("mem", f"{resources.mem_gb}G"),
        _opt("time", resources.time_limit_minutes),
    ]
    if resources.gpus_per_node:
        argv.append(_opt("gpus-per-node", resources.gpus_per_node))
    argv += [
        _opt("chdir", chdir),
        _opt("output", output_path),
        # Append, so that a requeued job (same id) keeps the first attempt's log for diagnosis.
        _opt("open-mode", "append"),
        _opt("export", ",".join(exports)),
    ]
    # --- recipe options (issue 5): added only when the recipe asks for them ---
    if signal is not None:
        if not SIGNAL_RE.fullmatch(str(signal)):
            raise InputError(f"sbatch --signal {signal!r:.40} must look like [B:|R:]USR1[@<seconds>]")
        argv.append(_opt("signal", signal))
    return argv


#: ``sbatch --signal`` values we pass: an optional B:/R: flag, a signal name, an optional lead time.
SIGNAL_RE = re.compile(r"^(?:[BR]:)?(?:SIG)?(?:USR1|USR2|TERM|INT|HUP|URG)(?:@[0-9]{1,5})?$")


def build_sbatch_command(argv: Sequence[str], script_path: str) -> str:
    """Join sbatch options and the script path into one shell command, quoting every element.

    ``--parsable`` makes sbatch print ``<job id>[;<cluster>]`` only (see :func:`parse_sbatch_output`).
    """
    _check_remote_path(script_path, "script path")
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg or any(c in arg for c in "\n\r\0"):
            raise InputError(f"sbatch argument {arg!r:.60} is not a single --opt=value element")
    return " ".join(shlex.quote(a) for a in ["sbatch", "--parsable", *argv, script_path])


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


# --------------------------------------------------------------------------------------------------
# States
# --------------------------------------------------------------------------------------------------


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

#: Still going (or coming back): keep polling. COMPLETING is here on purpose (FAILURE-MODES 5):
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


# --------------------------------------------------------------------------------------------------
# Queries: squeue, sacct, scancel, log reading
# --------------------------------------------------------------------------------------------------

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
    ids = ",".join(_check_job_ids(job_ids))
    return " ".join(
        shlex.quote(a)
        for a in ["squeue", "--noheader", "--states=all", f"--jobs={ids}", f"--format={SQUEUE_FORMAT}"]
    )


def sacct_command(job_ids: Iterable[str]) -> str:
    """``sacct`` for a list of jobs: the source of truth once a job has left squeue.

    No ``-S``: with ``--jobs`` sacct searches from the epoch, so recycled ids return several
    records; :func:`select_record` picks ours by name and submit time.
    """
    ids = ",".join(_check_job_ids(job_ids))
    return " ".join(
        shlex.quote(a)
        for a in ["sacct", "--parsable2", "-X", "--noheader", f"--jobs={ids}", f"--format={','.join(SACCT_FIELDS)}"]
    )


def squeue_by_name_command(names: Iterable[str]) -> str:
    """``squeue`` for jobs by their deterministic names (any state squeue still remembers)."""
    joined = ",".join(_check_job_names(names))
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
    joined = ",".join(_check_job_names(names))
    if not SINCE_RE.fullmatch(since):
        raise InputError(f"sacct start time {since!r:.40} must be 'now-<n><unit>' or an ISO date")
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
    ids = _check_job_ids(job_ids)
    return " ".join(shlex.quote(a) for a in ["scancel", *ids])


def read_log_command(path: str, offset: int, max_bytes: int = 65536) -> str:
    """Read at most ``max_bytes`` of ``path`` from byte ``offset``, base64-encoded.

    Base64 so that the caller knows exactly how many bytes it got (a UTF-8 character may be cut
    in two at the chunk edge) and advances its offset by bytes, never by decoded characters.
    A missing file reads as empty.
    """
    _check_remote_path(path, "log path")
    if not isinstance(offset, int) or offset < 0 or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError("offset must be >= 0 and max_bytes > 0")
    return (
        f"tail -c +{offset + 1} -- {shlex.quote(path)} 2>/dev/null | head -c {max_bytes} | base64 -w0; echo"
    )


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------


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

    Slurm recycles job ids (FAILURE-MODES 3), so an id alone can match an old, unrelated job.
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


def parse_elapsed(text: str) -> int | None:
    """Slurm durations ``[D-]HH:MM:SS``, ``MM:SS``, ``MM:SS.mmm`` -> seconds; None if unreadable."""
    text = (text or "").strip()
    match = re.fullmatch(r"(?:([0-9]+)-)?(?:([0-9]+):)?([0-9]+):([0-9]+)(?:\.[0-9]+)?", text)
    if not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


_MEM_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "P": 1024**3}


def parse_tres(text: str) -> dict[str, float]:
    """Parse ``cpu=2,mem=4G,node=1,billing=2,gres/gpu=1`` into numbers (memory in MiB)."""
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            continue
        if key == "mem":
            match = re.fullmatch(r"([0-9.]+)([KMGTP]?)", value)
            if match:
                out["mem_mb"] = float(match.group(1)) * _MEM_UNITS[match.group(2) or "M"]
            continue
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def accounting(record: SacctRecord | Mapping[str, Any]) -> dict[str, Any]:
    """Usage of one job for reports and cost attribution: elapsed, TRES, CPU- and GPU-hours."""
    data = record.as_dict() if isinstance(record, SacctRecord) else dict(record)
    elapsed_s = parse_elapsed(str(data.get("elapsed", ""))) or 0
    tres = parse_tres(str(data.get("alloc_tres", "")))
    cpus = tres.get("cpu", 0.0)
    gpus = tres.get("gres/gpu", 0.0)
    return {
        "job_id": data.get("job_id"),
        "account": data.get("account"),
        "partition": data.get("partition"),
        "state": data.get("state"),
        "exit_code": data.get("exit_code"),
        "elapsed_s": elapsed_s,
        "alloc_tres": tres,
        "nodes": int(tres.get("node", 0)),
        "node_list": data.get("node_list"),
        "cpu_hours": round(cpus * elapsed_s / 3600, 6),
        "gpu_hours": round(gpus * elapsed_s / 3600, 6),
        "submit": data.get("submit"),
        "start": data.get("start"),
        "end": data.get("end"),
    }


# --------------------------------------------------------------------------------------------------
# One command per poll: squeue for every watched job, sacct for those that left it, log chunks
# --------------------------------------------------------------------------------------------------

_MARK = "@@AIFP"


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
    ids = _check_job_ids(job_ids)
    active = " ".join(sorted(s.value for s in ACTIVE_STATES))
    id_list = ",".join(ids)
    lines = [
        f"q=$({squeue_command(ids)} 2>&1); rc=$?",
        f"printf '%s\\n' \"{_MARK} squeue rc=$rc\"; printf '%s\\n' \"$q\"",
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
        f"  printf '%s\\n' \"{_MARK} sacct rc=$rc\"; printf '%s\\n' \"$s\"",
        "fi",
    ]
    for job_id, (path, offset) in (logs or {}).items():
        (job,) = _check_job_ids([job_id])
        lines.append(f"printf '%s\\n' '{_MARK} log job={job} offset={int(offset)}'")
        lines.append(read_log_command(path, int(offset), max_log_bytes))
    lines.append(f"printf '%s\\n' '{_MARK} end'")
    return "\n".join(lines)


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
    """True for Slurm client errors that say "ask again later" (FAILURE-MODES 4)."""
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
    ids = _check_job_ids(job_ids)
    names = dict(names or {})
    sections: dict[str, tuple[str, list[str]]] = {}
    log_sections: list[tuple[str, int, list[str]]] = []
    current: list[str] | None = None
    result = PollResult()
    for line in text.splitlines():
        if line.startswith(_MARK + " "):
            header = line[len(_MARK) + 1 :].split()
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
            # Finished per squeue but sacct has no record yet (it lags the controller, FAILURE-MODES
            # 3): report the squeue state without an exit code; the caller keeps polling for sacct.
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
