"""OpenLineage for the pipeline's stages: one custom extractor of Airflow's OpenLineage provider.

Registered in ``airflow.cfg`` (``[openlineage] extractors = operators.lineage.FactoryStageExtractor``),
so the operators carry no lineage code. The provider's listener calls it in the worker for every
task of the stage classes: at START with the task's rendered arguments, at COMPLETE with its
return value too (the stage's XCom, pulled once), at FAIL with what START knew. What each stage
reads and writes is :func:`aifactory.lineage.stage_lineage`; this module only turns those into
OpenLineage datasets.

The events go where ``[openlineage] transport`` says (HTTP to a lineage receiver; see
docs/observability.md). An unreachable receiver costs a task one refused connection and a
warning in its log, never its success.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.openlineage.extractors.base import BaseExtractor, OperatorLineage

from aifactory.lineage import STAGE_OF_TASK_TYPE, LineageDataset, stage_lineage

__all__ = ["FactoryStageExtractor", "ol_dataset"]

#: the operator arguments a stage's lineage is read from (RecipeTrainOperator names none but these)
START_ARGUMENTS = ("validated", "dataset", "staged", "training")


def ol_dataset(dataset: LineageDataset) -> Any:
    """One OpenLineage dataset (the provider's compat class). A version is part of the name: the
    factory's versions are paths of their own (``.../datasets/<name>/<version>``)."""
    from airflow.providers.common.compat.openlineage.facet import Dataset

    return Dataset(namespace=dataset.namespace, name=dataset.name)


class FactoryStageExtractor(BaseExtractor):
    """Inputs and outputs of the ingest, quality, stage, train and export tasks."""

    @classmethod
    def get_operator_classnames(cls) -> list[str]:
        return list(STAGE_OF_TASK_TYPE)

    def _lineage(self, result: Any) -> OperatorLineage:
        from aifactory.tenants import load_cluster, load_tenant

        op = self.operator
        spec = load_tenant(op.tenant)
        cluster = load_cluster(spec.cluster)
        inputs, outputs = stage_lineage(
            STAGE_OF_TASK_TYPE[op.task_type], tenant=spec.tenant, bucket=spec.bucket, cluster=cluster.name,
            areas=spec.areas(cluster), start={k: getattr(op, k, None) for k in START_ARGUMENTS},
            result=result,
        )
        return OperatorLineage(inputs=[ol_dataset(d) for d in inputs], outputs=[ol_dataset(d) for d in outputs])

    def _execute_extraction(self) -> OperatorLineage:
        return self._lineage(None)

    def extract_on_complete(self, task_instance: Any) -> OperatorLineage:
        result = task_instance.xcom_pull(task_ids=task_instance.task_id, key="return_value")
        return self._lineage(result)

    def extract_on_failure(self, task_instance: Any) -> OperatorLineage:
        return self._lineage(None)
