"""The operators of the feed DAGs (``dags/factory_feeds.py``): thin adapters over :mod:`aifactory.feeds`.

A feed run is ``partition`` (this module) >> the pipeline's own ingest and quality operators >>
``publish`` (this module: the feed's Asset event). A window training run is ``window`` (this
module) >> the pipeline's own quality, stage, train and export operators, fed the window dataset,
its validated parameters and its content key (``run_key``: job name and model version).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from operators.stages import FactoryOperator, _fail, check_dataset_prefix

if TYPE_CHECKING:
    from airflow.sdk import Context

    from aifactory.feeds.spec import FeedSpec

#: the states of a feed run that may still add a partition (a backfill's queued runs included)
ACTIVE_RUN_STATES = ["queued", "running"]


def feed_asset(bucket: str, tenant: str, feed: str) -> Any:
    """The feed's Asset: ``s3://<bucket>/<tenant>/datasets/<feed>``, named ``feed_<tenant>_<feed>``."""
    from airflow.sdk import Asset

    from aifactory import layout

    return Asset(name=layout.feed_dag_id(tenant, feed), uri=layout.s3_uri(bucket, layout.feed_asset_key(tenant, feed)),
                 group="feed")


def on_asset(asset: Any) -> Any:
    """The schedule "a run when ``asset`` is updated", as the timetable Airflow builds from ``[asset]``.

    Passed as this timetable, not as ``[asset]``: the DAG serializes the same (``tests/dags``
    compares them), but Airflow hashes a DAG at every dependency it sets between two of its tasks
    (``_set_relatives``), and hashing an ``[asset]`` schedule dumps the Asset to JSON each time
    (``Asset.__hash__``): 40 of those per training DAG were a third of ``dags/factory_feeds.py``'s
    parse with 1000 tenants (``bench/parse.py --profile``).
    """
    from airflow.sdk.definitions.asset import AssetAll
    from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable

    return AssetTriggeredTimetable(AssetAll(asset))


def dataset_xcom(spec: Any, manifest: Any, source_uri: str) -> dict[str, Any]:
    """A dataset version as the pipeline's stages take it (ingest's XCom shape)."""
    from aifactory import layout

    prefix = check_dataset_prefix(spec.dataset_prefix(manifest.name, manifest.version), spec)
    return {"name": manifest.name, "version": manifest.version, "uri": layout.s3_uri(spec.bucket, prefix),
            "prefix": prefix, "rows": manifest.rows, "files": len(manifest.files),
            "manifest_sha256": manifest.manifest_sha256, "source_uri": source_uri}


class FeedOperator(FactoryOperator):
    """A task of one feed's DAGs. :param feed: the feed's name in the tenant spec."""

    def __init__(self, *, feed: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.feed = feed

    def feed_spec(self) -> FeedSpec:
        from aifactory.feeds.params import find_feed

        return self.call(find_feed, self.tenant_spec(), self.feed)


class FeedPartitionOperator(FeedOperator):
    """The run's partition from its data interval, its parameters validated, its uploads checked.

    Returns the validated parameters (the ``validated`` XCom ingest and quality read) with the
    partition; fails without retry when the partition's folder holds nothing or another format.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from aifactory.data.ingest import resolve_sources
        from aifactory.data.s3 import parse_s3_uri
        from aifactory.errors import InputError
        from aifactory.feeds import partition_key
        from aifactory.feeds.params import feed_run_params
        from aifactory.text import shown

        spec, feed = self.tenant_spec(), self.feed_spec()
        key = self.call(partition_key, context.get("data_interval_start"))
        params = self.call(feed_run_params, spec, feed, key)
        uri = params.dataset_uri
        sources, fmt = self.call(resolve_sources, self.s3(), bucket=spec.bucket, key=parse_s3_uri(uri)[1], uri=uri)
        if fmt.kind != feed.format:
            _fail(InputError(f"partition {shown(uri)} holds {fmt.kind} objects; feed {feed.name} is "
                                         f"declared {feed.format} (tenant spec feeds[].format)"))
        self.log.info("feed %s partition %s (data interval %s - %s): %d %s object(s) at %s", feed.name, key,
                      context.get("data_interval_start"), context.get("data_interval_end"), len(sources), fmt.kind,
                      shown(uri))
        return {**params.to_xcom(), "partition": key}


class FeedPublishOperator(FeedOperator):
    """One Asset event for the gated partition; ``extra`` names the partition and its dataset version.

    :param dataset: ingest's XCom; :param partition: the partition task's XCom (templated).
    """

    template_fields: Sequence[str] = ("dataset", "partition", "validated")

    def __init__(self, *, dataset: Any, partition: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.partition = partition

    def execute(self, context: Context) -> dict[str, Any]:
        spec = self.tenant_spec()
        check_dataset_prefix(self.dataset.get("prefix") if isinstance(self.dataset, dict) else None, spec)
        extra = {"partition": self.partition["partition"], "version": self.dataset["version"],
                 "manifest_sha256": self.dataset["manifest_sha256"], "uri": self.dataset["uri"],
                 "rows": self.dataset["rows"]}
        asset = feed_asset(spec.bucket, spec.tenant, self.feed)
        context["outlet_events"][asset].extra = extra
        self.log.info("Asset event for %s: partition %s is dataset version %s", asset.uri, extra["partition"],
                      extra["version"])
        return extra


class FeedWindowOperator(FeedOperator):
    """Decide the window, build its dataset version, and key the training on its content.

    While runs of the feed are queued or running (a backfill landing partitions), the task waits,
    deferred (no worker slot held), polling every ``poll_s`` seconds for up to ``max_wait``: the
    training then runs once over everything that landed. The window ends at the newest partition
    among the events since the run was triggered (asset schedule: a backfill of January trains over
    January) or the newest before the run's data interval ends (cron); fewer than
    ``min_partitions`` of it ingested skips the run (nothing staged, submitted or published).
    Pushes the XComs ``dataset`` (the window dataset, ingest's shape), ``validated`` (the training's
    parameters) and ``run_key`` (:func:`aifactory.feeds.window_run_key`): the train and export tasks
    name the Slurm job and the model version after it, so training the same window again adopts the
    finished job and publishes nothing.
    """

    def __init__(self, *, poll_s: float = 10.0, max_wait: timedelta = timedelta(hours=2), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.poll_s = poll_s
        self.max_wait = max_wait

    def execute(self, context: Context, event: Any = None) -> dict[str, Any]:
        self._wait_while_landing(context, event)
        return self._window(context)

    def _wait_while_landing(self, context: Context, event: Any) -> None:
        from datetime import UTC, datetime

        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
        from airflow.sdk.exceptions import AirflowFailException
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        from aifactory import layout

        dag_id = layout.feed_dag_id(self.tenant, self.feed)
        active = RuntimeTaskInstance.get_dr_count(dag_id=dag_id, states=ACTIVE_RUN_STATES)
        if not active:
            return
        since = context["ti"].xcom_pull(task_ids=self.task_id, key="waiting_since") if event else None
        if since is None:
            since = datetime.now(UTC).isoformat()
            context["ti"].xcom_push(key="waiting_since", value=since)
        waited = datetime.now(UTC) - datetime.fromisoformat(since)
        if waited > self.max_wait:
            raise AirflowFailException(f"{active} run(s) of {dag_id} are still queued or running after {waited}; "
                                       "the window waits for them. Finish or fail them, then clear this task")
        self.log.info("%d run(s) of %s still queued or running (partitions landing, e.g. a backfill): waiting "
                      "%.0fs, then the window covers them all (waited %s so far)", active, dag_id, self.poll_s,
                      waited)
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=self.poll_s)), method_name="execute")

    def _window(self, context: Context) -> dict[str, Any]:
        from aifactory import layout
        from aifactory.data.manifest import require_manifest
        from aifactory.feeds import window_dates, window_end, window_run_key
        from aifactory.feeds.params import feed_run_params, members_from_events
        from aifactory.feeds.window import build_window_dataset

        spec, feed = self.tenant_spec(), self.feed_spec()
        training = feed.training
        params = self.call(feed_run_params, spec, feed, None)
        asset = feed_asset(spec.bucket, spec.tenant, feed.name)
        inlet = context["inlet_events"][asset]
        extras = [e.extra or {} for e in inlet.ascending(False).limit(max(64, 8 * training.window_days))]
        if training.on_asset:
            # the newest partition among the events that landed since this run was triggered (those
            # of a backfill that landed while it waited included), not the newest of all time
            triggered = [e.timestamp for e in (context.get("triggering_asset_events") or {}).get(asset, [])]
            since = [e.extra or {} for e in inlet.after(min(triggered) - timedelta(seconds=1)).ascending(False)] if triggered else extras
            end = window_end(x.get("partition") for x in since)
        else:  # a cron: the newest partition before the run's data interval ends
            until = context["data_interval_end"].strftime(layout.FEED_PARTITION_FORMAT)
            end = window_end(x.get("partition") for x in extras if str(x.get("partition")) < until)
        if end is None:
            self._skip("no partition of the feed has been ingested yet")
        dates = self.call(window_dates, end, training.window_days)
        members = members_from_events(extras, dates)
        if len(members) < training.min_partitions:
            self._skip(f"{len(members)} of the window's {len(dates)} partitions ({dates[0]} .. {dates[-1]}) are "
                       f"ingested, fewer than min_partitions={training.min_partitions}")
        s3 = self.s3()
        loaded = [(m, self.call(require_manifest, s3, spec.bucket,
                                layout.dataset_prefix(spec.tenant, feed.name, m.version))) for m in members]
        manifest = self.call(build_window_dataset, s3, bucket=spec.bucket, tenant=spec.tenant, feed=feed.name,
                             days=training.window_days, members=loaded, log=self.log.info)
        run_key = self.call(window_run_key, feed.name, members, params.to_xcom())
        dataset = dataset_xcom(spec, manifest, params.dataset_uri)
        ti = context["ti"]
        ti.xcom_push(key="dataset", value=dataset)
        ti.xcom_push(key="validated", value=params.to_xcom())
        ti.xcom_push(key="run_key", value=run_key)
        self.log.info("window %s .. %s: %d partition(s) %s -> %s; training key %s", dates[0], dates[-1], len(members),
                      [m.partition for m in members], dataset["uri"], run_key)
        return {"window": [dates[0], dates[-1]], "partitions": [m.partition for m in members],
                "dataset": dataset["uri"], "run_key": run_key}

    def _skip(self, why: str) -> NoReturn:
        from airflow.sdk.exceptions import AirflowSkipException

        self.log.info("nothing to train: %s", why)
        raise AirflowSkipException(f"nothing to train: {why}")
