"""The feed DAGs (dags/factory_feeds.py): one feed and one training DAG per declared feed, their
timetables (a data interval per partition; the training on the feed's Asset), and the wiring of
the pipeline's own stages to the window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.feeds import partition_key
from aifactory.tenants import load_tenant, load_tenants

REPO = Path(__file__).resolve().parents[2]
FEEDS_DAG_FILE = REPO / "dags" / "factory_feeds.py"
FEED, TRAIN = layout.feed_dag_id("demo", "iris_daily"), layout.feed_training_dag_id("demo", "iris_daily")


@pytest.fixture(scope="module")
def dags():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(FEEDS_DAG_FILE))
    assert bag.import_errors == {}
    return bag.dags


def test_one_feed_and_one_training_dag_per_declared_feed(dags):
    want = set()
    for spec in load_tenants():
        for feed in spec.feeds:
            want.add(layout.feed_dag_id(spec.tenant, feed.name))
            if feed.training:
                want.add(layout.feed_training_dag_id(spec.tenant, feed.name))
    assert want == set(dags) and {FEED, TRAIN} <= want  # acme declares no feed: no DAG of it
    assert [t.task_id for t in dags[FEED].topological_sort()] == ["partition", "ingest", "quality", "publish"]
    assert [t.task_id for t in dags[TRAIN].topological_sort()] == ["window", "quality", "stage", "train", "export"]
    for dag in (dags[FEED], dags[TRAIN]):
        assert "tenant:demo" in dag.tags and dag.doc_md


def test_the_feeds_timetable_gives_each_run_the_interval_of_one_partition(dags):
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import DataInterval, TimeRestriction

    spec = load_tenant("demo")
    feed = spec.feeds[0]
    dag = dags[FEED]
    assert dag.start_date == feed.start_date and dag.catchup is False
    timetable = coerce_to_core_timetable(dag.timetable)  # what the scheduler runs
    assert timetable.periodic  # Airflow's backfill accepts it
    first = timetable.next_dagrun_info(last_automated_data_interval=None,
                                           restriction=TimeRestriction(feed.start_date, None, catchup=True))
    assert first.data_interval == DataInterval(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))
    assert partition_key(first.data_interval.start) == "2026-01-01"
    nxt = timetable.next_dagrun_info(last_automated_data_interval=first.data_interval,
                                         restriction=TimeRestriction(feed.start_date, None, catchup=True))
    assert partition_key(nxt.data_interval.start) == "2026-01-02"  # one partition per interval


def test_the_feed_updates_its_asset_and_the_training_runs_on_it(dags):
    asset_uri = layout.s3_uri(load_tenant("demo").bucket, layout.feed_asset_key("demo", "iris_daily"))
    publish = dags[FEED].get_task("publish")
    assert [a.uri for a in publish.outlets] == [asset_uri] and publish.outlets[0].name == FEED
    train_dag = dags[TRAIN]
    assert [a.uri for a in train_dag.timetable.asset_condition.objects] == [asset_uri]
    assert train_dag.max_active_runs == 1  # events landing meanwhile start ONE next run
    assert [a.uri for a in train_dag.get_task("window").inlets] == [asset_uri]


def test_the_pipelines_stages_take_the_window_and_its_key(dags):
    """quality, stage, train and export are the pipeline's operators, fed the window task's XComs."""
    from airflow.sdk.definitions.xcom_arg import XComArg

    from operators.stages import ExportModelOperator, QualityGateOperator, StageDatasetOperator
    from operators.training import RecipeTrainOperator

    dag = dags[TRAIN]
    kinds = {"quality": QualityGateOperator, "stage": StageDatasetOperator, "train": RecipeTrainOperator,
             "export": ExportModelOperator}
    for task_id, kind in kinds.items():
        task = dag.get_task(task_id)
        assert type(task) is kind
        dataset = task.dataset
        assert isinstance(dataset, XComArg) and dataset.operator.task_id == "window" and dataset.key == "dataset"
    for task_id in ("train", "export"):
        key = dag.get_task(task_id).run_key
        assert isinstance(key, XComArg) and key.operator.task_id == "window" and key.key == "run_key"
    ingest = dags[FEED].get_task("ingest")
    assert ingest.dataset_name == "iris_daily"  # every partition is a version of the feed's dataset


def test_feed_dag_file_imports_no_heavy_library():
    """(boto3 is let through: Airflow's own s3:// Asset URI check imports the Amazon provider's S3
    hook, measured; the dag-processor has the providers loaded already.)"""
    code = ("import json, sys, runpy; runpy.run_path(sys.argv[1]); "
            "print(json.dumps([m for m in ['pyarrow', 'great_expectations', 'torch', 'pandas', 'paramiko'] "
            "if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code, str(FEEDS_DAG_FILE)],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_training_schedule_serializes_as_airflow_builds_it_from_a_list_of_the_asset(dags):
    """operators.feeds.on_asset: the same timetable as ``schedule=[asset]``, for what the scheduler reads."""
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    asset = dags[FEED].get_task("publish").outlets[0]
    ours = DagSerialization.to_dict(dags[TRAIN])["dag"]["timetable"]
    airflows = DagSerialization.to_dict(DAG(dag_id="as_a_list", schedule=[asset]))["dag"]["timetable"]
    assert ours == airflows and ours["__type"].endswith("AssetTriggeredTimetable")


@pytest.mark.parametrize(("dag_file", "wanted"), [("factory_feeds.py", FEED), ("factory_feeds.py", TRAIN),
                                                  ("factory_pipelines.py", layout.pipeline_dag_id("demo")),
                                                  ("platform_slurm_probe.py", layout.probe_dag_id("demo"))])
def test_a_task_process_builds_only_its_own_dag(dag_file: str, wanted: str):
    """The task runner parses the DAG file with Airflow's parsing context naming its DAG."""
    from airflow.sdk.definitions.context import _AIRFLOW_PARSING_CONTEXT_DAG_ID

    code = ("import json, sys\nfrom airflow.dag_processing.dagbag import DagBag\n"
            "bag = DagBag(dag_folder=sys.argv[1])\nprint(json.dumps([sorted(bag.dags), len(bag.import_errors)]))")
    env = {**os.environ, _AIRFLOW_PARSING_CONTEXT_DAG_ID: wanted}
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "dags" / dag_file)], env=env,
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[wanted], 0]
