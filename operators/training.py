"""``RecipeTrainOperator``: the Slurm job operator fed by the validate task, preceded by the recipe's data checks.

The run's parameters arrive as the validate task's native XCom (``RunParams.to_xcom()``) and are
read back with ``RunParams.from_xcom``: typed, never re-parsed from rendered text. The recipe's
``data_checks`` (``recipe.yaml``; see :func:`aifactory.models.recipes.check_dataset`) run against
the dataset version in object storage **before anything is submitted**: a feature column that is
not numeric (from the version's manifest schema), a label column with one class. The task then
fails at once, without retries, naming the hyperparameter and the column.

Just before ``sbatch`` (:meth:`RecipeTrainOperator.before_submit`, only when a job is to be
submitted) the staged copy on the cluster is checked against the version's manifest once more and
repaired: the stage task verified it, but a file can change between then and now (a tenant's job
writing into its own area, a damaged disk, a scratch purge). The check is the stage's own
(:func:`aifactory.hpc.staging.stage_dataset`): files the staging marker still vouches for (same
size, inode and ctime) cost one ``stat``, any other file is hashed on the cluster, and only
missing or differing files are sent again before the job may read them
(``docs/fault-suite.md``, "one byte flipped"). Everything else is
:class:`~operators.slurm.SlurmJobOperator`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException

from operators.slurm import SlurmJobOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["RecipeTrainOperator"]


class RecipeTrainOperator(SlurmJobOperator):
    """Check the dataset against the recipe's ``data_checks``, then run the recipe as a Slurm job.

    :param run_params: the validate task's XCom (``validate.output``): recipe, hyperparameters and
        resources, already validated; they replace ``recipe``/``hyperparameters``/``slurm_resources``.
    :param dataset: ingest's XCom (``prefix``, ``uri``, ...): the dataset version to check; its
        prefix must lie inside the tenant's datasets area.
    :param staged: the stage task's XCom (``stage.output``): its ``remote_dir`` is the dataset
        directory on the cluster (which the plan refuses unless it lies inside the tenant's
        datasets directory).
    :param kwargs: everything :class:`~operators.slurm.SlurmJobOperator` takes.
    """

    template_fields: Sequence[str] = (*SlurmJobOperator.template_fields, "dataset", "run_params", "staged")

    def __init__(self, *, dataset: Any, run_params: Any = None, staged: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.run_params = run_params
        self.staged = staged
        self._manifest: Any = None  # the dataset version's manifest, read by check_data
        self.code_uri: str | None = None  # the tenant's own code, from the validated params
        self.code_digest: str | None = None
        self._code: Any = None  # its checked folder on this worker (fetched once per try)
        self._code_stack: ExitStack | None = None  # holds the fetched folder until the try ends

    def apply_run_params(self) -> None:
        """Take recipe, hyperparameters and resources from the validate task's typed result, and the
        dataset directory from the stage task's."""
        if self.staged is not None:
            from aifactory.errors import InputError

            remote_dir = self.staged.get("remote_dir") if isinstance(self.staged, Mapping) else None
            if not isinstance(remote_dir, str):
                raise InputError("the stage task's result names no remote_dir; clear the stage task")
            self.dataset_dir = remote_dir
        if self.run_params is None:
            return
        from aifactory.tenants import RunParams

        params = RunParams.from_xcom(self.run_params)
        self.recipe = params.recipe
        self.hyperparameters = dict(params.hyperparameters)
        self.slurm_resources = params.resources  # bounded once by validate; not re-checked against today's spec
        self.code_uri, self.code_digest = params.code_uri, params.code_digest

    # ---------------------------------------------------------------------------------------------
    # The tenant's own code (docs/own-code.md): fetched once per try, the content validate saw
    # ---------------------------------------------------------------------------------------------

    def own_code(self) -> Any:
        if not self.code_uri:
            return None
        if self._code is None:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            from aifactory.platform.objectstore import tenant_s3_conn_id
            from operators.own_code import fetched_code

            spec = self.load_spec()
            s3 = S3Hook(aws_conn_id=tenant_s3_conn_id(spec)).get_conn()  # the tenant's own credential
            self._code_stack = self._code_stack or ExitStack()
            self._code = self._code_stack.enter_context(
                fetched_code(s3, spec, self.code_uri, expect_digest=self.code_digest))
            self.log.info("own code %s: recipe %s, content sha256 %s, %d pinned requirement(s), environment %s",
                          self.code_uri, self._code.recipe.name, self._code.digest[:16],
                          len(self._code.lock.requirements), self._code.env_id)
        return self._code

    def load_recipe(self) -> Any:
        code = self.own_code()
        return code.recipe if code is not None else super().load_recipe()

    def _build_env(self, hook: Any, plan: Any) -> None:
        """Build (or find) the code's environment on the login node, as the tenant, before sbatch:
        a bad lock file fails here, before any allocation is spent."""
        from airflow.sdk.exceptions import AirflowFailException

        from aifactory import layout
        from aifactory.errors import InputError
        from aifactory.hpc.remote import q
        from aifactory.models.own_code import env_build_command, materialize_wheels, read_env_result
        from aifactory.tenants import load_cluster

        code, cluster = self._code, load_cluster(plan.cluster)
        env = layout.env_dir(plan.areas, code.env_id)
        src = env + ".src"
        try:
            command = env_build_command(env_dir=env, src_dir=src, base_python=cluster.python, lock=code.lock,
                                        with_wheels=bool(code.wheels), index_url=cluster.package_index,
                                        retention_days=cluster.env_retention_days)
        except InputError as exc:
            raise AirflowFailException(f"InputError: {exc}. Nothing was submitted to Slurm") from exc
        rc, out, err = hook.run("mkdir -p -m 0700 -- " + q(src, f"{src}/{layout.CODE_WHEELS_DIR}"), timeout=60)
        if rc != 0:
            raise AirflowException(f"could not create {src} on the cluster (exit {rc}): {err.strip()[-300:]}")
        with hook.sftp() as sftp:
            materialize_wheels(code, lambda local, remote: sftp.put(str(local), remote), src)
        self.log.info("Python environment %s: looking for it, or building it from %s (%d pinned requirement(s))",
                      code.env_id, layout.CODE_LOCK_FILE, len(code.lock.requirements))
        started = time.monotonic()
        rc, out, err = hook.run(command, timeout=1800)
        if rc != 0:
            raise AirflowFailException(
                f"building the Python environment {code.env_id} of {self.code_uri} from its {layout.CODE_LOCK_FILE} "
                f"failed on the cluster (exit {rc}): {(err.strip() or out.strip())[-1500:]}. Fix the lock file (or "
                "the wheels it names) and upload the code again; nothing was submitted to Slurm")
        reused, marker = read_env_result(out)
        for line in out.splitlines():  # the tenant's environments no run used for the cluster's retention
            if line.startswith("aifp-env: removed "):
                self.log.info("Python environment %s", line.removeprefix("aifp-env: "))
        if reused:
            self.log.info("Python environment %s reused: built %s from lock sha256 %s; the job runs %s/bin/python",
                          code.env_id, marker.get("built_at", "earlier"), code.lock.sha256[:16], env)
        else:
            self.log.info("Python environment %s built in %.1f s from lock sha256 %s (%s); the job runs %s/bin/python",
                          code.env_id, time.monotonic() - started, code.lock.sha256[:16],
                          ", ".join(marker.get("requirements") or []) or "no extra packages", env)

    def check_data(self, context: Context) -> list[str]:
        """Run the recipe's data checks; AirflowFailException (no retry) naming the field if one fails."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from airflow.sdk.exceptions import AirflowFailException

        from aifactory import layout
        from aifactory.data.manifest import require_manifest
        from aifactory.errors import InputError
        from aifactory.models.recipes import check_dataset, distinct_values_s3
        from aifactory.platform.objectstore import tenant_s3_conn_id
        from aifactory.tenants import load_tenant
        from aifactory.text import shown

        try:
            self.apply_run_params()
            plan = self.plan(context)  # validated recipe and hyperparameters; touches nothing
            spec = load_tenant(self.tenant)
            prefix = self.dataset.get("prefix") if isinstance(self.dataset, Mapping) else None
            if layout.dataset_in_prefix(prefix, spec.tenant) is None:
                raise InputError(f"dataset prefix {shown(prefix)} is not one dataset version inside the tenant's "
                                 f"datasets area {layout.datasets_prefix(spec.tenant)}; clear the ingest task")
            s3 = S3Hook(aws_conn_id=tenant_s3_conn_id(spec)).get_conn()  # the tenant's own credential
            manifest = self._manifest = require_manifest(s3, spec.bucket, prefix)
            checked = check_dataset(
                self.load_recipe(),
                plan.hyperparameters,
                manifest.schema,
                distinct_values_s3(s3, spec.bucket, prefix, [f.path for f in manifest.files]),
                dataset=layout.s3_uri(spec.bucket, prefix),
            )
        except InputError as exc:
            raise AirflowFailException(f"InputError: {exc}. Nothing was submitted to Slurm") from exc
        self.log.info("recipe %s: data checks passed (%s)", plan.recipe, ", ".join(checked) or "none declared")
        return checked

    def before_submit(self, hook: Any, plan: Any, context: Context) -> None:
        """The tenant's own code gets its environment; the staged copy must still be the dataset
        version the job is planned on: checked against the manifest on the cluster, and what
        differs is sent again (see the module docstring)."""
        if self._code is not None:
            self._build_env(hook, plan)
        if self.staged is None or self._manifest is None:
            return  # no stage task upstream (a DAG author's own dataset_dir): nothing to compare with
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        from aifactory.errors import InputError
        from aifactory.hpc.staging import stage_dataset
        from aifactory.platform.objectstore import tenant_s3_conn_id
        from aifactory.tenants import load_cluster, load_tenant
        from operators.hooks import FactorySSHHook
        from operators.stages import lost_connection, staging_options, task_token

        spec = load_tenant(self.tenant)
        cluster = load_cluster(spec.cluster)
        try:
            options = staging_options(spec, cluster)
            # bulk data: on the site's data-transfer node, as the stage task (the login node's hook submits)
            with FactorySSHHook(ssh_conn_id=plan.ssh_conn_id, transfer=True).shell() as shell:
                result = stage_dataset(
                    S3Hook(aws_conn_id=tenant_s3_conn_id(spec)).get_conn(), shell, bucket=spec.bucket,
                    dataset_prefix=self.dataset["prefix"], manifest=self._manifest,
                    areas=spec.areas(cluster), log=self.log.info, options=options,
                    owner=task_token(context),
                )
        except InputError as exc:  # a symlink planted in the dataset's path: refused, as by the stage task
            raise AirflowFailException(f"{type(exc).__name__}: {exc}. Nothing was submitted to Slurm") from exc
        except Exception as exc:
            lost = lost_connection(exc)
            if lost is None:
                raise
            raise AirflowException(f"checking the staged copy before sbatch: {lost} did not answer or dropped the "
                                   f"connection ({type(exc).__name__}: {exc}); nothing was submitted. The task "
                                   "is retried") from exc
        if result.remote_dir != plan.dataset_dir:
            raise AirflowFailException(
                f"the stage task's result names {plan.dataset_dir}, but the dataset version is staged at "
                f"{result.remote_dir}; nothing was submitted. Clear the stage task")
        if result.skipped:
            self.log.info("staged copy %s checked against the manifest before sbatch: intact", result.remote_dir)
        else:
            self.log.warning(
                "staged copy %s no longer matched the dataset's manifest: %d file(s) re-staged and verified by "
                "sha256 before sbatch (%d kept)", result.remote_dir, result.sent_files, result.reused_files)

    def execute(self, context: Context) -> dict[str, Any] | None:
        try:
            self.check_data(context)
            return super().execute(context)
        finally:
            if self._code_stack is not None:
                self._code_stack.close()  # the fetched code (its files are uploaded by now, or not needed)
            self._code = self._code_stack = None
