"""What a job may ask of Slurm, and the ``sbatch`` options that ask for it.

**No user value becomes shell text or script text.** Resources are validated to ints within the
tenant's bounds and a partition from the tenant's allowlist; the account and QOS come from the
tenant spec only. Every ``sbatch`` option is one ``--opt=value`` argv element, checked here and
``shlex.quote``-d by :func:`~aifactory.hpc.slurm.commands.build_sbatch_command`.
Hyperparameters never reach this module: they travel as ``params.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aifactory.errors import InputError

from .checks import (
    EXPORT_KEY_RE,
    EXPORT_VALUE_RE,
    MAX_ARG_LEN,
    SLURM_NAME_RE,
    check_job_names,
    check_remote_path,
)

__all__ = ["SIGNAL_RE", "GpuOffer", "Resources", "TenantSlurmPolicy", "sbatch_argv", "tasks_per_node"]


@dataclass(frozen=True, kw_only=True)
class GpuOffer:
    """The GPUs of one partition's nodes (the cluster spec's ``partitions: {<name>: {gpu_type, gpus_per_node}}``).

    A job asks for them typed (``--gres=gpu:<type>:<n>``) and runs one rank per GPU.
    """

    partition: str
    gpu_type: str
    gpus_per_node: int

    def __post_init__(self) -> None:
        for what, name in (("partition", self.partition), ("gpu_type", self.gpu_type)):
            if not isinstance(name, str) or not SLURM_NAME_RE.fullmatch(name):
                raise InputError(f"{what} {name!r:.80} must match {SLURM_NAME_RE.pattern}")
        if isinstance(self.gpus_per_node, bool) or not isinstance(self.gpus_per_node, int) or self.gpus_per_node < 1:
            raise InputError(f"gpus_per_node must be a whole number >= 1, got {self.gpus_per_node!r:.40}")


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
    :param constraint: the node features every job of the tenant requires (``--constraint``, a
        feature expression such as ``a100&ib``), or ``None``.
    :param reservation: the Slurm reservation the tenant's jobs run in (``--reservation``), or ``None``.
    :param gpu_offers: the GPUs of the tenant's partitions that the tenant may use (its cluster's
        offers whose type is one of the tenant's ``slurm.gpu_types``); a GPU request on any other
        partition is refused.
    """

    account: str
    partitions: tuple[str, ...]
    qos: str | None = None
    max_nodes: int = 1
    max_cpus_per_task: int = 1
    max_mem_gb: int = 1
    max_gpus_per_node: int = 0
    max_time_limit_minutes: int = 60
    gpu_offers: tuple[GpuOffer, ...] = ()
    constraint: str | None = None
    reservation: str | None = None

    def gpu_offer(self, partition: str) -> GpuOffer | None:
        return next((o for o in self.gpu_offers if o.partition == partition), None)

    def __post_init__(self) -> None:
        # A broken tenant spec is the platform's bug, but it must still never reach a shell.
        check_placement(self.constraint, self.reservation, "tenant spec")
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
_PLATFORM_FIELDS = {"account", "qos", "gpu_type", "constraint", "reservation"}
#: a node feature expression: features joined by ``&`` (all) or ``|`` (any)
CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(?:[&|][A-Za-z0-9_][A-Za-z0-9_.-]{0,63}){0,15}$")


def check_placement(constraint: Any, reservation: Any, where: str) -> None:
    """A tenant's ``slurm.constraint`` (a feature expression) and ``slurm.reservation`` (a Slurm name),
    either ``None``; checked when the spec is read and again by :class:`TenantSlurmPolicy`.

    :raises InputError: naming ``where`` and the key.
    """
    if constraint is not None and (not isinstance(constraint, str) or not CONSTRAINT_RE.fullmatch(constraint)):
        raise InputError(f"{where}: slurm.constraint {constraint!r:.80} must be node features joined by & or | "
                         "(e.g. a100&ib)")
    if reservation is not None and (not isinstance(reservation, str) or not SLURM_NAME_RE.fullmatch(reservation)):
        raise InputError(f"{where}: slurm.reservation {reservation!r:.80} must match {SLURM_NAME_RE.pattern}")


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

    ``account``, ``qos``, ``constraint`` and ``reservation`` are copied from the tenant policy; a
    request naming them is refused.
    ``mem_gb`` is per node. One rank (task) per GPU, or one per node without GPUs (:func:`tasks_per_node`):
    the wrapper starts the ranks with ``srun``. ``gpu_type`` comes from the partition's offer, never
    from the user.
    """

    account: str
    partition: str
    qos: str | None = None
    nodes: int = 1
    cpus_per_task: int = 1
    mem_gb: int = 1
    gpus_per_node: int = 0
    time_limit_minutes: int = 30
    gpu_type: str | None = None
    constraint: str | None = None
    reservation: str | None = None

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
        gpus = values.get("gpus_per_node", 0)
        offer = policy.gpu_offer(partition) if gpus else None
        if gpus and offer is None:
            with_gpus = [o.partition for o in policy.gpu_offers]
            raise InputError(
                f"resources.gpus_per_node={gpus}: partition {partition!r} has no GPUs this tenant may use; "
                + (f"choose partition {' or '.join(map(repr, with_gpus))}" if with_gpus else
                   "ask the platform team for a GPU partition (slurm.gpu_types in the tenant spec)")
            )
        if offer is not None and gpus > offer.gpus_per_node:
            raise InputError(
                f"resources.gpus_per_node={gpus}: the nodes of partition {partition!r} have "
                f"{offer.gpus_per_node} {offer.gpu_type} GPU(s) each; ask for at most {offer.gpus_per_node} "
                "per node, or for more nodes"
            )
        return cls(account=policy.account, partition=partition, qos=policy.qos, constraint=policy.constraint,
                   reservation=policy.reservation,
                   gpu_type=offer.gpu_type if offer else None, **values)

    @property
    def tasks_per_node(self) -> int:
        return tasks_per_node(self.as_dict())

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
            "gpu_type": self.gpu_type,
            "constraint": self.constraint,
            "reservation": self.reservation,
        }


def tasks_per_node(resources: Mapping[str, Any]) -> int:
    """Ranks per node: one per GPU (each bound to its local device), else one (a rank uses all its CPUs)."""
    return int(resources.get("gpus_per_node") or 0) or 1



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
    check_job_names([job_name])
    check_remote_path(chdir, "run dir")
    # Allow exactly one sbatch filename pattern, %j, then check the rest as a path.
    if output_path.count("%") != output_path.count("%j"):
        raise InputError(f"output path {output_path!r:.80} may only use the %j pattern")
    check_remote_path(output_path.replace("%j", "JOBID"), "output path")
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
    if resources.reservation:
        argv.append(_opt("reservation", resources.reservation))
    if resources.constraint:
        argv.append(_opt("constraint", resources.constraint))
    argv += [
        _opt("nodes", resources.nodes),
        _opt("ntasks-per-node", resources.tasks_per_node),
        _opt("cpus-per-task", resources.cpus_per_task),
        _opt("mem", f"{resources.mem_gb}G"),
        _opt("time", resources.time_limit_minutes),
    ]
    if resources.gpus_per_node:
        if not resources.gpu_type:
            raise InputError("resources ask for GPUs without a GPU type; build them with Resources.from_request")
        # typed, per node: gres/gpu is what the cluster counts and budgets (GrpTRESMins gres/gpu)
        argv.append(_opt("gres", f"gpu:{resources.gpu_type}:{resources.gpus_per_node}"))
    argv += [
        _opt("chdir", chdir),
        _opt("output", output_path),
        # Append, so that a requeued job (same id) keeps the first attempt's log for diagnosis.
        _opt("open-mode", "append"),
        _opt("export", ",".join(exports)),
    ]
    # recipe options: added only when the recipe asks for them
    if signal is not None:
        if not SIGNAL_RE.fullmatch(str(signal)):
            raise InputError(f"sbatch --signal {signal!r:.40} must look like [B:|R:]USR1[@<seconds>]")
        argv.append(_opt("signal", signal))
    return argv


#: ``sbatch --signal`` values we pass: an optional B:/R: flag, a signal name, an optional lead time.
SIGNAL_RE = re.compile(r"^(?:[BR]:)?(?:SIG)?(?:USR1|USR2|TERM|INT|HUP|URG)(?:@[0-9]{1,5})?$")

