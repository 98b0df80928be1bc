"""What each stage's OpenLineage events name (aifactory.lineage), and the provider's extractor
that carries it (operators.lineage); events against a real receiver: tests/e2e/test_operator_view.py."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from aifactory.layout import TenantAreas
from aifactory.lineage import STAGE_OF_TASK_TYPE, LineageDataset, s3_dataset, stage_lineage

REPO = Path(__file__).resolve().parents[2]
AREAS = TenantAreas(project="/srv/aifactory/project/demo", scratch="/scratch/aifp-demo")
DATASET = {"name": "iris", "version": "v-0123456789ab", "uri": "s3://aifactory/demo/datasets/iris/v-0123456789ab/",
           "prefix": "demo/datasets/iris/v-0123456789ab/", "source_uri": "s3://aifactory/demo/raw/iris.csv"}
VERSION = LineageDataset("s3://aifactory", "demo/datasets/iris/v-0123456789ab", "v-0123456789ab")
OUT = f"{AREAS.project}/runs/aifp-demo-0123456789ab/output"


def _lineage(stage: str, start: dict | None = None, result: object = None):
    return stage_lineage(stage, tenant="demo", bucket="aifactory", cluster="local", areas=AREAS,
                         start=start or {}, result=result)


def test_ingest_reads_the_raw_object_and_writes_the_dataset_version():
    raw = LineageDataset("s3://aifactory", "demo/raw/iris.csv")
    assert _lineage("ingest", {"validated": {"dataset_uri": DATASET["source_uri"]}}) == ([raw], [])
    assert _lineage("ingest", {}, DATASET) == ([raw], [VERSION])


def test_train_and_export_chain_the_staged_copy_to_the_model_version():
    staged = {"remote_dir": f"{AREAS.scratch}/datasets/iris/v-0123456789ab"}
    assert _lineage("stage", {"dataset": DATASET}, staged) == (
        [VERSION], [LineageDataset("file://local", staged["remote_dir"])])
    assert _lineage("train", {"staged": staged}, {"output_dir": OUT}) == (
        [LineageDataset("file://local", staged["remote_dir"])], [LineageDataset("file://local", OUT)])
    model = {"model": "iris-tabular-classifier", "version": "v-aaaaaaaaaaaa",
             "model_uri": "s3://aifactory/demo/models/iris-tabular-classifier/v-aaaaaaaaaaaa/"}
    inputs, outputs = _lineage("export", {"dataset": DATASET, "training": {"output_dir": OUT}}, model)
    assert inputs == [VERSION, LineageDataset("file://local", OUT)]
    assert outputs == [LineageDataset("s3://aifactory", "demo/models/iris-tabular-classifier/v-aaaaaaaaaaaa",
                                      "v-aaaaaaaaaaaa")]


def test_quality_reads_the_version_and_writes_its_report():
    result = {"report_key": "demo/datasets/iris/v-0123456789ab/quality/iris/abc/quality.json"}
    assert _lineage("quality", {"dataset": DATASET}, result) == (
        [VERSION], [LineageDataset("s3://aifactory", result["report_key"])])


def test_a_rewritten_xcom_never_names_another_tenants_data():
    acme = {**DATASET, "prefix": "acme/datasets/iris/v-0123456789ab/", "uri": "s3://aifactory-acme/acme/x/",
            "source_uri": "s3://aifactory-acme/acme/raw/iris.csv"}
    assert _lineage("ingest", {}, acme) == ([], [])
    assert _lineage("train", {"staged": {"remote_dir": "/srv/aifactory/scratch/aifp-acme/datasets/x"}},
                    {"output_dir": f"{AREAS.project}/../acme/runs/x"}) == ([], [])
    assert s3_dataset("s3://aifactory/demo/../acme/raw/x", "demo", "aifactory") is None
    with pytest.raises(ValueError, match="unknown stage"):
        _lineage("publish")


def test_the_extractor_serves_every_stage_class_and_is_registered_in_airflow_cfg():
    from airflow.providers.openlineage.extractors.base import OperatorLineage

    from operators import lineage
    from operators.stages import (
        ExportModelOperator,
        IngestOperator,
        QualityGateOperator,
        StageDatasetOperator,
    )
    from operators.training import RecipeTrainOperator

    classes = {c.__name__ for c in (IngestOperator, QualityGateOperator, StageDatasetOperator, RecipeTrainOperator,
                                    ExportModelOperator)}
    assert set(lineage.FactoryStageExtractor.get_operator_classnames()) == classes == set(STAGE_OF_TASK_TYPE)
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "airflow.cfg")
    assert cfg["openlineage"]["extractors"] == "operators.lineage.FactoryStageExtractor"
    # the extractor on a real (unrun) ingest task: START names the raw object it will read
    task = IngestOperator(task_id="ingest", tenant="demo", validated={"dataset_uri": DATASET["source_uri"]})
    found = lineage.FactoryStageExtractor(task).extract()
    assert isinstance(found, OperatorLineage) and found.outputs == []
    assert [(d.namespace, d.name) for d in found.inputs] == [("s3://aifactory", "demo/raw/iris.csv")]
    version = lineage.ol_dataset(VERSION)
    assert (version.namespace, version.name) == ("s3://aifactory", "demo/datasets/iris/v-0123456789ab")
