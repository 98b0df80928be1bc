"""``RecipeTrainOperator``: the Slurm job operator, preceded by the recipe's checks of the data.

The recipe's ``data_checks`` (``recipe.yaml``; see :func:`aifactory.models.recipes.check_dataset`) run
against the dataset version in object storage **before anything is submitted**: a feature column
that is not numeric (from the version's manifest schema), a label column with one class (reading
the label column of the shards until two classes are seen). The task then fails at once, without
retries, with a message that names the hyperparameter and the column. Everything else is
:class:`~operators.slurm.SlurmJobOperator`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from operators.slurm import SlurmJobOperator
from operators.stages import S3_CONN_ID

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["RecipeTrainOperator"]


class RecipeTrainOperator(SlurmJobOperator):
    """Check the dataset against the recipe's ``data_checks``, then run the recipe as a Slurm job.

    :param dataset: ingest's XCom (``prefix``, ``uri``, ...; templated): the dataset version to check.
    :param s3_conn_id: Airflow connection of the object store.
    :param kwargs: everything :class:`~operators.slurm.SlurmJobOperator` takes.
    """

    template_fields: Sequence[str] = (*SlurmJobOperator.template_fields, "dataset")

    def __init__(self, *, dataset: Any, s3_conn_id: str = S3_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.s3_conn_id = s3_conn_id

    def check_data(self, context: Context) -> list[str]:
        """Run the recipe's data checks; AirflowFailException (no retry) naming the field if one fails."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from airflow.sdk.exceptions import AirflowFailException

        from aifactory.errors import InputError
        from aifactory.data.manifest import load_manifest
        from aifactory.models.recipes import check_dataset, distinct_values_s3
        from aifactory.tenants import load_tenant

        try:
            plan = self.plan(context)  # validated recipe and hyperparameters; touches nothing
            spec = load_tenant(self.tenant)
            s3 = S3Hook(aws_conn_id=self.s3_conn_id).get_conn()
            prefix = self.dataset["prefix"]
            manifest = load_manifest(s3, spec.bucket, prefix)
            if manifest is None:
                raise InputError(f"dataset version {self.dataset.get('uri')} has no manifest.json; clear the ingest task")
            checked = check_dataset(
                plan.recipe,
                plan.hyperparameters,
                manifest.schema,
                distinct_values_s3(s3, spec.bucket, prefix, [f.path for f in manifest.files]),
                dataset=str(self.dataset.get("uri", prefix)),
            )
        except InputError as exc:
            raise AirflowFailException(f"InputError: {exc}. Nothing was submitted to Slurm") from exc
        self.log.info("recipe %s: data checks passed (%s)", plan.recipe.name, ", ".join(checked) or "none declared")
        return checked

    def execute(self, context: Context) -> dict[str, Any] | None:
        self.check_data(context)
        return super().execute(context)
