"""What each pipeline stage reads and writes, as OpenLineage datasets (Airflow-free).

:mod:`operators.lineage` (the OpenLineage provider's custom extractors) turns these into the
``inputs``/``outputs`` of each task's START and COMPLETE events. Names follow OpenLineage's naming
spec: an S3 object or prefix is namespace ``s3://<bucket>``, name ``<key>`` (no trailing ``/``); a
path on an HPC cluster is namespace ``file://<cluster>`` (the cluster spec's name), name the path.

Per stage (``start``: the task's rendered arguments; ``result``: its return value, at COMPLETE):

=========  ==========================================  =============================================
stage      inputs                                      outputs
=========  ==========================================  =============================================
ingest     the raw object(s) (``dataset_uri``)         the dataset version (``.../datasets/<n>/<v>``)
quality    the dataset version                         the quality report
stage      the dataset version                         its staged copy on the cluster
train      the staged copy                             the job's output directory
export     the dataset version, the job's outputs      the model version (``.../models/<m>/<v>``)
=========  ==========================================  =============================================

Only values that pass the layout's checks become datasets: XCom can be rewritten by anyone who
may edit a run, and lineage must not name another tenant's data on its say-so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aifactory import layout

#: the operator classes (task types) each stage runs; operators.lineage registers for these
STAGE_OF_TASK_TYPE = {
    "IngestOperator": "ingest",
    "QualityGateOperator": "quality",
    "StageDatasetOperator": "stage",
    "RecipeTrainOperator": "train",
    "ExportModelOperator": "export",
}


@dataclass(frozen=True)
class LineageDataset:
    """One OpenLineage dataset: ``namespace`` + ``name``, and its version when it has one."""

    namespace: str
    name: str
    version: str | None = None


def s3_dataset(uri: object, tenant: str, bucket: str, version: str | None = None) -> LineageDataset | None:
    """``s3://<bucket>/<key>`` inside the tenant's area of its bucket as a dataset, else None."""
    prefix = f"s3://{bucket}/"
    if not isinstance(uri, str) or not uri.startswith(prefix):
        return None
    key = uri[len(prefix):].rstrip("/")
    if not layout.key_inside(key, layout.tenant_prefix(tenant)):
        return None
    return LineageDataset(f"s3://{bucket}", key, version)


def hpc_dataset(path: object, cluster: str, areas: layout.TenantAreas) -> LineageDataset | None:
    """A path inside one of the tenant's areas on its cluster as a dataset, else None."""
    if not isinstance(path, str) or areas.holding(path.rstrip("/")) is None:
        return None
    return LineageDataset(f"file://{cluster}", path.rstrip("/"))


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, Mapping) else None


def _version_of(dataset: Any, tenant: str, bucket: str) -> LineageDataset | None:
    """A dataset version (ingest's result ``{uri, prefix, version}``) as a dataset."""
    prefix = _get(dataset, "prefix")
    found = layout.dataset_in_prefix(prefix, tenant)
    if found is None:
        return None
    return s3_dataset(layout.s3_uri(bucket, prefix), tenant, bucket, version=found[1])


def stage_lineage(stage: str, *, tenant: str, bucket: str, cluster: str, areas: layout.TenantAreas, start: Mapping[str, Any],
                  result: Any = None) -> tuple[list[LineageDataset], list[LineageDataset]]:
    """``(inputs, outputs)`` of one stage (see the table above); what is not known yet is left out.

    :param start: the task's rendered arguments: ``validated`` (validate's XCom), ``dataset``
        (ingest's), ``staged`` (stage's), ``training`` (train's).
    :param result: the task's return value (None at START, or when it returned nothing).
    """
    inputs: list[LineageDataset | None] = []
    outputs: list[LineageDataset | None] = []
    dataset = start.get("dataset")
    if stage == "ingest":
        raw = _get(result, "source_uri") or _get(start.get("validated"), "dataset_uri")
        inputs.append(s3_dataset(raw, tenant, bucket))
        outputs.append(_version_of(result, tenant, bucket))
    elif stage == "quality":
        inputs.append(_version_of(dataset, tenant, bucket))
        report = _get(result, "report_key")
        if isinstance(report, str):
            outputs.append(s3_dataset(layout.s3_uri(bucket, report), tenant, bucket))
    elif stage == "stage":
        inputs.append(_version_of(dataset, tenant, bucket))
        outputs.append(hpc_dataset(_get(result, "remote_dir"), cluster, areas))
    elif stage == "train":
        inputs.append(hpc_dataset(_get(start.get("staged"), "remote_dir"), cluster, areas))
        outputs.append(hpc_dataset(_get(result, "output_dir"), cluster, areas))
    elif stage == "export":
        inputs.append(_version_of(dataset, tenant, bucket))
        inputs.append(hpc_dataset(_get(start.get("training"), "output_dir"), cluster, areas))
        outputs.append(s3_dataset(_get(result, "model_uri"), tenant, bucket, version=_model_version(result)))
    else:
        raise ValueError(f"unknown stage {stage!r}; known: {sorted(set(STAGE_OF_TASK_TYPE.values()))}")
    return [d for d in inputs if d is not None], [d for d in outputs if d is not None]


def _model_version(result: Any) -> str | None:
    version = _get(result, "version")
    return version if isinstance(version, str) and layout.VERSION_RE.fullmatch(version) else None
