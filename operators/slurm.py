"""``SlurmJobOperator``: run one recipe as one Slurm job over SSH, deferring while it runs.

The operator is an adapter; the engine's rules are pure functions in :mod:`aifactory.hpc.slurm`.
Flow of :meth:`SlurmJobOperator.execute`:

1. **Plan before any side effect** (:func:`~aifactory.hpc.slurm.plan.plan_job`): tenant spec,
   cluster spec, recipe, hyperparameters, resources, run and dataset directories, sbatch
   arguments, ``params.json`` and its digest.
2. **Decide about an earlier try's job** (:func:`~aifactory.hpc.slurm.decision.decide_prior_job`)
   from the facts :func:`operators.slurm_facts.gather_facts` collects: the job id saved in the task
   state store, squeue and sacct by the job's deterministic name, the completion marker. Re-attach,
   adopt, refuse, or:
3. **Check the allocation** (:func:`operators.slurm_facts.check_budget`): the tenant's remaining
   GrpTRESMins must hold the job's nodes x CPUs x time limit, else fail with the figures and whom
   to ask, before any side effect (Slurm not answering is a refusal too). Then
   :meth:`~SlurmJobOperator.before_submit` (a subclass's check of the job's inputs), then
   **submit**: create the run dir (0700) over SFTP, upload ``params.json`` (JSON, never shell) and
   the job's files, run ``sbatch`` with quoted ``--opt=value`` options under the tenant's account,
   and save the job id with the plan at once.
4. **Defer** to :class:`~operators.triggers.SlurmJobTrigger` (or watch in the worker when
   ``deferrable=False``) carrying the plan; :meth:`~SlurmJobOperator.execute_complete` finishes
   with that plan, never with the tenant spec as it is now, checks the completion marker (its
   params digest included) and returns a small dict for XCom, or raises with the log tail.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, BaseOperator, conf

from aifactory.errors import InputError
from aifactory.hpc.slurm import (
    Resources,
    accounting,
    failure_message,
    parse_sacct,
    parse_sbatch_output,
    read_log_command,
    sacct_command,
    scancel_command,
    select_record,
)
from aifactory.hpc.slurm.decision import Action, MarkerFact, decide_prior_job
from aifactory.hpc.slurm.plan import JobPlan, TaskIds, plan_job
from aifactory.models.recipes import DEFAULT_RECIPES_ROOT, Recipe, load_recipes
from aifactory.tenants import load_cluster, load_tenant, parse_cluster, parse_tenant
from aifactory.tenants.spec import TenantSpec
from operators.hooks import FactorySSHHook
from operators.slurm_facts import check_budget, gather_facts, marker_outputs, read_marker
from operators.slurm_rundir import move_outputs_aside, prepare_run_dir
from operators.triggers import SlurmJobTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["STATE_KEY", "SlurmJobOperator"]

#: task_state_store key of the submitted job (id, name, run dir, plan). Renaming it breaks in-flight retries.
STATE_KEY = "slurm_job"


def _as_mapping(value: Any, what: str) -> dict[str, Any]:
    """A dict, or JSON text of one (a DAG author's rendered template). Nothing is evaluated."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and len(value) <= 1_000_000:
        try:
            parsed = json.loads(value) if value.strip() else {}
        except ValueError as exc:
            raise InputError(f"{what} is not a JSON object: {exc}") from exc
        if isinstance(parsed, Mapping):
            return dict(parsed)
    raise InputError(f"{what} must be a mapping (or JSON text of one), got {type(value).__name__}")


class SlurmJobOperator(BaseOperator):
    """Train one recipe on an HPC cluster as one Slurm job, submitted over SSH.

    The DAG author passes *what* to run (tenant, recipe, data, hyperparameters, resources); the
    *where* and *as whom* (host, connection, account, QOS, Python) come from platform-owned specs,
    never from a user's params.

    Returns (XCom) a dict: ``job_id``, ``job_name``, ``state``, ``exit_code``, ``run_dir``,
    ``output_dir``, ``log_path``, ``accounting`` (elapsed_s, cpu_hours, gpu_hours, alloc_tres...),
    ``metrics`` (from the completion marker), ``outputs`` (file -> sha256, bytes), ``recipe``,
    ``resources``, ``params_sha256``, ``adopted`` (True if an earlier try's finished job was reused).

    .. note::
        ``on_kill`` cancels the job when the task is killed in a worker (``deferrable=False``).
        While deferred, the trigger's ``on_kill`` does it (user actions only, never on triggerer
        restarts). A task that fails after losing contact with Slurm does NOT cancel its job: a
        retry reattaches to it.

    :param tenant: tenant name; its spec is ``include/tenants/<tenant>.yaml`` unless ``tenant_spec``.
    :param cluster: cluster name (``include/clusters/<name>.yaml``) or the spec dict itself.
        Defaults to the tenant spec's ``cluster``; another cluster than the tenant's is refused.
    :param recipe: recipe name (a folder of ``recipes_root``); must be in the tenant's ``recipes``.
    :param run_dir: the run directory, inside the runs directory of the tenant's project area; default
        ``runs/<job name>``, the same for every try of the task.
    :param dataset_dir: the staged dataset, inside the datasets of the tenant's scratch area; ``None`` for
        a job that reads no dataset (the platform's probe jobs).
    :param hyperparameters: the recipe's hyperparameters (a dict, or JSON text of one).
    :param slurm_resources: ``partition``, ``nodes``, ``cpus_per_task``, ``mem_gb``, ``gpus_per_node``,
        ``time_limit_minutes``; missing keys take the recipe's defaults. (Not ``resources``:
        BaseOperator already has an argument of that name, for executor resources.)
    :param deferrable: defer to the triggerer while the job runs (default from
        ``[operators] default_deferrable``, else True); False polls inside the worker.
    :param tenant_spec: the tenant spec dict (tests; normally read from ``include/tenants``).
    :param recipes_root: where recipes live (tests, platform recipes).
    :param poll_interval: override the cluster spec's ``poll_interval_s`` (never below its floor).
    :param sacct_lookback: how far back ``sacct --name`` looks for an earlier try's job.
    :param deferral_timeout: give up watching after this long (the job is NOT cancelled).
    :param cancel_on_kill: cancel the Slurm job when a user kills the task.
    :param run_key: what the job's name and comment are keyed on instead of the run id (templated;
        a feed's window training passes its window's content key, so that a second training over
        the same window re-attaches to or adopts the first one's job instead of submitting).
    :param purpose: what the job is for (``train``, ``feed``, ``probe``): it picks the tenant's QOS
        when ``slurm_resources`` is a request (the validate task's resources carry theirs).
    """

    template_fields: Sequence[str] = ("recipe", "run_dir", "dataset_dir", "hyperparameters", "slurm_resources",
                                      "run_key")
    template_fields_renderers = {"hyperparameters": "json", "slurm_resources": "json"}
    ui_color = "#d6e4f0"

    def __init__(
        self,
        *,
        tenant: str,
        recipe: str | None = None,
        dataset_dir: str | None = None,
        run_dir: str | None = None,
        hyperparameters: Mapping[str, Any] | str | None = None,
        slurm_resources: Mapping[str, Any] | str | None = None,
        cluster: str | Mapping[str, Any] | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=True),
        tenant_spec: Mapping[str, Any] | None = None,
        recipes_root: str | Path | None = None,
        poll_interval: float | None = None,
        sacct_lookback: str = "now-7days",
        deferral_timeout: timedelta | None = None,
        cancel_on_kill: bool = True,
        run_key: str | None = None,
        purpose: str = "train",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.run_key = run_key
        self.purpose = purpose
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
        self._hook_conn_id: str | None = None

    # ---------------------------------------------------------------------------------------------
    # 1. Plan (pure: no network, no files on the cluster)
    # ---------------------------------------------------------------------------------------------

    def load_recipe(self) -> Recipe:
        """The recipe folder named by ``recipe``; the name never becomes a path on its own."""
        recipe = load_recipes(self.recipes_root).get(self.recipe) if isinstance(self.recipe, str) else None
        if recipe is None:
            raise InputError(f"recipe {self.recipe!r:.60} is not a recipe enabled for tenant {self.tenant!r}")
        return recipe

    def load_spec(self) -> TenantSpec:
        spec = parse_tenant(self.tenant_spec, "tenant_spec") if self.tenant_spec is not None else load_tenant(self.tenant)
        if spec.tenant != self.tenant:
            raise InputError(f"tenant spec names tenant {spec.tenant!r}, expected {self.tenant!r}")
        return spec

    def plan(self, context: Context) -> JobPlan:
        """Validate everything and decide names, paths and bytes. Raises InputError; touches nothing."""
        spec = self.load_spec()
        if isinstance(self.cluster, Mapping):
            cluster = parse_cluster(self.cluster, "cluster")
        else:
            cluster = load_cluster(self.cluster or spec.cluster)
        recipe = self.load_recipe()
        own = self.own_code()
        if own is None and not spec.allows_recipe(recipe.name):
            raise InputError(f"recipe {recipe.name!r} is not a recipe enabled for tenant {self.tenant!r}; "
                             f"allowed: {list(spec.recipes)}")
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        task = TaskIds(dag_id=ti.dag_id, run_id=self.run_key or ti.run_id, task_id=ti.task_id,
                       map_index=-1 if map_index is None else int(map_index),
                       try_number=getattr(ti, "try_number", None))
        return plan_job(
            spec, cluster, recipe,
            hyperparameters=_as_mapping(self.hyperparameters, "hyperparameters"),
            resources=self.slurm_resources if isinstance(self.slurm_resources, Resources)
            else _as_mapping(self.slurm_resources, "resources"),
            task=task, dataset_dir=self.dataset_dir or None, run_dir=self.run_dir,
            poll_interval=self.poll_interval, own_code=own, purpose=self.purpose,
        )

    def own_code(self) -> Any:
        """The tenant's own code this task trains (an ``aifactory.models.own_code.OwnCode``), or None
        for a platform recipe (RecipeTrainOperator fetches it)."""
        return None

    def _get_hook(self, plan: JobPlan) -> FactorySSHHook:
        if self._hook is None or self._hook_conn_id != plan.ssh_conn_id:
            self._hook, self._hook_conn_id = FactorySSHHook(ssh_conn_id=plan.ssh_conn_id), plan.ssh_conn_id
        return self._hook

    # ---------------------------------------------------------------------------------------------
    # 2. Decide about an earlier try's job, then act
    # ---------------------------------------------------------------------------------------------

    @staticmethod
    def _saved(context: Context, plan: JobPlan) -> dict[str, Any]:
        store = context.get("task_state_store")
        saved = store.get(STATE_KEY) if store is not None else None
        if isinstance(saved, Mapping) and saved.get("job_name") == plan.job_name and saved.get("job_id"):
            return dict(saved)
        return {}

    @staticmethod
    def _save(context: Context, job_id: str, plan: JobPlan) -> None:
        store = context.get("task_state_store")
        if store is None:
            return
        store.set(STATE_KEY, {"job_id": job_id, "job_name": plan.job_name, "run_dir": plan.run_dir,
                              "plan": plan.to_json()})

    def execute(self, context: Context) -> dict[str, Any] | None:
        plan = self.plan(context)
        hook = self._get_hook(plan)
        saved = self._saved(context, plan)
        try:
            decision = decide_prior_job(gather_facts(hook, plan, saved.get("job_id"), self.sacct_lookback))
            self.log.info("Earlier job: %s -> %s", decision.reason, decision.action)
            if decision.action is Action.REFUSE:
                raise AirflowException(f"Not submitting: {decision.reason}")
            if decision.action in (Action.ADOPT, Action.REATTACH):
                job_id = str(decision.job_id)
                # The plan the job was submitted with, when this task saved it; else today's (same digest).
                if saved.get("job_id") == job_id and isinstance(saved.get("plan"), Mapping):
                    plan = JobPlan.from_json(saved["plan"])
                self._save(context, job_id, plan)
                if decision.action is Action.ADOPT:
                    self._job_id = job_id
                    return self._finish(plan, {"status": "succeeded", "job_id": job_id, "state": "COMPLETED",
                                               "exit_code": 0, "accounting": self._accounting(hook, job_id, plan),
                                               "adopted": True})
            else:
                self._check_budget(hook, plan)
                self.before_submit(hook, plan, context)
                if decision.move_outputs_aside:
                    self.log.warning("Moved the earlier job's outputs aside to %s", move_outputs_aside(hook, plan))
                job_id = self._submit(hook, plan, context)
            self._job_id = job_id
        finally:
            # Do not hold an SSH session while deferred or idle; the inline watcher reconnects.
            hook.close()

        trigger = self._trigger(plan, job_id)
        if self.deferrable:
            self.defer(trigger=trigger, method_name="execute_complete", timeout=self.deferral_timeout,
                       kwargs={"plan": plan.to_json()})
        return self._watch_inline(context, plan, trigger)

    def before_submit(self, hook: FactorySSHHook, plan: JobPlan, context: Context) -> None:
        """Called once the decision is to submit, after the allocation check and before anything is
        written for the job; never when re-attaching to or adopting an earlier try's job. A
        subclass checks what the job will read here (RecipeTrainOperator: the staged dataset)."""

    def _check_budget(self, hook: FactorySSHHook, plan: JobPlan) -> None:
        """Before any submission: the tenant's allocation must hold this job (Slurm would otherwise
        accept it and leave it PENDING with AssocGrpCPUMinutesLimit, never starting it)."""
        allocation = self.load_spec().allocation
        contact = allocation.contact if allocation is not None else "the platform team"
        verdict = check_budget(hook, plan, contact)
        if not verdict.enough and verdict.budget is None:
            raise AirflowException(verdict.message)  # Slurm did not answer: a retry may get an answer
        if not verdict.enough:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(verdict.message)  # no retry: only more allocation helps
        self.log.info("Allocation: %s", verdict.message)

    def _accounting(self, hook: FactorySSHHook, job_id: str, plan: JobPlan) -> dict[str, Any] | None:
        rc, out, _ = hook.run(sacct_command([job_id]), timeout=60)
        record = select_record(parse_sacct(out), job_id=job_id, name=plan.job_name) if rc == 0 else None
        return accounting(record) if record is not None else None

    # ---------------------------------------------------------------------------------------------
    # 3. Submit
    # ---------------------------------------------------------------------------------------------

    def _submit(self, hook: FactorySSHHook, plan: JobPlan, context: Context) -> str:
        try:
            prepare_run_dir(hook, plan)
        except InputError as exc:  # the area or the run directory's path is wrong: a retry cannot help
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"InputError: {exc}. Nothing was submitted to Slurm") from exc
        try:
            rc, out, err = hook.run(plan.sbatch_command, timeout=120)
        except Exception:
            # sbatch may have created the job before the connection broke: the retry finds it by name.
            self.log.exception("sbatch did not answer; a retry will look the job up by name %s", plan.job_name)
            raise
        res = plan.resources
        if rc != 0:
            raise AirflowException(
                f"sbatch refused the job (exit {rc}): {err.strip()[:1000]}. Check the tenant's account "
                f"{res['account']!r}, partition {res['partition']!r} and limits"
            )
        job_id = parse_sbatch_output(out).job_id
        if context.get("task_state_store") is None:
            self.log.warning("task_state_store unavailable: a retry will find job %s by name only", job_id)
        self._save(context, job_id, plan)
        self.log.info("Submitted Slurm job %s (%s) account=%s partition=%s run_dir=%s",
                      job_id, plan.job_name, res["account"], res["partition"], plan.run_dir)
        return job_id

    # ---------------------------------------------------------------------------------------------
    # 4. Watch and finish, with the plan the job was submitted with
    # ---------------------------------------------------------------------------------------------

    def _trigger(self, plan: JobPlan, job_id: str) -> SlurmJobTrigger:
        return SlurmJobTrigger(
            ssh_conn_id=plan.ssh_conn_id, job_id=job_id, job_name=plan.job_name, log_path=plan.log_path(job_id),
            poll_interval=plan.poll_interval, poll_interval_floor=plan.poll_interval_floor,
            cancel_on_kill=self.cancel_on_kill,
        )

    def _watch_inline(self, context: Context, plan: JobPlan, trigger: SlurmJobTrigger) -> dict[str, Any]:
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

        return self.execute_complete(context, asyncio.run(first_event()), plan=plan.to_json())

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

    def _carried_plan(self, context: Context, job_id: str, plan: Mapping[str, Any] | None) -> JobPlan:
        """The plan fixed at submission: from the deferral's kwargs, else the task state store."""
        if plan is None:
            store = context.get("task_state_store")
            saved = store.get(STATE_KEY) if store is not None else None
            if isinstance(saved, Mapping) and str(saved.get("job_id")) == job_id:
                plan = saved.get("plan")
        if not isinstance(plan, Mapping):
            raise AirflowException(f"Slurm job {job_id} ended but the plan it was submitted with is not "
                                   "carried with it (a task deferred by an older version?); clear the task")
        return JobPlan.from_json(plan)

    def execute_complete(self, context: Context, event: dict[str, Any],
                         plan: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: verify success or raise an actionable error."""
        job_id = str(event.get("job_id"))
        carried = self._carried_plan(context, job_id, plan)
        self._job_id = job_id
        hook = self._get_hook(carried)
        try:
            if event.get("log_offset") is not None:
                rest = self._read_log(hook, carried.log_path(job_id), int(event["log_offset"]), 256 * 1024)
                for line in rest.splitlines():
                    self.log.info("[slurm %s] %s", job_id, line)
            if event.get("status") != "succeeded":
                tail = self._read_log(hook, carried.log_path(job_id), None, 4096)
                tail_lines = "\n".join(tail.splitlines()[-30:])
                message = failure_message(
                    event.get("raw_state") or event.get("state") or "UNKNOWN", job_id=job_id, log_tail=tail,
                    message=event.get("message"), exit_code=event.get("exit_code"), signal=event.get("signal"),
                    reason=event.get("reason"), resources=carried.resources,
                )
                raise AirflowException(
                    f"{message}\nLog: {carried.log_path(job_id)} on cluster via {carried.ssh_conn_id}; "
                    f"last lines:\n{tail_lines}"
                )
            return self._finish(carried, event)
        finally:
            hook.close()

    def _finish(self, plan: JobPlan, event: dict[str, Any]) -> dict[str, Any]:
        """COMPLETED is not enough (docs/failure-modes.md, 11): the job's own marker must be there,
        recording this plan's params digest."""
        hook = self._get_hook(plan)
        job_id = str(event.get("job_id"))
        for attempt in range(6):
            fact, marker, why = read_marker(hook, plan)
            if fact is not MarkerFact.ABSENT:
                break
            time.sleep(min(2**attempt, 10))  # shared filesystems can show the file seconds after the job ends
        if marker is None:
            raise AirflowException(
                f"Slurm job {job_id} COMPLETED but {plan.marker_path} is {fact.value}{': ' + why if why else ''}: "
                "the training script did not finish writing its outputs (or the filesystem lags). "
                "Check the job log; clear the task to run it again"
            )
        if marker.params_sha256 != plan.params_sha256:
            raise AirflowException(
                f"Slurm job {job_id} COMPLETED but its completion marker records params digest "
                f"{marker.params_sha256}, not this run's {plan.params_sha256}: the outputs in {plan.output_dir} "
                "are another run's. Clear the task to run it again"
            )
        return {
            "job_id": job_id,
            "job_name": plan.job_name,
            "state": event.get("state"),
            "exit_code": event.get("exit_code"),
            "run_dir": plan.run_dir,
            "output_dir": plan.output_dir,
            "log_path": plan.log_path(job_id),
            "accounting": event.get("accounting"),
            "metrics": dict(marker.metrics),
            "outputs": marker_outputs(marker),
            "recipe": plan.recipe,
            "resources": dict(plan.resources),
            "params_sha256": plan.params_sha256,
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

