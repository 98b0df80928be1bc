"""A feed backfilled through Airflow's own backfill (POST /api/v2/backfills) on the real stack.

Five days of the demo feed ``iris_daily`` are uploaded (each partition's rows shuffled with this
session's seed, so its content, and so its dataset version, is new) and backfilled as the
operator login: five partitions ingested (five dataset versions, five Asset events), then the
training over the window runs once: one Slurm job (sacct, by the job name of the window's key)
and one model version. (Airflow queues the Asset events that land while a training run is active
and starts one more run for them once it ends: measured, that run derives the same window and key,
re-attaches to the finished job and publishes nothing.) The same backfill again (reprocess_behavior=completed: every date's run is
run again) creates no dataset version, submits no job and publishes no model version.
"""

from __future__ import annotations

import random
import secrets
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.data.s3 import list_keys
from aifactory.hpc.slurm import job_name
from aifactory.local.airflow_api import TERMINAL_RUN_STATES, AirflowClient
from aifactory.tenants import load_tenant

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
SPEC = load_tenant("demo")
FEED = next(f for f in SPEC.feeds if f.name == "iris_daily")
FEED_DAG, TRAIN_DAG = layout.feed_dag_id(SPEC.tenant, FEED.name), layout.feed_training_dag_id(SPEC.tenant, FEED.name)
DAYS = 5
MODEL = f"{FEED.window_dataset}-{FEED.training.recipe}".replace("_", "-")  # export's model name rule


def manifests(s3, prefix: str) -> set[str]:
    return {k for k in list_keys(s3, SPEC.bucket, prefix) if k.endswith("/" + layout.MANIFEST_NAME)}


def sacct_count(name: str) -> int:
    out = subprocess.run(["sacct", "--noheader", "--parsable2", "-X", "-S", "now-2days", f"--name={name}",
                          "-o", "JobID,QOS"], capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    # a feed's training runs under the tenant's feed QOS (slurm.qos.feed), never its manual runs' one
    assert all(row[1] == SPEC.qos_by_purpose["feed"] for row in rows), rows
    return len(rows)


def upload_partitions(s3, dates: list[str]) -> None:
    header, *rows = (REPO / "include/sample_data/iris.csv").read_text().splitlines()
    rng = random.Random(secrets.randbits(64))
    for day in dates:
        rng.shuffle(rows)
        key = layout.feed_partition_prefix(SPEC.tenant, FEED.name, day) + "part-0.csv"
        s3.put_object(Bucket=SPEC.bucket, Key=key, Body=("\n".join([header, *rows]) + "\n").encode())


def free_dates(api: AirflowClient) -> list[str]:
    """Five dates after every earlier run of the feed and a window apart from them (so the window
    holds this session's partitions only), before yesterday."""
    starts = [datetime.fromisoformat(r["logical_date"]) for r in api.runs(FEED_DAG) if r.get("logical_date")]
    first = max([FEED.start_date - timedelta(days=1), *starts]) + timedelta(days=FEED.training.window_days + 1)
    assert first + timedelta(days=DAYS) < datetime.now(UTC) - timedelta(days=1), "no free dates left in this year"
    return [(first + timedelta(days=n)).strftime(layout.FEED_PARTITION_FORMAT) for n in range(DAYS)]


def backfill(operator: AirflowClient, dates: list[str], reprocess: str) -> dict:
    start = datetime.strptime(dates[0], layout.FEED_PARTITION_FORMAT).replace(tzinfo=UTC)
    end = datetime.strptime(dates[-1], layout.FEED_PARTITION_FORMAT).replace(tzinfo=UTC)
    created = operator.backfill(FEED_DAG, start, end, reprocess_behavior=reprocess)
    return operator.wait_for_backfill(created["id"], timeout=900)


def settled_training(api: AirflowClient, since: datetime, timeout: float = 900) -> list[dict]:
    """The training runs started since ``since``, once none is running and no asset event waits to start another."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in api.runs(TRAIN_DAG) if datetime.fromisoformat(r["run_after"]) >= since]
        if runs and all(r["state"] in TERMINAL_RUN_STATES for r in runs) and not api.queued_asset_events(TRAIN_DAG):
            return runs
        time.sleep(2)
    raise AssertionError(f"training runs of {TRAIN_DAG} since {since} did not settle within {timeout:.0f}s")


def task_states(api: AirflowClient, dag_id: str, run_id: str) -> dict[str, str]:
    return {t["task_id"]: t["state"] for t in api.task_instances(dag_id, run_id)}


@pytest.fixture(scope="module")
def feed(api, api_as, s3_client):
    """The feed's partitions uploaded, both DAGs unpaused (measured: a paused DAG's backfill runs
    stay queued), the operator's client."""
    api.wait_for_dag(FEED_DAG)
    api.wait_for_dag(TRAIN_DAG)
    api.unpause(TRAIN_DAG)
    api.unpause(FEED_DAG)
    dates = free_dates(api)
    upload_partitions(s3_client, dates)
    return dates, api_as(layout.OPERATOR_LOGIN)


FEED_DATASETS = layout.datasets_prefix(SPEC.tenant) + FEED.name + "/"
MODELS = layout.models_prefix(SPEC.tenant) + MODEL + "/"


@pytest.fixture(scope="module")
def first(api, feed, s3_client) -> dict:
    """The first backfill of the five dates, and the training that followed it."""
    dates, operator = feed
    datasets_before, models_before = manifests(s3_client, FEED_DATASETS), manifests(s3_client, MODELS)
    since = datetime.now(UTC)
    backfill(operator, dates, "none")
    runs = {r["logical_date"][:10]: r for r in api.runs(FEED_DAG)
            if r["run_type"] == "backfill" and (r["logical_date"] or "")[:10] in dates}
    events = [e for r in runs.values() for e in api.asset_events(source_dag_id=FEED_DAG, source_run_id=r["dag_run_id"])]
    trained = settled_training(api, since)
    windows = [api.xcom(TRAIN_DAG, r["dag_run_id"], "window") for r in trained if r["state"] == "success"]
    return {"runs": runs, "events": events, "trained": trained, "windows": windows,
            "new_datasets": manifests(s3_client, FEED_DATASETS) - datasets_before,
            "new_models": manifests(s3_client, MODELS) - models_before}


def test_backfill_ingests_each_partition_once(feed, first):
    dates, _ = feed
    runs = first["runs"]
    assert sorted(runs) == dates and {r["state"] for r in runs.values()} == {"success"}, runs
    assert len(first["new_datasets"]) == DAYS  # five partitions, five dataset versions
    events = first["events"]
    assert sorted(e["extra"]["partition"] for e in events) == dates  # one Asset event per partition
    assert {FEED_DATASETS + e["extra"]["version"] + "/" + layout.MANIFEST_NAME for e in events} == first["new_datasets"]


def test_the_training_after_the_backfill_runs_once_over_the_window(api, feed, first):
    dates, _ = feed
    trained = first["trained"]
    for run in trained:
        assert run["state"] == "success", task_states(api, TRAIN_DAG, run["dag_run_id"])
    assert first["windows"] and all(w["partitions"] == dates for w in first["windows"])  # all five, not one date
    keys = {w["run_key"] for w in first["windows"]}
    assert len(keys) == 1, keys
    assert sacct_count(job_name(SPEC.tenant, TRAIN_DAG, keys.pop(), "train")) == 1  # one Slurm job
    assert len(first["new_models"]) == 1, first["new_models"]  # one model version
    print(f"\nmeasured: a backfill of {DAYS} dates -> {len(trained)} training run(s), one job, one model version")


def test_the_same_backfill_again_creates_nothing_new(api, feed, first, s3_client):
    dates, operator = feed
    (key,) = {w["run_key"] for w in first["windows"]}
    datasets_before, models_before = manifests(s3_client, layout.datasets_prefix(SPEC.tenant)), \
        manifests(s3_client, MODELS)
    since = datetime.now(UTC)
    backfill(operator, dates, "completed")  # every date's run is run again

    assert manifests(s3_client, layout.datasets_prefix(SPEC.tenant)) == datasets_before  # not even a window
    trained = settled_training(api, since)
    for run in trained:
        states = task_states(api, TRAIN_DAG, run["dag_run_id"])
        assert run["state"] == "success", states
        if states.get("train") == "success":
            assert api.xcom(TRAIN_DAG, run["dag_run_id"], "window")["run_key"] == key
            assert api.xcom(TRAIN_DAG, run["dag_run_id"], "export")["published"] is False
    assert sacct_count(job_name(SPEC.tenant, TRAIN_DAG, key, "train")) == 1  # nothing submitted
    assert manifests(s3_client, MODELS) == models_before  # nothing published
    print(f"\nmeasured: the same backfill again -> {len(trained)} training run(s), nothing submitted or published")
