"""Feeds: partition keys from data intervals, windows and their content keys, the ``feeds:`` spec
block and its errors, the feed runs' parameters (aifactory.feeds; no Airflow, no I/O)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from aifactory import layout
from aifactory.data.manifest import DatasetManifest, FileEntry
from aifactory.errors import InputError
from aifactory.feeds import Member, partition_key, window_dates, window_end, window_run_key, window_version
from aifactory.feeds.params import feed_run_params, find_feed, members_from_events
from aifactory.feeds.spec import parse_feed, parse_feeds
from aifactory.feeds.window import check_members
from aifactory.tenants import load_tenant
from aifactory.tenants.spec import load_tenant_specs

DEMO_YAML = layout.TENANTS_DIR / "demo.yaml"
FEED = {"name": "iris_daily", "format": "csv", "schedule": "@daily", "start_date": date(2026, 1, 1),
        "training": {"window_days": 7, "recipe": "tabular_classifier"}}


# -- partitions ---------------------------------------------------------------------------------
def test_the_partition_is_the_data_intervals_start_date_in_utc():
    assert partition_key(datetime(2026, 1, 5, tzinfo=UTC)) == "2026-01-05"
    assert partition_key(datetime(2026, 1, 5, 23, 59, tzinfo=UTC)) == "2026-01-05"
    # an interval that starts at 01:00 in UTC+2 starts on the day before in UTC
    assert partition_key(datetime(2026, 1, 5, 1, 0, tzinfo=timezone(timedelta(hours=2)))) == "2026-01-04"


def test_a_run_without_a_data_interval_has_no_partition():
    with pytest.raises(InputError, match="timezone-aware.*data interval"):
        partition_key(datetime(2026, 1, 5))
    with pytest.raises(InputError, match="data interval"):
        partition_key(None)  # type: ignore[arg-type]


def test_the_partition_prefix_and_asset_key():
    assert layout.feed_partition_prefix("demo", "iris_daily", "2026-01-05") == "demo/raw/feeds/iris_daily/dt=2026-01-05/"
    assert layout.feed_asset_key("demo", "iris_daily") == "demo/datasets/iris_daily"
    assert layout.feed_dag_id("demo", "iris_daily") == "feed_demo_iris_daily"
    assert layout.feed_training_dag_id("demo", "iris_daily") == "train_demo_iris_daily"


def test_a_window_is_the_days_ending_at_the_newest_partition():
    assert window_dates("2026-03-01", 3) == ["2026-02-27", "2026-02-28", "2026-03-01"]
    assert window_dates("2026-01-05", 1) == ["2026-01-05"]
    assert window_end(["2026-01-03", None, "2026-01-09", "x", "2026-01-05"]) == "2026-01-09"
    assert window_end([]) is None
    for bad in ("2026-13-01", "2026/01/01", "", None):
        with pytest.raises(InputError, match="not a date"):
            window_dates(bad, 7)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="window_days"):
        window_dates("2026-01-05", 0)


M1, M2 = Member("2026-01-05", "v-" + "1" * 16, "a" * 64), Member("2026-01-06", "v-" + "2" * 16, "b" * 64)


def test_the_window_version_is_content_addressed_from_its_members():
    assert window_version("f", [M1, M2]) == window_version("f", [M2, M1])  # order does not matter
    assert window_version("f", [M1, M2]) != window_version("f", [M1])
    assert window_version("f", [M1]) != window_version("f", [Member(M1.partition, "v-" + "3" * 16, M1.manifest_sha256)])
    assert layout.VERSION_RE.match(window_version("f", [M1]))
    with pytest.raises(InputError, match="at least one partition"):
        window_version("f", [])


def test_the_training_key_adds_the_parameters():
    params = {"recipe": "r", "hyperparameters": {"epochs": 5}}
    key = window_run_key("f", [M1, M2], params)
    assert key == window_run_key("f", [M2, M1], dict(params)) and key.startswith("window-")
    assert key != window_run_key("f", [M1, M2], {**params, "hyperparameters": {"epochs": 6}})
    assert key != window_run_key("f", [M1], params)


def test_members_are_the_newest_event_of_each_date_in_the_window():
    newest_first = [
        {"partition": "2026-01-06", "version": M2.version, "manifest_sha256": M2.manifest_sha256},
        {"partition": "2026-01-05", "version": M1.version, "manifest_sha256": M1.manifest_sha256},
        {"partition": "2026-01-05", "version": "v-" + "9" * 16, "manifest_sha256": "c" * 64},  # older
        {"partition": "2025-12-01", "version": "v-" + "8" * 16, "manifest_sha256": "d" * 64},  # outside
        {"partition": "2026-01-04", "version": "not-a-version", "manifest_sha256": "e" * 64},
        {"other": "event"},
    ]
    assert members_from_events(newest_first, window_dates("2026-01-06", 3)) == [M1, M2]


def _manifest(member: Member, schema: list[dict[str, str]]) -> DatasetManifest:
    return DatasetManifest(tenant="demo", name="iris_daily", version=member.version, created_at="2026-01-06T00:00:00",
                           schema=schema, rows=1, files=[FileEntry("part-00000.parquet", 1, "0" * 64, 1)], sources=[])


def test_window_members_must_share_one_schema_and_be_the_versions_the_events_name():
    a = [{"name": "x", "type": "double"}]
    m1, m2 = _manifest(M1, a), _manifest(M2, a)
    ok = [(Member(M1.partition, M1.version, m1.manifest_sha256), m1), (Member(M2.partition, M2.version,
                                                                               m2.manifest_sha256), m2)]
    check_members("iris_daily", ok)
    drift = _manifest(M2, [{"name": "x", "type": "string"}])
    with pytest.raises(InputError, match="partition 2026-01-06 has other columns"):
        check_members("iris_daily", [ok[0], (Member(M2.partition, M2.version, drift.manifest_sha256), drift)])
    with pytest.raises(InputError, match="partition 2026-01-06 names dataset version"):
        check_members("iris_daily", [ok[0], (M2, m2)])  # the event's digest is not the manifest's


# -- the spec ------------------------------------------------------------------------------------
def test_the_demo_feed_as_declared():
    spec = load_tenant("demo")
    feed = find_feed(spec, "iris_daily")
    assert (feed.format, feed.schedule, feed.start_date) == ("csv", "@daily", datetime(2026, 1, 1, tzinfo=UTC))
    assert feed.training.window_days == 7 and feed.training.min_partitions == 1 and feed.training.on_asset
    assert spec.suite_for("iris_daily") == spec.suite_for(feed.window_dataset) == "iris"
    assert spec.dag_ids == ("factory_demo", "feed_demo_iris_daily", "train_demo_iris_daily")
    assert load_tenant("acme").dag_ids == ("factory_acme",)


def test_the_demo_feeds_parameters_pass_the_pipelines_validation():
    spec = load_tenant("demo")
    feed = find_feed(spec, "iris_daily")
    run = feed_run_params(spec, feed, "2026-01-05")
    assert run.dataset_uri == "s3://aifactory/demo/raw/feeds/iris_daily/dt=2026-01-05/"
    assert run.recipe == "tabular_classifier" and run.hyperparameters["epochs"] == 5
    assert run.resources.time_limit_minutes == 10 and run.resources.account == spec.slurm_account
    assert feed_run_params(spec, feed, None).dataset_uri == "s3://aifactory/demo/raw/feeds/iris_daily/"
    with pytest.raises(InputError, match="no feed 'nope'"):
        find_feed(spec, "nope")


def test_training_parameters_outside_the_tenants_limits_name_the_feed():
    spec = load_tenant("demo")
    declared = yaml.safe_load(DEMO_YAML.read_text())["feeds"][0]["training"]
    feed = parse_feed({**FEED, "training": {**declared, "resources": {"nodes": 99}}}, "f")
    with pytest.raises(InputError, match="feed iris_daily training: .*nodes"):
        feed_run_params(spec, feed, "2026-01-05")
    hp = {**declared["hyperparameters"], "epochs": "many"}
    feed = parse_feed({**FEED, "training": {**declared, "hyperparameters": hp}}, "f")
    with pytest.raises(InputError, match="(?s)feed iris_daily training: .*epochs"):
        feed_run_params(spec, feed, "2026-01-05")


@pytest.mark.parametrize(("change", "message"), [
    ({"format": "xlsx"}, r"feeds\[0\] \(iris_daily\)\.format 'xlsx' must be one of csv, jsonl, parquet"),
    ({"name": "Iris Daily"}, r"feeds\[0\]\.name 'Iris Daily' must match"),
    ({"schedule": "every day"}, r"\.schedule 'every day' must be a cron expression"),
    ({"start_date": "yesterday"}, r"\.start_date 'yesterday' must be a date"),
    ({"start_date": None, "schedule": None}, "schedule and start_date are required"),
    ({"colour": "blue"}, r"unknown key\(s\) 'colour'"),
    ({"quality_suite": "../x"}, r"quality_suite '../x' must name a suite"),
    ({"training": {"window_days": 0, "recipe": "tabular_classifier"}}, r"training\.window_days must be .* 1 to 366"),
    ({"training": {"window_days": 3, "min_partitions": 4, "recipe": "tabular_classifier"}},
     r"training\.min_partitions must be .* 1 to 3"),
    ({"training": {"recipe": "tabular_classifier", "schedule": "sometimes"}}, r"training\.schedule 'sometimes'"),
    ({"training": {"recipe": "no_such"}}, r"training\.recipe 'no_such' is not one of the tenant's recipes"),
    ({"training": {"recipe": "tabular_classifier", "resources": {"account": "other"}}},
     r"training\.resources: unknown key\(s\) 'account'"),
    ({"training": {"recipe": "tabular_classifier", "epochs": 3}}, r"training: unknown key\(s\) 'epochs'"),
    ({"training": ["tabular_classifier"]}, r"training must be a mapping"),
    ({"name": "f" * 62}, r"too long for its window dataset name"),
])
def test_each_bad_key_is_named_with_the_file(tmp_path: Path, change, message):
    data = yaml.safe_load(DEMO_YAML.read_text())
    data["feeds"] = [{k: v for k, v in {**FEED, **change}.items() if v is not None}]
    data["recipes"] = ["tabular_classifier"]
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(data))
    (error,) = load_tenant_specs(tmp_path).errors
    assert str(tmp_path / "demo.yaml") in error.message
    assert __import__("re").search(message, error.message), error.message


def test_feeds_absent_null_or_a_list_of_unique_names():
    assert parse_feeds(None, "w") == ()
    with pytest.raises(InputError, match="feeds must be a list"):
        parse_feeds({"name": "x"}, "w")
    with pytest.raises(InputError, match="iris_daily are used more than once"):
        parse_feeds([FEED, FEED], "w")
    feed = parse_feed({**FEED, "start_date": "2026-02-03", "training": None, "schedule": "0 2 * * *"}, "w")
    assert feed.training is None and feed.window_dataset is None
    assert feed.start_date == datetime(2026, 2, 3, tzinfo=UTC) and feed.schedule == "0 2 * * *"


def test_a_feed_suite_that_contradicts_quality_suites_is_refused(tmp_path: Path):
    data = yaml.safe_load(DEMO_YAML.read_text())
    data["feeds"] = [{**FEED, "quality_suite": "iris"}]
    data["quality_suites"] = {"iris_daily": "tabular_default"}
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(data))
    (error,) = load_tenant_specs(tmp_path).errors
    assert "quality_suites names 'tabular_default' for dataset 'iris_daily'" in error.message
