"""``SlurmJobOperator``: run one recipe as one Slurm job over SSH, deferring while it runs.

Flow of :meth:`SlurmJobOperator.execute`:

1. **Validate before any side effect**: tenant spec, cluster spec, recipe, hyperparameters (the
   recipe's JSON schema), resources (the tenant's bounds; account and QOS from the tenant spec),
   and the run/dataset directories (inside ``<hpc_root>/<tenant>/runs|datasets``).
2. **Find the job an earlier try submitted** (FAILURE-MODES 1): the job id saved in Airflow's task
   state store, then the deterministic job name through ``squeue``/``sacct --name``. Reattach if
   it is still active; adopt it if it COMPLETED and its ``_COMPLETED.json`` marker exists.
3. Otherwise **submit**: create the run dir (0700) over SFTP, upload ``params.json`` (JSON, never
   shell), the entrypoint and the fixed wrapper script, run ``sbatch`` with quoted ``--opt=value``
   options under the tenant's account, and save the job id at once.
4. **Defer** to :class:`~operators.triggers.SlurmJobTrigger` (or watch in the worker when
   ``deferrable=False``), then :meth:`~SlurmJobOperator.execute_complete` checks the completion
   marker and returns a small dict for XCom, or raises with an actionable message and the log tail.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import io
import json
import posixpath
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, BaseOperator, conf

from aifactory.errors import InputError
from aifactory.models.recipes import DEFAULT_RECIPES_ROOT, Recipe, load_recipes
from aifactory.hpc.slurm import (
    Resources,
    accounting,
    build_sbatch_command,
    classify,
    failure_message,
    job_comment,
    job_name,
    log_path,
    parse_poll_output,
    parse_sacct,
    parse_sbatch_output,
    parse_squeue,
    poll_command,
    read_log_command,
    sacct_by_name_command,
    sbatch_argv,
    scancel_command,
    select_record,
    squeue_by_name_command,
)
from aifactory.tenants import load_cluster, load_tenant, parse_cluster, parse_tenant
from operators.hooks import FactorySSHHook
from operators.triggers import SlurmJobTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["SlurmJobOperator", "STATE_KEY", "MARKER"]

#: task_state_store key of the submitted job. Renaming it breaks in-flight retries.
STATE_KEY = "slurm_job"
#: Written last by the recipe's entrypoint; required, with COMPLETED, for success.
MARKER = "_COMPLETED.json"
#: Name of the uploaded wrapper script in the run directory.
SCRIPT_NAME = "job.sh"
#: The job's PATH: system tools only (the interpreter is passed as an absolute path).
JOB_PATH = "/usr/local/bin:/usr/bin:/bin"

def _as_mapping(value: Any, what: str) -> dict[str, Any]:
    """Accept a dict, or the string a Jinja template rendered it to (JSON or a Python literal)."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        if len(text) > 1_000_000:
            raise InputError(f"{what} is larger than 1 MB")
        try:
            parsed = json.loads(text)
        except ValueError:
            try:
                # Rendered templates give Python reprs ({'a': True}); literal_eval runs no code.
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError) as exc:
                raise InputError(f"{what} is neither JSON nor a literal mapping: {exc}") from exc
        if isinstance(parsed, Mapping):
            return dict(parsed)
    raise InputError(f"{what} must be a mapping, got {type(value).__name__}")


def _check_under(path: str, root: str, what: str) -> str:
    """``path`` must be a normalised absolute path strictly below ``root`` (no '..', no '//')."""
    if not isinstance(path, str) or not path.startswith("/") or posixpath.normpath(path) != path.rstrip("/"):
        raise InputError(f"{what} {path!r:.120} must be a normalised absolute path")
    path = path.rstrip("/")
    if not path.startswith(root.rstrip("/") + "/") or path == root.rstrip("/"):
        raise InputError(f"{what} {path!r:.120} must lie inside {root}/ (the tenant's area)")
    return path


@dataclass(frozen=True)
class _Plan:
    """Everything execute() decided before touching the cluster."""

    tenant: str
    ssh_conn_id: str
    python: str
    poll_interval: float
    poll_interval_floor: float
    recipe: Recipe
    hyperparameters: dict[str, Any]
    resources: Resources
    tenant_root: str
    run_dir: str
    dataset_dir: str | None
    output_dir: str
    job_name: str
    comment: str

    @property
    def script_path(self) -> str:
        return f"{self.run_dir}/{SCRIPT_NAME}"

    @property
    def marker_path(self) -> str:
        return f"{self.output_dir}/{MARKER}"

    def log_path(self, job_id: str) -> str:
        return log_path(self.run_dir, job_id)


class SlurmJobOperator(BaseOperator):
    """Train one recipe on an HPC cluster as one Slurm job, submitted over SSH.

    The DAG author passes *what* to run (tenant, recipe, data, hyperparameters, resources); the
    *where* and *as whom* (host, connection, account, QOS, Python) come from platform-owned specs,
    never from a user's params.

    Returns (XCom) a dict: ``job_id``, ``job_name``, ``state``, ``exit_code``, ``run_dir``,
    ``output_dir``, ``log_path``, ``accounting`` (elapsed_s, cpu_hours, gpu_hours, alloc_tres...),
    ``metrics`` (from the completion marker), ``outputs`` (file -> sha256, bytes), ``recipe``,
    ``resources``, ``adopted`` (True if an earlier try's finished job was reused).

    .. note::
        ``on_kill`` cancels the job when the task is killed in a worker (``deferrable=False``).
        While deferred, the trigger's ``on_kill`` does it (user actions only, never on triggerer
        restarts). A task that fails after losing contact with Slurm does NOT cancel its job: a
        retry reattaches to it.

    .. note::
        Each task opens one SSH connection while it submits. Put tasks of one cluster in an Airflow
        pool sized below the login node's sshd ``MaxStartups``.

    :param tenant: tenant name; its spec is ``include/tenants/<tenant>.yaml`` unless ``tenant_spec``.
    :param cluster: cluster name (``include/clusters/<name>.yaml``) or the spec dict itself.
        Defaults to the tenant spec's ``cluster``; another cluster than the tenant's is refused.
    :param recipe: recipe name (a folder of ``include/recipes``); must be in the tenant's ``recipes``.
    :param run_dir: the run directory on the cluster, inside ``<hpc_root>/<tenant>/runs/`` (templated);
        default ``<hpc_root>/<tenant>/runs/<job name>``, the same for every try of the task.
    :param dataset_dir: the staged dataset, inside ``<hpc_root>/<tenant>/datasets/`` (templated);
        ``None`` for a job that reads no dataset (the platform's canary jobs).
    :param hyperparameters: the recipe's hyperparameters (templated; a dict or its JSON/repr text).
    :param slurm_resources: ``partition``, ``nodes``, ``cpus_per_task``, ``mem_gb``, ``gpus_per_node``,
        ``time_limit_minutes`` (templated); missing keys take the recipe's defaults. (Not called
        ``resources``: BaseOperator already has an argument of that name, for executor resources.)
    :param deferrable: defer to the triggerer while the job runs (default from
        ``[operators] default_deferrable``, else True); False polls inside the worker.
    :param tenant_spec: the tenant spec dict (tests; normally read from ``include/tenants``).
    :param recipes_root: where recipes live (tests).
    :param poll_interval: override the cluster spec's ``poll_interval_s`` (never below its floor).
    :param sacct_lookback: how far back ``sacct --name`` looks for an earlier try's job.
    :param deferral_timeout: give up watching after this long (the job is NOT cancelled).
    :param cancel_on_kill: cancel the Slurm job when a user kills the task.
    """

    template_fields: Sequence[str] = ("recipe", "run_dir", "dataset_dir", "hyperparameters", "slurm_resources")
    template_fields_renderers = {"hyperparameters": "json", "slurm_resources": "json"}
    ui_color = "#d6e4f0"

    def __init__(
        self,
        *,
        tenant: str,
        recipe: str,
        dataset_dir: str | None = None,
        run_dir: str | None = None,
        hyperparameters: Mapping[str, Any] | str,
        slurm_resources: Mapping[str, Any] | str | None = None,
        cluster: str | Mapping[str, Any] | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=True),
        tenant_spec: Mapping[str, Any] | None = None,
        recipes_root: str | Path | None = None,
        poll_interval: float | None = None,
        sacct_lookback: str = "now-7days",
        deferral_timeout: timedelta | None = None,
        cancel_on_kill: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tenant = tenant
        self.recipe = recipe
        self.run_dir = run_dir
        self.dataset_dir = dataset_dir
        self.hyperparameters = hyperparameters
        self.slurm_resources = slurm_resources
        self.cluster = cluster
        self.deferrable = deferrable
        self.tenant_spec = dict(tenant_spec) if tenant_spec is not None else None
        self.recipes_root = Path(recipes_root) if recipes_root else DEFAULT_RECIPES_ROOT
        self.poll_interval = poll_interval
        self.sacct_lookback = sacct_lookback
        self.deferral_timeout = deferral_timeout
        self.cancel_on_kill = cancel_on_kill
        self._job_id: str | None = None
        self._hook: FactorySSHHook | None = None

    # ---------------------------------------------------------------------------------------------
    # 1. Validation (pure: no network, no files on the cluster)
    # ---------------------------------------------------------------------------------------------

    def plan(self, context: Context) -> _Plan:
        """Validate everything and decide names and paths. Raises InputError; touches nothing."""
        tenant = self.tenant
        spec = parse_tenant(self.tenant_spec, "tenant_spec") if self.tenant_spec is not None else load_tenant(tenant)
        if spec.tenant != tenant:
            raise InputError(f"tenant spec names tenant {spec.tenant!r}, expected {tenant!r}")
        if isinstance(self.cluster, Mapping):
            cluster = parse_cluster(self.cluster, "cluster")
        else:
            cluster = load_cluster(self.cluster or spec.cluster)
        if cluster.name != spec.cluster:
            raise InputError(f"tenant {tenant!r} runs on cluster {spec.cluster!r}, not {cluster.name!r}")
        # only recipe folders that exist: the name never becomes a path on its own
        recipe = load_recipes(self.recipes_root).get(self.recipe) if isinstance(self.recipe, str) else None
        if recipe is None or not spec.allows_recipe(recipe.name):
            raise InputError(
                f"recipe {self.recipe!r:.60} is not a recipe enabled for tenant {tenant!r}; allowed: {list(spec.recipes)}"
            )
        hp = recipe.validate_hyperparameters(_as_mapping(self.hyperparameters, "hyperparameters"))
        resources = Resources.from_request(
            _as_mapping(self.slurm_resources, "resources"), policy=spec.slurm_policy(), defaults=recipe.resources
        )
        tenant_root = spec.hpc_dir(cluster)
        dataset_dir = (
            _check_under(self.dataset_dir, f"{tenant_root}/datasets", "dataset_dir") if self.dataset_dir else None
        )

        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        map_index = -1 if map_index is None else int(map_index)
        name = job_name(tenant, ti.dag_id, ti.run_id, ti.task_id, map_index)
        # Default run dir: named after the deterministic job name, so every try of this task
        # (and a re-attach after a worker crash) finds the same directory.
        run_dir = _check_under(self.run_dir or f"{tenant_root}/runs/{name}", f"{tenant_root}/runs", "run_dir")
        comment = job_comment(
            tenant, ti.dag_id, ti.run_id, ti.task_id, map_index, getattr(ti, "try_number", None)
        )
        floor = cluster.poll_interval_floor_s
        interval = float(self.poll_interval or cluster.poll_interval_s)
        plan = _Plan(
            tenant=tenant,
            ssh_conn_id=cluster.ssh_conn_id,
            python=cluster.python,
            poll_interval=max(interval, floor),
            poll_interval_floor=floor,
            recipe=recipe,
            hyperparameters=hp,
            resources=resources,
            tenant_root=tenant_root,
            run_dir=run_dir,
            dataset_dir=dataset_dir,
            output_dir=f"{run_dir}/output",
            job_name=name,
            comment=comment,
        )
        # Build the sbatch command once now: it re-validates every option before any side effect.
        self._sbatch_command(plan)
        return plan

    def _sbatch_command(self, plan: _Plan) -> str:
        argv = sbatch_argv(
            plan.resources,
            job_name=plan.job_name,
            comment=plan.comment,
            chdir=plan.run_dir,
            output_path=f"{plan.run_dir}/slurm-%j.out",
            export_vars={
                "PATH": JOB_PATH,
                "AIFP_PYTHON": plan.python,
                "AIFP_ENTRYPOINT": plan.recipe.entrypoint,
            },
            signal=plan.recipe.sbatch_signal(plan.resources.time_limit_minutes),
        )
        return build_sbatch_command(argv, plan.script_path)

    def params_document(self, plan: _Plan, context: Context) -> dict[str, Any]:
        """The ``params.json`` the entrypoint reads (see the recipe's ``train.py`` docstring)."""
        ti = context["ti"]
        return {
            "dataset_dir": plan.dataset_dir,
            "output_dir": plan.output_dir,
            "hyperparameters": plan.hyperparameters,
            "job": {
                "tenant": plan.tenant,
                "recipe": plan.recipe.name,
                "dag_id": ti.dag_id,
                "run_id": ti.run_id,
                "task_id": ti.task_id,
                "map_index": getattr(ti, "map_index", -1),
                "try_number": getattr(ti, "try_number", None),
                "job_name": plan.job_name,
                "resources": plan.resources.as_dict(),
            },
        }

    # ---------------------------------------------------------------------------------------------
    # 2. Find an earlier try's job
    # ---------------------------------------------------------------------------------------------

    def _get_hook(self, plan: _Plan) -> FactorySSHHook:
        if self._hook is None:
            self._hook = FactorySSHHook(ssh_conn_id=plan.ssh_conn_id)
        return self._hook

    def _marker_exists(self, hook: FactorySSHHook, plan: _Plan) -> bool:
        with hook.sftp() as sftp:
            try:
                return stat.S_ISREG(sftp.stat(plan.marker_path).st_mode or 0)
            except FileNotFoundError:
                return False

    def _observe(self, hook: FactorySSHHook, job_id: str, name: str):
        rc, out, err = hook.run(poll_command([job_id]), timeout=60)
        result = parse_poll_output(out, [job_id], names={job_id: name})
        return result, result.jobs[job_id]

    def _find_existing(self, hook: FactorySSHHook, plan: _Plan, context: Context) -> tuple[str, str] | None:
        """Return ``(job_id, "reattach" | "adopt")`` for an earlier try's usable job, else None."""
        store = context.get("task_state_store")
        candidates: list[tuple[str, str]] = []  # (job id, where we learned it)
        saved = store.get(STATE_KEY) if store is not None else None
        if isinstance(saved, Mapping) and saved.get("job_name") == plan.job_name and saved.get("job_id"):
            candidates.append((str(saved["job_id"]), "task state store"))
        if not candidates:
            # The worker may have died between sbatch and saving the id: look the name up.
            rc, out, _ = hook.run(squeue_by_name_command([plan.job_name]), timeout=60)
            active = [r for r in parse_squeue(out) if r.name == plan.job_name and classify(r.state) == "active"]
            if active:
                candidates.append((max(active, key=lambda r: int(r.job_id.split("_")[0])).job_id, "squeue --name"))
            else:
                rc, out, err = hook.run(sacct_by_name_command([plan.job_name], self.sacct_lookback), timeout=60)
                if rc != 0:
                    self.log.warning("sacct --name failed (rc=%s): %s", rc, err.strip()[:300])
                record = select_record(parse_sacct(out), name=plan.job_name)
                if record is not None:
                    candidates.append((record.job_id, "sacct --name"))
        for job_id, source in candidates:
            result, obs = self._observe(hook, job_id, plan.job_name)
            outcome = classify(obs.state)
            self.log.info("Earlier job %s (from %s) is %s (%s)", job_id, source, obs.state, outcome)
            if outcome == "active":
                return job_id, "reattach"
            if outcome == "succeeded" and self._marker_exists(hook, plan):
                return job_id, "adopt"
            if outcome == "succeeded":
                self.log.warning(
                    "Job %s COMPLETED but %s is missing; submitting again", job_id, plan.marker_path
                )
            if result.errors and not obs.found:
                raise AirflowException(
                    f"cannot tell whether Slurm job {job_id} of an earlier try still runs "
                    f"({'; '.join(result.errors)}); refusing to submit a duplicate. Retry later"
                )
        return None

    # ---------------------------------------------------------------------------------------------
    # 3. Submit
    # ---------------------------------------------------------------------------------------------

    def _prepare_run_dir(self, hook: FactorySSHHook, plan: _Plan, params: dict[str, Any]) -> None:
        uploads = {
            "params.json": json.dumps(params, indent=2, sort_keys=True).encode(),
            plan.recipe.entrypoint: plan.recipe.entrypoint_path.read_bytes(),
            SCRIPT_NAME: plan.recipe.sbatch_template_path.read_bytes(),
        }
        hpc_root = posixpath.dirname(plan.tenant_root)
        with hook.sftp() as sftp:
            # Create every missing directory below the HPC root 0700 (the tenant's own area too,
            # on first use); refuse planted symlinks and non-directories on the way.
            current = hpc_root
            for part in plan.run_dir[len(hpc_root) + 1 :].split("/"):
                current = f"{current}/{part}"
                try:
                    st = sftp.lstat(current)
                except FileNotFoundError:
                    sftp.mkdir(current, mode=0o700)
                    sftp.chmod(current, 0o700)  # mkdir's mode is filtered by the remote umask
                    continue
                if stat.S_ISLNK(st.st_mode or 0) or not stat.S_ISDIR(st.st_mode or 0):
                    raise InputError(f"{current} exists and is not a plain directory; refusing to use it")
            sftp.chmod(plan.run_dir, 0o700)
            for name, data in uploads.items():
                final = f"{plan.run_dir}/{name}"
                tmp = f"{plan.run_dir}/.{name}.uploading"
                sftp.putfo(io.BytesIO(data), tmp, file_size=len(data), confirm=True)
                sftp.chmod(tmp, 0o600)
                sftp.posix_rename(tmp, final)

    def _submit(self, hook: FactorySSHHook, plan: _Plan, context: Context) -> str:
        self._prepare_run_dir(hook, plan, self.params_document(plan, context))
        command = self._sbatch_command(plan)
        try:
            rc, out, err = hook.run(command, timeout=120)
        except Exception:
            # sbatch may have created the job before the connection broke: the retry finds it by name.
            self.log.exception("sbatch did not answer; a retry will look the job up by name %s", plan.job_name)
            raise
        if rc != 0:
            raise AirflowException(
                f"sbatch refused the job (exit {rc}): {err.strip()[:1000]}. Check the tenant's account "
                f"{plan.resources.account!r}, partition {plan.resources.partition!r} and limits"
            )
        job_id = parse_sbatch_output(out).job_id
        store = context.get("task_state_store")
        if store is not None:
            store.set(
                STATE_KEY,
                {"job_id": job_id, "job_name": plan.job_name, "run_dir": plan.run_dir},
            )
        else:
            self.log.warning("task_state_store unavailable: a retry will find job %s by name only", job_id)
        self.log.info(
            "Submitted Slurm job %s (%s) account=%s partition=%s run_dir=%s",
            job_id, plan.job_name, plan.resources.account, plan.resources.partition, plan.run_dir,
        )
        return job_id

    # ---------------------------------------------------------------------------------------------
    # 4. Watch and finish
    # ---------------------------------------------------------------------------------------------

    def _trigger(self, plan: _Plan, job_id: str) -> SlurmJobTrigger:
        return SlurmJobTrigger(
            ssh_conn_id=plan.ssh_conn_id,
            job_id=job_id,
            job_name=plan.job_name,
            log_path=plan.log_path(job_id),
            poll_interval=plan.poll_interval,
            poll_interval_floor=plan.poll_interval_floor,
            cancel_on_kill=self.cancel_on_kill,
        )

    def execute(self, context: Context) -> dict[str, Any] | None:
        plan = self.plan(context)
        hook = self._get_hook(plan)
        try:
            found = self._find_existing(hook, plan, context)
            if found is not None and found[1] == "adopt":
                self.log.info("Adopting finished job %s of an earlier try", found[0])
                self._job_id = found[0]
                result, obs = self._observe(hook, found[0], plan.job_name)
                event = {
                    "status": "succeeded",
                    "job_id": found[0],
                    "state": str(obs.state),
                    "exit_code": obs.exit_code,
                    "accounting": None,
                    "log_offset": None,
                    "adopted": True,
                }
                if obs.record is not None:
                    event["accounting"] = accounting(obs.record)
                return self._finish(context, plan, event)
            if found is not None:
                job_id = found[0]
                self.log.info("Reattaching to running job %s", job_id)
                store = context.get("task_state_store")
                if store is not None:
                    store.set(STATE_KEY, {"job_id": job_id, "job_name": plan.job_name, "run_dir": plan.run_dir})
            else:
                job_id = self._submit(hook, plan, context)
            self._job_id = job_id
        finally:
            # Do not hold an SSH session while deferred or idle; the inline watcher reconnects.
            hook.close()

        trigger = self._trigger(plan, job_id)
        if self.deferrable:
            self.defer(trigger=trigger, method_name="execute_complete", timeout=self.deferral_timeout)
        return self._watch_inline(context, plan, trigger)

    def _watch_inline(self, context: Context, plan: _Plan, trigger: SlurmJobTrigger) -> dict[str, Any]:
        """deferrable=False: run the trigger's state machine in the worker over the sync hook."""
        hook = self._get_hook(plan)

        class _Inline(SlurmJobTrigger):
            async def _connect(self) -> Any:
                return hook

            async def _run(self, conn: Any, command: str) -> tuple[int, str, str]:
                return await asyncio.to_thread(hook.run, command, self.command_timeout)

        inline = _Inline(**{**trigger.serialize()[1], "batched": False})

        async def first_event() -> dict[str, Any]:
            async for event in inline.run():
                return event.payload
            raise AirflowException("the Slurm watcher ended without an event")

        event = asyncio.run(first_event())
        return self.execute_complete(context, event)

    def _read_log(self, hook: FactorySSHHook, path: str, offset: int | None, tail_bytes: int) -> str:
        """The log from ``offset`` (capped), or its last ``tail_bytes`` when offset is None."""
        try:
            if offset is None:
                with hook.sftp() as sftp:
                    size = sftp.stat(path).st_size or 0
                offset = max(0, size - tail_bytes)
            rc, out, _ = hook.run(read_log_command(path, offset, tail_bytes), timeout=60)
            return base64.b64decode(out.strip() or b"").decode("utf-8", "replace")
        except Exception as exc:  # the log is diagnostics; never mask the real outcome
            return f"(could not read {path}: {exc})"

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the trigger: verify success or raise an actionable error."""
        plan = self.plan(context)
        job_id = str(event.get("job_id"))
        self._job_id = job_id
        hook = self._get_hook(plan)
        try:
            if event.get("log_offset") is not None:
                rest = self._read_log(hook, plan.log_path(job_id), int(event["log_offset"]), 256 * 1024)
                for line in rest.splitlines():
                    self.log.info("[slurm %s] %s", job_id, line)
            if event.get("status") != "succeeded":
                tail = self._read_log(hook, plan.log_path(job_id), None, 4096)
                tail_lines = "\n".join(tail.splitlines()[-30:])
                message = failure_message(
                    event.get("raw_state") or event.get("state") or "UNKNOWN", job_id=job_id, log_tail=tail,
                    message=event.get("message"), exit_code=event.get("exit_code"), signal=event.get("signal"),
                    reason=event.get("reason"), resources=plan.resources,
                )
                raise AirflowException(
                    f"{message}\n"
                    f"Log: {plan.log_path(job_id)} on cluster via {plan.ssh_conn_id}; last lines:\n{tail_lines}"
                )
            return self._finish(context, plan, event)
        finally:
            hook.close()

    def _finish(self, context: Context, plan: _Plan, event: dict[str, Any]) -> dict[str, Any]:
        """COMPLETED is not enough (FAILURE-MODES 11): the job's own marker must be there too."""
        hook = self._get_hook(plan)
        marker: dict[str, Any] | None = None
        for attempt in range(6):
            try:
                with hook.sftp() as sftp, sftp.open(plan.marker_path, "r") as fh:
                    marker = json.loads(fh.read(1_000_000))
                break
            except FileNotFoundError:
                # Shared filesystems can show the file seconds after the job ends.
                time.sleep(min(2**attempt, 10))
        if marker is None:
            raise AirflowException(
                f"Slurm job {event.get('job_id')} COMPLETED but {plan.marker_path} never appeared: the "
                "training script did not finish writing its outputs (or the filesystem lags). "
                "Check the job log; clear the task to run it again"
            )
        return {
            "job_id": str(event.get("job_id")),
            "job_name": plan.job_name,
            "state": event.get("state"),
            "exit_code": event.get("exit_code"),
            "run_dir": plan.run_dir,
            "output_dir": plan.output_dir,
            "log_path": plan.log_path(str(event.get("job_id"))),
            "accounting": event.get("accounting"),
            "metrics": marker.get("metrics"),
            "outputs": marker.get("files"),
            "recipe": plan.recipe.name,
            "resources": plan.resources.as_dict(),
            "adopted": bool(event.get("adopted", False)),
        }

    def on_kill(self) -> None:
        """Cancel the job when the task is killed in the worker (deferrable=False, or during submit)."""
        if not self._job_id or not self.cancel_on_kill or self._hook is None:
            return
        try:
            rc, out, err = self._hook.run(scancel_command([self._job_id]), timeout=30)
            self.log.info("scancel %s exited %s %s", self._job_id, rc, (err or out).strip()[:200])
        except Exception as exc:
            self.log.warning("could not cancel Slurm job %s: %s", self._job_id, exc)
