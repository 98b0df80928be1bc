"""The pipeline's data stages as thin Airflow operators over :mod:`aifactory`.

Each operator resolves the tenant spec (platform-owned), reads the run's parameters as the validate
task typed them (its native XCom, :meth:`aifactory.tenants.RunParams.from_xcom`; the raw form is
validated once, by the validate task), builds its clients from Airflow connections, and makes one
call into the Airflow-free core. XCom carries only small dicts: names, versions, URIs, digests and
counts, never data or secrets. A prefix or path read from XCom is refused unless it lies inside the
tenant's own area: anyone with edit rights on a run can rewrite an XCom value through the API
(``docs/failure-modes.md``, "Security").
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator

from aifactory.errors import FactoryError, InputError

if TYPE_CHECKING:
    from airflow.sdk import Context

    from aifactory.data.manifest import DatasetManifest
    from aifactory.hpc.staging import StagingOptions
    from aifactory.layout import TenantAreas
    from aifactory.tenants import ClusterSpec, RunParams, TenantSpec

def _fail(exc: FactoryError) -> NoReturn:
    """Turn a factory error into a task failure that is not retried when retrying cannot help."""
    from airflow.sdk.exceptions import AirflowFailException

    if isinstance(exc, InputError):
        # The input will be just as bad on the next try: fail now, with the message in the log.
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
    raise exc


def check_dataset_prefix(prefix: Any, spec: TenantSpec) -> str:
    """Refuse (no retry) a dataset prefix that is not inside the tenant's datasets area."""
    from aifactory import layout
    from aifactory.text import shown

    if layout.dataset_in_prefix(prefix, spec.tenant) is None:
        _fail(InputError(f"dataset prefix {shown(prefix)} from ingest's result is not inside this tenant's "
                         f"datasets area s3://{spec.bucket}/{layout.datasets_prefix(spec.tenant)}; refused, "
                         "nothing was read or written. Clear the ingest task to produce it again"))
    return prefix


def check_output_dir(output_dir: Any, areas: TenantAreas) -> str:
    """Refuse (no retry) a job output directory that is not inside the tenant's runs directory."""
    from aifactory import layout
    from aifactory.text import shown

    runs = layout.runs_dir(areas)
    if not isinstance(output_dir, str) or not layout.path_inside(output_dir, runs):
        _fail(InputError(f"output directory {shown(output_dir)} from the train task's result is not inside this "
                         f"tenant's runs directory {runs}; refused, nothing was published. Clear the train task "
                         "to produce it again"))
    return output_dir


def staging_options(spec: TenantSpec, cluster: ClusterSpec) -> StagingOptions:
    """How the tenant's datasets reach its cluster: the tenant's mode, else the cluster's; the
    cluster's parallelism, URL lifetime and Python. The stage task and the train task's check of
    the staged copy before sbatch (operators/training.py) stage alike."""
    from aifactory.hpc.staging import StagingOptions

    return StagingOptions(mode=spec.staging_mode or cluster.staging_mode, parallel=cluster.staging_parallel,
                          url_ttl_s=cluster.staging_url_ttl_s, python=cluster.python)


def lost_connection(exc: BaseException) -> str | None:
    """Which service a lost or refused connection was to (the object store, the cluster's sshd),
    or None when ``exc`` is something else."""
    from botocore.exceptions import ConnectionError as S3ConnectionError
    from botocore.exceptions import HTTPClientError
    from paramiko import SSHException

    if isinstance(exc, (S3ConnectionError, HTTPClientError)):
        return "the object store"
    if isinstance(exc, (SSHException, EOFError, ConnectionError, TimeoutError)) or (
            isinstance(exc, OSError) and "Socket is closed" in str(exc)):  # paramiko's, on a dead transport
        return "the cluster's sshd"
    return None


def store_refusal(exc: BaseException) -> str | None:
    """The S3 operation the object store refused (AccessDenied, 403), or None for anything else."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return None
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if error.get("Code") not in ("AccessDenied", "403", "Forbidden") and status != 403:
        return None
    return str(exc.operation_name or "a request")


def task_token(context: Context) -> str:
    """12 hex digits naming this task instance, the same for each of its tries (staging's owner)."""
    import hashlib

    ti = context["ti"]
    key = f"{ti.dag_id}\0{ti.run_id}\0{ti.task_id}\0{getattr(ti, 'map_index', -1)}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class FactoryOperator(BaseOperator):
    """Common base: tenant and cluster specs, validated params, clients.

    :param tenant: tenant name; its spec comes from ``include/tenants/<tenant>.yaml``.
    :param validated: the validate task's XCom (``validate.output``, :meth:`RunParams.to_xcom`);
        templated, so it resolves to the native value at run time.

    Every client is the tenant's own: S3 through ``identity.s3_conn_id`` (a credential allowed only
    the tenant's bucket), SSH through ``identity.ssh_conn_id``; the platform's never.
    """

    ui_color = "#e8f0fe"
    template_fields: Sequence[str] = ("validated",)

    def __init__(self, *, tenant: str, validated: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tenant = tenant
        self.validated = validated

    # -- specs and params -----------------------------------------------------------------------
    def tenant_spec(self) -> TenantSpec:
        from aifactory.tenants import load_tenant

        return load_tenant(self.tenant)

    def cluster_spec(self) -> ClusterSpec:
        from aifactory.tenants import load_cluster

        return load_cluster(self.tenant_spec().cluster)

    def run_params(self, context: Context) -> RunParams:
        """The validate task's typed result (type checks only; validation happened once, there)."""
        from aifactory.tenants import RunParams

        if self.validated is None:
            _fail(InputError(f"task {self.task_id} was given no validated params; the DAG must pass "
                             "validated=validate.output"))
        return self.call(RunParams.from_xcom, self.validated)

    def areas(self, spec: TenantSpec) -> TenantAreas:
        """The tenant's project and scratch areas on its cluster (``TenantSpec.areas``)."""
        return self.call(spec.areas, self.cluster_spec())

    # -- clients --------------------------------------------------------------------------------
    def s3(self) -> Any:
        """The tenant's own S3 credential (its connection; allowed only its bucket), never the platform's."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from aifactory.platform.objectstore import tenant_s3_conn_id

        return S3Hook(aws_conn_id=self.call(tenant_s3_conn_id, self.tenant_spec())).get_conn()

    def remote(self, *, transfer: bool = False) -> Any:
        """SSH as the tenant's own login (its connection, key and Unix user), never the service's;
        ``transfer``: on the site's data-transfer node (bulk data: staging, export)."""
        from aifactory.hpc.slurm import tenant_ssh_conn_id
        from operators.hooks import FactorySSHHook

        return FactorySSHHook(ssh_conn_id=self.call(tenant_ssh_conn_id, self.tenant_spec(), self.cluster_spec()),
                              transfer=transfer)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one core function; factory errors become readable task failures, and a connection
        lost to the object store or the cluster one that says which (retried: it may come back)."""
        try:
            return fn(*args, **kwargs)
        except FactoryError as exc:
            _fail(exc)
        except Exception as exc:
            self.explain(exc)
            raise

    def explain(self, exc: Exception) -> None:
        """Raise a task failure that says what happened when ``exc`` is the object store refusing
        the tenant's credential (not retried: only a policy change helps) or a connection lost to
        the object store or the cluster (retried: it may come back); return otherwise."""
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        refused = store_refusal(exc)
        if refused is not None:
            raise AirflowFailException(
                f"{self.task_id}: the object store refused {refused} with tenant {self.tenant!r}'s own credential "
                f"({exc}). Its IAM policy does not allow it: `make doctor` checks each tenant's credential and "
                "`make onboard` sets the policy again; then clear this task. Nothing half-done is used") from exc
        lost = lost_connection(exc)
        if lost is not None:
            raise AirflowException(
                f"{self.task_id}: {lost} did not answer or dropped the connection ({type(exc).__name__}: {exc}). "
                "Nothing half-done is used: a staged dataset is renamed into place and a model's manifest.json "
                "written only when everything before it is verified. The task is retried; once the service "
                "answers again, clear the task if its retries are spent") from exc


class ValidateRunOperator(FactoryOperator):
    """Check every parameter of the run before any side effect; return the typed params."""

    def execute(self, context: Context) -> dict[str, Any]:
        from aifactory.tenants import validate_run_params
        from aifactory.text import shown

        spec = self.tenant_spec()
        with ExitStack() as held:
            def own_code(prefix: str) -> Any:  # recipe own-code: the tenant's folder, checked here first
                from aifactory import layout
                from operators.own_code import fetched_code

                return held.enter_context(fetched_code(self.s3(), spec, layout.s3_uri(spec.bucket, prefix)))

            params = self.call(validate_run_params, context["params"], spec, own_code=own_code)
        self.log.info("run parameters are valid: recipe=%s resources=%s", shown(params.recipe),
                      params.resources.as_dict())
        if params.code_uri:
            self.log.info("own code %s: recipe.yaml, %s and every .py file checked; content sha256 %s (later "
                          "tasks train exactly this)", params.code_uri, "requirements.lock", params.code_digest)
        # the typed result every later stage reads (RunParams.from_xcom), never the raw form again
        return params.to_xcom()


class IngestOperator(FactoryOperator):
    """Raw objects in the tenant's S3 area -> a versioned Parquet dataset with a manifest.

    :param dataset_name: the dataset's name (``layout.NAME_RE``); None derives it from the source
        object's name. A feed's partitions are versions of the dataset named after the feed.
    """

    template_fields: Sequence[str] = ("validated", "dataset_name")

    def __init__(self, *, dataset_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataset_name = dataset_name

    def execute(self, context: Context) -> dict[str, Any]:
        from aifactory import layout
        from aifactory.data.ingest import ingest_dataset

        spec = self.tenant_spec()
        params = self.run_params(context)
        with tempfile.TemporaryDirectory(prefix="aifp-ingest-") as tmp:
            manifest = self.call(
                ingest_dataset,
                self.s3(),
                source_uri=params.dataset_uri,
                bucket=spec.bucket,
                tenant=spec.tenant,
                workdir=Path(tmp),
                log=self.log.info,
                dataset_name=self.dataset_name,
            )
        prefix = spec.dataset_prefix(manifest.name, manifest.version)
        check_dataset_prefix(prefix, spec)
        return {
            "name": manifest.name,
            "version": manifest.version,
            "uri": layout.s3_uri(spec.bucket, prefix),
            "prefix": prefix,
            "rows": manifest.rows,
            "files": len(manifest.files),
            "manifest_sha256": manifest.manifest_sha256,
            "source_uri": params.dataset_uri,
        }


class DatasetOperator(FactoryOperator):
    """A stage that works on the dataset version ingest produced.

    :param dataset: ingest's XCom (``name``, ``version``, ``prefix``, ``uri``, ...); templated, so
        ``ingest.output`` resolves at run time.
    """

    template_fields: Sequence[str] = ("dataset", "validated")

    def __init__(self, *, dataset: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset

    def manifest(self, s3: Any, spec: TenantSpec) -> DatasetManifest:
        """The version's manifest, after refusing a prefix outside the tenant's datasets area."""
        from aifactory.data.manifest import require_manifest

        prefix = self.dataset.get("prefix") if isinstance(self.dataset, dict) else None
        check_dataset_prefix(prefix, spec)
        return self.call(require_manifest, s3, spec.bucket, prefix)


class QualityGateOperator(DatasetOperator):
    """Validate the dataset version with the tenant's Great Expectations suite; fail with a summary."""

    def recipe_suite(self, params: RunParams) -> str | None:
        """The suite the run's platform recipe asks for (``quality_suite:`` in its recipe.yaml: the
        shape of data it trains on); None for the tenant's own code, which chooses no gate."""
        from aifactory.layout import OWN_CODE_RECIPE
        from aifactory.models.recipes import load_recipes

        if params.recipe == OWN_CODE_RECIPE:
            return None
        recipe = self.call(load_recipes).get(params.recipe)
        return recipe.quality_suite if recipe is not None else None

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from aifactory.data.quality import suite_path, validate_dataset, write_quality_result
        from aifactory.errors import QualityGateFailed
        from aifactory.text import shown

        spec = self.tenant_spec()
        params = self.run_params(context)
        s3 = self.s3()
        manifest = self.manifest(s3, spec)
        with tempfile.TemporaryDirectory(prefix="aifp-quality-") as tmp:
            try:
                summary = validate_dataset(
                    s3,
                    bucket=spec.bucket,
                    manifest=manifest,
                    dataset_prefix=self.dataset["prefix"],
                    suite_path=suite_path(spec.suite_for(self.dataset["name"], self.recipe_suite(params))),
                    params=params.hyperparameters,
                    workdir=Path(tmp),
                    log=self.log.info,
                )
            except QualityGateFailed as exc:
                # the full (value-free) result is stored beside the dataset version either way, per
                # suite and suite parameters; the version's manifest.json is never rewritten
                verdict = self.call(write_quality_result, s3, bucket=spec.bucket,
                                    dataset_prefix=self.dataset["prefix"], summary=exc.summary)
                self.log.info("quality verdict failed stored at %s", shown(verdict["report_key"]))
                raise AirflowFailException(f"quality gate failed for {self.dataset['uri']}\n{exc}") from exc
            except FactoryError as exc:
                _fail(exc)
            except Exception as exc:
                self.explain(exc)
                raise
        verdict = self.call(write_quality_result, s3, bucket=spec.bucket, dataset_prefix=self.dataset["prefix"],
                            summary=summary)
        self.log.info("quality verdict %s stored at %s", verdict["verdict"], shown(verdict["report_key"]))
        return verdict


class StageDatasetOperator(DatasetOperator):
    """Copy the dataset version to the tenant's HPC area (push over SFTP, or pull from presigned
    URLs by a fixed script on the HPC side, per the cluster/tenant spec); verify by sha256 there."""

    def execute(self, context: Context) -> dict[str, Any]:
        from aifactory.hpc.staging import stage_dataset

        spec = self.tenant_spec()
        cluster = self.cluster_spec()
        options = self.call(staging_options, spec, cluster)
        s3 = self.s3()
        manifest = self.manifest(s3, spec)
        with self.remote(transfer=True).shell() as shell:
            result = self.call(
                stage_dataset,
                s3,
                shell,
                bucket=spec.bucket,
                dataset_prefix=self.dataset["prefix"],
                manifest=manifest,
                areas=self.areas(spec),
                log=self.log.info,
                options=options,
                owner=task_token(context),
            )
        return result.to_dict()


class ExportModelOperator(FactoryOperator):
    """Verify the job's outputs and publish model, metrics and model card; manifest.json last.

    Emits an Asset event for the model: declare ``outlets=[AssetAlias(model_asset_alias)]`` and each
    run adds an event to the Asset ``s3://<bucket>/<tenant>/models/<model>`` whose ``extra``
    carries the version, its URI, whether this run published it, and the metrics. Downstream DAGs
    schedule on that Asset (or on the alias).

    :param dataset: ingest's XCom (templated).
    :param quality: the quality gate's XCom (templated).
    :param training: the train task's XCom (templated).
    :param model_asset_alias: name of the AssetAlias in ``outlets`` that receives the model's event;
        None emits nothing.
    :param run_key: what the model version is keyed on instead of the run id (templated; a feed's
        window training passes its window's content key: the same window, the same version,
        published once).
    """

    template_fields: Sequence[str] = ("dataset", "quality", "training", "validated", "run_key")

    def __init__(self, *, dataset: Any, quality: Any, training: Any, model_asset_alias: str | None = None,
                 run_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.quality = quality
        self.training = training
        self.model_asset_alias = model_asset_alias
        self.run_key = run_key

    def _recipe_card(self, spec: TenantSpec, params: RunParams) -> dict[str, str]:
        """What the recipe says of its models (``model_card:``): the platform recipe's, or the one in
        the tenant's own code folder (fetched again: the content the run was validated with)."""
        if not params.code_uri:
            from aifactory.models.recipes import load_recipes

            return load_recipes()[params.recipe].model_card
        from operators.own_code import fetched_code

        with fetched_code(self.s3(), spec, params.code_uri, expect_digest=params.code_digest) as code:
            return dict(code.recipe.model_card)

    def execute(self, context: Context) -> dict[str, Any]:
        from aifactory import layout
        from aifactory.models.export import CardContext, export_model, model_version
        from aifactory.version import code_version

        spec = self.tenant_spec()
        params = self.run_params(context)
        prefix = check_dataset_prefix(self.dataset.get("prefix") if isinstance(self.dataset, dict) else None, spec)
        output_dir = self.training.get("output_dir") if isinstance(self.training, dict) else None
        check_output_dir(output_dir, self.areas(spec))
        dag_run = context["dag_run"]
        # the dataset's name as the checked prefix spells it (layout.NAME_RE), not XCom's "name" field
        dataset_name, _ = layout.dataset_in_prefix(prefix, spec.tenant) or ("", "")
        model = f"{dataset_name}-{params.recipe}".replace("_", "-")
        version = self.call(model_version, self.run_key or dag_run.run_id, dag_run.dag_id,
                            self.training.get("params_sha256"))
        card = CardContext(
            tenant=spec.tenant,
            model=model,
            version=version,
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            recipe=params.recipe,
            hyperparameters=params.hyperparameters,
            dataset=dict(self.dataset),
            quality={k: self.quality.get(k) for k in (  # the quality task's verdict XCom
                "verdict", "suite", "params_digest", "expectations", "failed", "report_key", "report_sha256")},
            slurm={
                "job_ids": [self.training["job_id"]],
                "state": self.training.get("state"),
                **(self.training.get("accounting") or {}),
                "resources": self.training.get("resources"),
            },
            code_version=code_version(),
            usage=self.call(self._recipe_card, spec, params),
        )
        with self.remote(transfer=True).shell() as shell:
            result = self.call(
                export_model,
                self.s3(),
                shell,
                bucket=spec.bucket,
                model_prefix=spec.model_prefix(model, version),
                output_dir=output_dir,
                card=card,
                params_sha256=self.training.get("params_sha256"),  # the marker must be this run's
                log=self.log.info,
            )
        self._emit_model_event(context, spec.bucket, spec.tenant, result)
        return result

    def _emit_model_event(self, context: Context, bucket: str, tenant: str, result: dict[str, Any]) -> None:
        """One Asset event per run for the model, carrying the version (see the class docstring)."""
        if not self.model_asset_alias:
            return
        from airflow.sdk import Asset, AssetAlias

        from aifactory import layout

        key = layout.models_prefix(tenant) + result["model"]
        asset = Asset(name=key, uri=layout.s3_uri(bucket, key), group="model")
        extra = {
            "model": result["model"],
            "version": result["version"],
            "model_uri": result["model_uri"],
            "published": bool(result["published"]),
            "metrics": {k: v for k, v in (result.get("metrics") or {}).items() if isinstance(v, (int, float, str))},
        }
        context["outlet_events"][AssetAlias(self.model_asset_alias)].add(asset, extra=extra)
        self.log.info("Asset event for %s: version %s", asset.uri, result["version"])
