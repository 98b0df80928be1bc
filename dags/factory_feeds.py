"""
### AI Factory data feed

Generated from `feeds:` in `include/tenants/<tenant>.yaml` (docs/feeds.md). Two DAGs per feed:

**`feed_<tenant>_<feed>`** ingests and gates exactly ONE partition per data interval:
`s3://<bucket>/<tenant>/raw/feeds/<feed>/dt=YYYY-MM-DD/`, the date being the data interval's start
(UTC), never the wall clock. `partition` checks the folder and the parameters, `ingest` and
`quality` are the pipeline's own stages (the same content gives the same dataset version: nothing
is uploaded twice), and `publish` adds an event to the feed's Asset
`s3://<bucket>/<tenant>/datasets/<feed>` naming the partition and its dataset version. Backfill
it with Airflow's own backfill (UI, `airflow backfill create`, `POST /api/v2/backfills`).

**`train_<tenant>_<feed>`** runs on that Asset (or on a cron) and trains over the last
`window_days` partitions: `window` builds the window's dataset version (content-addressed from
its member versions), then the pipeline's own quality, stage, train and export stages run on it.
While runs of the feed are still landing partitions (a backfill), `window` waits for them (deferred,
no worker slot held), so the training runs once over all of them. The Slurm job name and the model
version come from the window's content key: training the same window again (the events that landed
meanwhile start one more run) adopts the finished job and publishes nothing.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, AssetAlias
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable

from aifactory.feeds.spec import FeedSpec
from aifactory.layout import feed_dag_id, feed_training_dag_id, ssh_pool
from aifactory.tenants import TenantSpec, good_tenants, load_cluster
from operators.dagfile import builds, tenant_dag_args
from operators.feeds import (
    FeedPartitionOperator,
    FeedPublishOperator,
    FeedWindowOperator,
    feed_asset,
    on_asset,
)
from operators.stages import ExportModelOperator, IngestOperator, QualityGateOperator, StageDatasetOperator
from operators.training import RecipeTrainOperator


def build_feed(spec: TenantSpec, feed: FeedSpec) -> DAG:
    """The DAG that ingests one partition of ``feed`` per data interval."""
    common = {"tenant": spec.tenant, "feed": feed.name}
    with DAG(
        dag_id=feed_dag_id(spec.tenant, feed.name),
        description=f"Data feed {feed.name} of {spec.display_name}: one partition per data interval",
        doc_md=__doc__,
        schedule=CronDataIntervalTimetable(feed.schedule, timezone="UTC"),
        start_date=feed.start_date,
        max_active_runs=4,
        **tenant_dag_args(spec, "feed"),
    ) as dag:
        partition = FeedPartitionOperator(task_id="partition", retries=0, **common)
        validated = partition.output
        ingest = IngestOperator(task_id="ingest", validated=validated, dataset_name=feed.name,
                                execution_timeout=timedelta(hours=6), tenant=spec.tenant)
        quality = QualityGateOperator(task_id="quality", dataset=ingest.output, validated=validated, retries=0,
                                      tenant=spec.tenant)
        publish = FeedPublishOperator(task_id="publish", dataset=ingest.output, partition=validated,
                                      outlets=[feed_asset(spec.bucket, spec.tenant, feed.name)], **common)
        partition >> ingest >> quality >> publish
    return dag


def build_training(spec: TenantSpec, feed: FeedSpec) -> DAG:
    """The DAG that trains over a window of ``feed``'s partitions, on its Asset or on a cron."""
    training = feed.training
    assert training is not None
    cluster = load_cluster(spec.cluster)
    asset = feed_asset(spec.bucket, spec.tenant, feed.name)
    ssh = {"pool": ssh_pool(cluster.name)}
    dag_id = feed_training_dag_id(spec.tenant, feed.name)
    with DAG(
        dag_id=dag_id,
        description=f"Training of {spec.display_name} over the last {training.window_days} day(s) of {feed.name}",
        doc_md=__doc__,
        schedule=on_asset(asset) if training.on_asset else CronDataIntervalTimetable(training.schedule, timezone="UTC"),
        start_date=feed.start_date,
        # one at a time: events that land meanwhile wait in Airflow's queue and start ONE next run
        max_active_runs=1,
        **tenant_dag_args(spec, "feed"),
    ) as dag:
        window = FeedWindowOperator(task_id="window", tenant=spec.tenant, feed=feed.name, inlets=[asset], retries=0)
        dataset, validated, run_key = window.output["dataset"], window.output["validated"], window.output["run_key"]
        quality = QualityGateOperator(task_id="quality", dataset=dataset, validated=validated, retries=0,
                                      tenant=spec.tenant)
        stage = StageDatasetOperator(task_id="stage", dataset=dataset, validated=validated,
                                     execution_timeout=timedelta(hours=6), tenant=spec.tenant, **ssh)
        train = RecipeTrainOperator(task_id="train", dataset=dataset, run_params=validated, staged=stage.output,
                                    run_key=run_key, tenant=spec.tenant, cluster=cluster.name,
                                    poll_interval=cluster.effective_poll_interval_s, retries=2, **ssh)
        models = AssetAlias(f"{dag_id}_models")
        export = ExportModelOperator(task_id="export", dataset=dataset, quality=quality.output, training=train.output,
                                     validated=validated, run_key=run_key, model_asset_alias=models.name,
                                     outlets=[models], tenant=spec.tenant, **ssh)
        window >> quality >> stage >> train >> export
    return dag


# good specs only: a broken tenant spec fails that tenant alone (see aifactory.tenants.spec.good_tenants)
for _spec in good_tenants():
    for _feed in _spec.feeds:  # a task process builds its own DAG only (operators.dagfile)
        if builds(feed_dag_id(_spec.tenant, _feed.name)):
            globals()[feed_dag_id(_spec.tenant, _feed.name)] = build_feed(_spec, _feed)
        if _feed.training is not None and builds(feed_training_dag_id(_spec.tenant, _feed.name)):
            globals()[feed_training_dag_id(_spec.tenant, _feed.name)] = build_training(_spec, _feed)
