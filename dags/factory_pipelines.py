"""
### AI Factory pipeline

One DAG per tenant, generated from `include/tenants/<tenant>.yaml`: a raw dataset in the tenant's
S3 area becomes a trained, documented model.

| stage | what it does | output |
|---|---|---|
| **validate** | checks every parameter against the tenant spec and the recipe's schema, before any side effect | typed params |
| **ingest** | S3 CSV / JSON Lines / Parquet → versioned Parquet (content-addressed) with a sha256 manifest | dataset version |
| **quality** | the tenant's Great Expectations suite gates the data; failure stops the run with a summary | verdict |
| **stage** | the dataset goes to the tenant's HPC directory over SFTP, verified by sha256 there | remote dir |
| **train** | the recipe's sbatch script runs under the tenant's Slurm account; watched by the triggerer | job id, metrics |
| **export** | model, metrics and model card to `s3://<bucket>/<tenant>/models/<model>/<version>/`, `manifest.json` last | model URI |

Rules of the data: a tenant reads only `s3://<bucket>/<tenant>/raw/`; a dataset version or a model
version without `manifest.json` does not exist; a published model version is never overwritten.
Clearing a failed stage resumes from it: ingest and staging skip verified work, training re-attaches
to its Slurm job instead of submitting a second one, and export publishes nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from airflow.sdk import DAG, AssetAlias, Param

from aifactory.layout import CODE_LOCK_FILE, OWN_CODE_RECIPE, code_prefix, pipeline_dag_id, ssh_pool
from aifactory.models.own_code import code_uri_pattern
from aifactory.models.recipes import load_recipes
from aifactory.tenants import TenantSpec, good_tenants, load_cluster
from aifactory.tenants.params import dataset_uri_pattern
from operators.dagfile import builds, tenant_dag_args
from operators.form import form_param
from operators.stages import (
    ExportModelOperator,
    IngestOperator,
    QualityGateOperator,
    StageDatasetOperator,
    ValidateRunOperator,
)
from operators.training import RecipeTrainOperator


def _bounded(name: str, default: int, low: int, high: int, title: str, note: str = "") -> dict[str, Param]:
    """A resource field: an integer from ``low``; the tenant's upper bound is in its description."""
    return {name: form_param(default, type="integer", minimum=low, title=title,
                            description=f"At most {high} (the tenant's limit; checked by the validate task).{note}")}


def trigger_form(spec: TenantSpec, recipe_names: Iterable[str] | None = None) -> dict[str, Param]:
    """The typed Params of the trigger form, bounded by the tenant spec.

    :param recipe_names: the recipe folders (default: :func:`load_recipes`, read once per parse).
    """
    lim, d = spec.limits, spec.defaults
    recipes = sorted(r for r in (load_recipes() if recipe_names is None else recipe_names) if spec.allows_recipe(r))
    raw = spec.raw_uri_prefix
    code = f"s3://{spec.bucket}/{code_prefix(spec.tenant)}<name>/"
    return {
        "dataset_uri": form_param(
            d.get("dataset_uri", raw),
            type="string",
            title="Dataset URI",
            description=f"A file or folder (ending in /) under {raw}: CSV, JSON Lines or Parquet.",
            pattern=dataset_uri_pattern(raw),  # the same rule validate applies
            maxLength=1024,
        ),
        "recipe": form_param(d.get("recipe", recipes[0] if recipes else ""), type="string",
                            enum=[*recipes, *([OWN_CODE_RECIPE] if spec.own_code else [])], title="Training recipe",
                            description="A folder under include/recipes/"
                            + (f", or {OWN_CODE_RECIPE}: your own code at Code URI." if spec.own_code else ".")),
        **({"code_uri": form_param(
            None, type=["null", "string"], title="Code URI",
            description=f"With recipe {OWN_CODE_RECIPE}: your code folder {code} (recipe.yaml, the entry point, "
                        f"{CODE_LOCK_FILE}); docs/own-code.md.",
            pattern=code_uri_pattern(spec.bucket, spec.tenant), maxLength=1024)} if spec.own_code else {}),
        "hyperparameters": form_param(d.get("hyperparameters", {}), type="object", title="Hyperparameters",
                                     description="Checked against the recipe's JSON schema before anything runs."),
        "partition": form_param(d.get("partition", spec.partitions[0]), type="string", enum=list(spec.partitions),
                               title="Slurm partition"),
        # The tenant's limits are stated, not enforced, here: Airflow validates a run's conf against
        # the DAG's params again at every task start, so a limit lowered while a run is under way would
        # fail its next task. The validate task enforces them, before any side effect.
        **_bounded("nodes", d.get("nodes", 1), 1, lim.max_nodes, "Nodes"),
        **_bounded("gpus_per_node", d.get("gpus_per_node", 0), 0, lim.max_gpus_per_node, "GPUs per node"),
        **_bounded("cpus_per_task", d.get("cpus_per_task", 1), 1, lim.max_cpus_per_task, "CPUs per task"),
        **_bounded("mem_gb", d.get("mem_gb", 1), 1, lim.max_mem_gb, "Memory per node (GB)"),
        **_bounded("time_limit_minutes", d.get("time_limit_minutes", 30), 1, lim.max_time_limit_minutes,
                   "Time limit (minutes)", f" With requeues, time limit x (1 + hyperparameters.max_requeues) "
                   f"must stay within {lim.max_hold_minutes} minutes."),
    }


def build_pipeline(spec: TenantSpec, recipe_names: Iterable[str] | None = None) -> DAG:
    cluster = load_cluster(spec.cluster)
    common = {"tenant": spec.tenant}
    # the tasks that hold an SSH session to the cluster's login node share its pool (its slots bound
    # the sessions under fan-out; a deferred train task holds none)
    ssh = {"pool": ssh_pool(cluster.name)}
    with DAG(
        dag_id=pipeline_dag_id(spec.tenant),
        description=f"AI factory pipeline of {spec.display_name}",
        doc_md=__doc__,
        schedule=spec.schedule,
        start_date=datetime(2026, 1, 1),
        max_active_runs=2,
        params=trigger_form(spec, recipe_names),
        **tenant_dag_args(spec),  # tags, default args (owner, retry, the tenant's failure notifications)
    ) as dag:
        validate = ValidateRunOperator(task_id="validate", **common)
        # Later stages read the validate task's typed result (a native XCom value), never the raw form.
        validated = validate.output
        ingest = IngestOperator(task_id="ingest", validated=validated, execution_timeout=timedelta(hours=6), **common)
        quality = QualityGateOperator(task_id="quality", dataset=ingest.output, validated=validated, retries=0,
                                      **common)
        stage = StageDatasetOperator(task_id="stage", dataset=ingest.output, execution_timeout=timedelta(hours=6),
                                     **ssh, **common)
        # The train task takes the *validated* params (validate's typed XCom), never the raw form.
        # The recipe's data checks (one-class label, non-numeric feature) run before anything is submitted.
        train = RecipeTrainOperator(
            dataset=ingest.output,
            run_params=validate.output,
            task_id="train",
            tenant=spec.tenant,
            cluster=cluster.name,
            staged=stage.output,
            poll_interval=cluster.effective_poll_interval_s,
            retries=2,
            **ssh,
        )
        # The model's Asset event (s3://<bucket>/<tenant>/models/<model>, extra: version, URI, metrics)
        # goes through a per-tenant alias, because the model's name is known only at run time.
        models = AssetAlias(f"{pipeline_dag_id(spec.tenant)}_models")
        export = ExportModelOperator(task_id="export", dataset=ingest.output, quality=quality.output,
                                     training=train.output, validated=validated, model_asset_alias=models.name,
                                     outlets=[models], **ssh, **common)
        validate >> ingest >> quality >> stage >> train >> export
    return dag


# good specs only: a broken tenant spec fails that tenant alone (see aifactory.tenants.spec.good_tenants)
_recipe_names = tuple(load_recipes())  # once per parse, for every tenant's form
for _spec in good_tenants():
    if builds(pipeline_dag_id(_spec.tenant)):  # a task process builds its own DAG only
        globals()[pipeline_dag_id(_spec.tenant)] = build_pipeline(_spec, _recipe_names)
