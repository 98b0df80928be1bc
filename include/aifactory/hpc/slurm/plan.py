"""Planning one job: every name, path, resource, argument and uploaded byte, decided before any side effect.

:func:`plan_job` is a pure function of the tenant spec, the cluster spec, the recipe, the run's
parameters and the task's ids. The operator plans once, at submission, and carries the plan with
the job (:meth:`JobPlan.to_json` goes into the task state store next to the job id, and into the
deferral's kwargs): finishing a job never re-reads a tenant spec that may have been edited while
the job ran.

The plan's ``params.json`` is canonical JSON (sorted keys); its sha256 (:attr:`JobPlan.params_sha256`)
is what the job records in its completion marker, so a finished job is adopted only when it ran
with exactly these parameters. Nothing in it changes from one try of the task to the next.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifactory import layout
from aifactory.errors import InputError
from aifactory.models.contract import params_digest

from .commands import build_sbatch_command
from .identity import job_comment, job_name, log_path
from .resources import Resources, sbatch_argv

if TYPE_CHECKING:
    from aifactory.models.own_code import OwnCode
    from aifactory.models.recipes import Recipe
    from aifactory.tenants import ClusterSpec, TenantSpec

__all__ = ["JOB_PATH", "PLAN_VERSION", "JobPlan", "TaskIds", "plan_job", "tenant_ssh_conn_id"]

#: The job's PATH: system tools only (the interpreter is passed as an absolute path).
JOB_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Bumped when :class:`JobPlan`'s fields change; a plan of another version is refused, not guessed.
PLAN_VERSION = 2


@dataclass(frozen=True, kw_only=True)
class TaskIds:
    """The Airflow task instance a job belongs to."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int | None = None


@dataclass(frozen=True, kw_only=True)
class JobPlan:
    """Everything a submission needs and everything finishing a job needs; JSON round-trips."""

    tenant: str
    cluster: str
    ssh_conn_id: str
    python: str
    poll_interval: float
    poll_interval_floor: float
    recipe: str
    hyperparameters: dict[str, Any]
    resources: dict[str, Any]
    #: the tenant's areas on the cluster (layout.TenantAreas): runs and environments, staged datasets
    project_dir: str
    scratch_dir: str
    run_dir: str
    output_dir: str
    dataset_dir: str | None
    job_name: str
    comment: str
    script_path: str
    sbatch_argv: tuple[str, ...]
    params_json: str
    params_sha256: str
    #: ``(local file, path relative to the run directory)`` of every file uploaded besides params.json
    files: tuple[tuple[str, str], ...] = field(default=())
    #: the container runtime's arguments (uploaded as ``container.argv``); empty: no container
    container_argv: tuple[str, ...] = field(default=())
    version: int = PLAN_VERSION

    @property
    def areas(self) -> layout.TenantAreas:
        return layout.TenantAreas(project=self.project_dir, scratch=self.scratch_dir)

    @property
    def marker_path(self) -> str:
        return f"{self.output_dir}/{layout.COMPLETION_MARKER}"

    @property
    def params_path(self) -> str:
        return f"{self.run_dir}/{layout.PARAMS_FILE}"

    @property
    def sbatch_command(self) -> str:
        return build_sbatch_command(self.sbatch_argv, self.script_path)

    @property
    def job_resources(self) -> Resources:
        return Resources(**self.resources)

    def log_path(self, job_id: str) -> str:
        return log_path(self.run_dir, job_id)

    def to_json(self) -> dict[str, Any]:
        """A JSON-native dict (task state store, deferral kwargs)."""
        data = asdict(self)
        data["sbatch_argv"] = list(self.sbatch_argv)
        data["files"] = [list(f) for f in self.files]
        data["container_argv"] = list(self.container_argv)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobPlan:
        """Rebuild a carried plan; the checks of :func:`plan_job` that need no spec run again."""
        if not isinstance(data, Mapping) or data.get("version") != PLAN_VERSION:
            version = data.get("version") if isinstance(data, Mapping) else None
            raise InputError(f"carried job plan has version {version!r}, expected {PLAN_VERSION}; "
                             "clear the task to plan and submit again")
        values = dict(data)
        values["sbatch_argv"] = tuple(values["sbatch_argv"])
        values["files"] = tuple((str(a), str(b)) for a, b in values.get("files", ()))
        values["container_argv"] = tuple(str(a) for a in values.get("container_argv", ()))
        try:
            plan = cls(**values)
        except TypeError as exc:
            raise InputError(f"carried job plan does not have the expected fields: {exc}") from exc
        _check_dirs(plan.areas, plan.run_dir, plan.dataset_dir)
        if plan.output_dir != layout.run_output_dir(plan.run_dir) or not layout.JOB_NAME_RE.fullmatch(plan.job_name):
            raise InputError("carried job plan names an output directory or job name it could not have planned")
        plan.sbatch_command  # noqa: B018  (re-checks every sbatch argument)
        return plan


def _check_dirs(areas: layout.TenantAreas, run_dir: str, dataset_dir: str | None) -> None:
    for path, parent, what in ((run_dir, layout.runs_dir(areas), "run_dir"),
                               (dataset_dir, layout.hpc_datasets_dir(areas), "dataset_dir")):
        if path is None:
            continue
        if not isinstance(path, str) or not layout.path_inside(path, parent):
            raise InputError(f"{what} {path!r:.120} must be a normalised absolute path inside {parent}/ "
                             "(the tenant's area)")


def tenant_ssh_conn_id(tenant: TenantSpec, cluster: ClusterSpec) -> str:
    """The SSH connection every task of ``tenant`` reaches its cluster through: the tenant's own
    login (``identity.ssh_conn_id``, which owns the tenant's area and is the only user of its Slurm
    account), never the cluster's service connection (accounts, sweeps)."""
    conn_id = tenant.identity.ssh_conn_id if tenant.identity is not None else None
    if not conn_id or conn_id == cluster.ssh_conn_id:
        raise InputError(f"tenant {tenant.tenant!r} has no SSH connection of its own (identity.ssh_conn_id in its "
                         f"spec); tenant tasks never use the cluster's service connection {cluster.ssh_conn_id!r}")
    return conn_id


def _job_files(recipe: Recipe) -> tuple[tuple[tuple[str, str], ...], str]:
    """The files to upload (recipe folder, platform runtime, fixed wrapper) and the wrapper's path."""
    from aifactory.models import bundle  # imports the recipe contract; kept out of this package's import

    return tuple((str(Path(local)), str(remote)) for local, remote in bundle.job_files(recipe)), bundle.WRAPPER


def plan_job(
    tenant: TenantSpec,
    cluster: ClusterSpec,
    recipe: Recipe,
    *,
    hyperparameters: Mapping[str, Any],
    resources: Mapping[str, Any] | Resources | None,
    task: TaskIds,
    dataset_dir: str | None,
    run_dir: str | None = None,
    poll_interval: float | None = None,
    own_code: OwnCode | None = None,
    purpose: str = "train",
) -> JobPlan:
    """Validate everything and decide names, paths, arguments and bytes. Touches nothing.

    :param hyperparameters: validated again against the recipe's schema (idempotent).
    :param resources: the user's resource request, bounded here by the tenant's policy; or
        :class:`Resources` the validate task already bounded (taken as they are).
    :param dataset_dir: the staged dataset, inside ``<tenant area>/datasets/`` (None: no dataset).
    :param run_dir: inside ``<tenant area>/runs/``; default ``runs/<job name>``, the same for every try.
    :param poll_interval: override the cluster's interval (never below its floor).
    :param own_code: ``recipe`` is this tenant code folder's: the tenant must be allowed its own
        code, and the job runs the Python of the environment its lock file builds.
    :param purpose: what the job is for (``train``, ``feed``, ``probe``): it picks the tenant's QOS
        when ``resources`` is a request (validated resources carry theirs).
    :raises InputError: naming what is wrong.
    """
    if cluster.name != tenant.cluster:
        raise InputError(f"tenant {tenant.tenant!r} runs on cluster {tenant.cluster!r}, not {cluster.name!r}")
    if own_code is not None:
        if not tenant.own_code or own_code.recipe.name != recipe.name:
            raise InputError(f"tenant {tenant.tenant!r} may not run its own code (own_code is off in its spec)")
    elif not tenant.allows_recipe(recipe.name):
        raise InputError(f"recipe {recipe.name!r} is not enabled for tenant {tenant.tenant!r}; "
                         f"allowed: {list(tenant.recipes)}")
    hp = recipe.validate_hyperparameters(dict(hyperparameters))
    if isinstance(resources, Resources):
        # Validated once, by the validate task, against the spec of that moment: not again here.
        if resources.account != tenant.slurm_account:
            raise InputError(f"validated resources name account {resources.account!r}, not the tenant's "
                             f"{tenant.slurm_account!r}; clear the validate task")
        res = resources
    else:
        res = Resources.from_request(resources, policy=tenant.slurm_policy(purpose), defaults=recipe.resources)
    areas = tenant.areas(cluster)
    name = job_name(tenant.tenant, task.dag_id, task.run_id, task.task_id, task.map_index)
    run = (run_dir or layout.run_dir(areas, name)).rstrip("/")
    dataset = dataset_dir.rstrip("/") if isinstance(dataset_dir, str) and dataset_dir else None
    _check_dirs(areas, run, dataset)
    output_dir = layout.run_output_dir(run)
    files, wrapper = _job_files(recipe)
    script_path = f"{run}/{wrapper}"
    python, container = cluster.python, ()
    if own_code is not None:
        python = posixpath.join(layout.env_dir(areas, own_code.env_id), "bin", "python")
    elif recipe.container:
        from aifactory.hpc.containers import container_argv, container_binds  # imports this package's checks

        image = cluster.containers.image(recipe.container)
        python = image.python
        container = container_argv(cluster.containers, image, binds=container_binds(cluster.hpc_root, areas),
                                   run_dir=run)
    comment = job_comment(tenant.tenant, task.dag_id, task.run_id, task.task_id, task.map_index, task.try_number)
    argv = sbatch_argv(
        res,
        job_name=name,
        comment=comment,
        chdir=run,
        output_path=layout.job_log_path(run, "%j"),
        export_vars={"PATH": JOB_PATH, "AIFP_PYTHON": python, "AIFP_ENTRYPOINT": recipe.entrypoint,
                     **cluster.environment.exports()},
        signal=recipe.sbatch_signal(res.time_limit_minutes),
    )
    build_sbatch_command(argv, script_path)  # every argument checked before any side effect
    # The try number stays out of params.json: every try must produce the same bytes and digest.
    document = {
        "dataset_dir": dataset,
        "output_dir": output_dir,
        "hyperparameters": hp,
        "job": {
            "tenant": tenant.tenant,
            "recipe": recipe.name,
            "dag_id": task.dag_id,
            "run_id": task.run_id,
            "task_id": task.task_id,
            "map_index": task.map_index,
            "job_name": name,
            "resources": res.as_dict(),
        },
    }
    params_json = json.dumps(document, indent=2, sort_keys=True)
    floor = float(cluster.poll_interval_floor_s)
    return JobPlan(
        tenant=tenant.tenant,
        cluster=cluster.name,
        ssh_conn_id=tenant_ssh_conn_id(tenant, cluster),
        python=python,
        poll_interval=max(float(poll_interval or cluster.poll_interval_s), floor),
        poll_interval_floor=floor,
        recipe=recipe.name,
        hyperparameters=hp,
        resources=res.as_dict(),
        project_dir=areas.project,
        scratch_dir=areas.scratch,
        run_dir=run,
        output_dir=output_dir,
        dataset_dir=dataset,
        job_name=name,
        comment=comment,
        script_path=script_path,
        sbatch_argv=tuple(argv),
        params_json=params_json,
        params_sha256=params_digest(params_json.encode()),
        files=files,
        container_argv=container,
    )
