"""``feeds:`` in a tenant spec: scheduled date-partitioned uploads, and training over a window of them.

A feed is a prefix of the tenant's raw area with one folder per data interval
(``layout.feed_partition_prefix``: ``<tenant>/raw/feeds/<feed>/dt=YYYY-MM-DD/``). Its DAG
(``layout.feed_dag_id``) ingests and gates exactly one partition per data interval; its training
DAG (``layout.feed_training_dag_id``) trains over the last ``window_days`` partitions.

Shape (every key is checked; an error names the file and the key)::

    feeds:
      - name: iris_daily              # layout.NAME_RE; the dataset every partition is a version of
        format: csv                   # csv | jsonl | parquet: every object of a partition has it
        schedule: "@daily"            # cron or preset: one partition per data interval
        start_date: 2026-01-01        # the first data interval (UTC); backfills start here at the earliest
        quality_suite: iris           # default: the tenant's suite for the feed's name
        training:                     # optional: no training DAG without it
          window_days: 7              # the partitions [end - window_days + 1, end]
          min_partitions: 1           # fewer present in the window: the run trains nothing (default: window_days)
          schedule: asset             # asset (on the feed's Asset, default) or a cron
          recipe: tabular_classifier  # one of the tenant's recipes
          hyperparameters: {...}      # checked against the recipe's schema at each run
          resources: {nodes: 1, ...}  # the trigger form's resource fields, within the tenant's limits

Pure parsing: no Airflow, no I/O. The run-time check of the training parameters against the
recipe and the tenant's limits is :func:`aifactory.feeds.params.feed_run_params`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from aifactory import layout
from aifactory.errors import InputError
from aifactory.text import shown

FORMATS = ("csv", "jsonl", "parquet")
#: ``training.schedule`` that schedules the training on the feed's Asset
ASSET_SCHEDULE = "asset"
#: the largest training window (a year of daily partitions)
MAX_WINDOW_DAYS = 366
#: a cron expression (five or six fields of cron characters) or an Airflow preset
_CRON_RE = re.compile(r"^(@(hourly|daily|weekly|monthly|yearly|annually|midnight)|([0-9*/,?LW#A-Za-z-]+\s+){4,5}"
                      r"[0-9*/,?LW#A-Za-z-]+)$")
_FEED_KEYS = ("name", "format", "schedule", "start_date", "quality_suite", "training")
_TRAINING_KEYS = ("window_days", "min_partitions", "schedule", "recipe", "hyperparameters", "resources")


@dataclass(frozen=True)
class FeedTraining:
    """How a feed's training DAG picks its window and what it trains."""

    window_days: int
    min_partitions: int
    schedule: str
    recipe: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    resources: Mapping[str, Any] = field(default_factory=dict)

    @property
    def on_asset(self) -> bool:
        return self.schedule == ASSET_SCHEDULE


@dataclass(frozen=True)
class FeedSpec:
    name: str
    format: str
    schedule: str
    start_date: datetime
    quality_suite: str | None
    training: FeedTraining | None = None

    @property
    def window_dataset(self) -> str | None:
        """The dataset the training windows are versions of (``layout.feed_window_dataset``)."""
        return layout.feed_window_dataset(self.name, self.training.window_days) if self.training else None


def _unknown(raw: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(shown(k) for k in unknown)}; known: {', '.join(known)}")


def _schedule(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _CRON_RE.match(value.strip()):
        raise InputError(f"{where} {shown(value)} must be a cron expression (\"0 2 * * *\") or a preset "
                         "(@hourly, @daily, @weekly, @monthly, @yearly)")
    return value.strip()


def _start_date(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        try:
            return datetime.strptime(value, layout.FEED_PARTITION_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            pass
    raise InputError(f"{where} {shown(value)} must be a date like 2026-01-01 (the first data interval, UTC)")


def _positive(raw: Mapping[str, Any], key: str, where: str, default: int, high: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InputError(f"{where}.{key} must be a whole number from 1 to {high}, got {shown(value)}")
    return value


def _training(raw: Any, where: str, tenant_recipes: tuple[str, ...]) -> FeedTraining:
    if not isinstance(raw, Mapping):
        raise InputError(f"{where} must be a mapping like {{window_days: 7, recipe: tabular_classifier}}")
    _unknown(raw, _TRAINING_KEYS, where)
    days = _positive(raw, "window_days", where, 7, MAX_WINDOW_DAYS)
    least = _positive(raw, "min_partitions", where, days, days)
    schedule = raw.get("schedule", ASSET_SCHEDULE)
    if schedule != ASSET_SCHEDULE:
        schedule = _schedule(schedule, f"{where}.schedule")
    recipe = raw.get("recipe")
    if not isinstance(recipe, str) or not layout.NAME_RE.match(recipe):
        raise InputError(f"{where}.recipe {shown(recipe)} must name a recipe folder (include/recipes/<name>)")
    if "*" not in tenant_recipes and recipe not in tenant_recipes:
        raise InputError(f"{where}.recipe {shown(recipe)} is not one of the tenant's recipes {list(tenant_recipes)}")
    hyperparameters = raw.get("hyperparameters") or {}
    if not isinstance(hyperparameters, Mapping) or not all(isinstance(k, str) for k in hyperparameters):
        raise InputError(f"{where}.hyperparameters must be a mapping of names to values")
    resources = raw.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise InputError(f"{where}.resources must be a mapping like {{nodes: 1, cpus_per_task: 1}}")
    # late: aifactory.tenants.params imports the tenant spec, which imports this module
    from aifactory.tenants.params import RESOURCE_FIELDS

    _unknown(resources, RESOURCE_FIELDS, f"{where}.resources")
    return FeedTraining(window_days=days, min_partitions=least, schedule=schedule, recipe=recipe,
                        hyperparameters=dict(hyperparameters), resources=dict(resources))


def parse_feed(raw: Any, where: str, tenant_recipes: tuple[str, ...] = ("*",)) -> FeedSpec:
    """One entry of ``feeds:``; InputError naming ``where`` and the key."""
    if not isinstance(raw, Mapping):
        raise InputError(f"{where} must be a mapping like {{name: iris_daily, format: csv, schedule: \"@daily\"}}")
    _unknown(raw, _FEED_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not layout.NAME_RE.match(name):
        raise InputError(f"{where}.name {shown(name)} must match {layout.NAME_RE.pattern}")
    where = f"{where} ({name})"
    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise InputError(f"{where}.format {shown(fmt)} must be one of {', '.join(FORMATS)}")
    if "schedule" not in raw or "start_date" not in raw:
        raise InputError(f"{where}: schedule and start_date are required (e.g. schedule: \"@daily\", "
                         "start_date: 2026-01-01)")
    suite = raw.get("quality_suite")
    if suite is not None and (not isinstance(suite, str) or not layout.NAME_RE.match(suite)):
        raise InputError(f"{where}.quality_suite {shown(suite)} must name a suite (include/expectations/<name>.json)")
    training = None
    if raw.get("training") is not None:
        training = _training(raw["training"], f"{where}.training", tenant_recipes)
        window = layout.feed_window_dataset(name, training.window_days)
        if not layout.NAME_RE.match(window):
            raise InputError(f"{where}.name {shown(name)} is too long for its window dataset name {shown(window)}; "
                             "shorten it")
    return FeedSpec(name=name, format=fmt, schedule=_schedule(raw["schedule"], f"{where}.schedule"),
                    start_date=_start_date(raw["start_date"], f"{where}.start_date"), quality_suite=suite,
                    training=training)


def parse_feeds(raw: Any, where: str, tenant_recipes: tuple[str, ...] = ("*",)) -> tuple[FeedSpec, ...]:
    """The ``feeds:`` list of a tenant spec (absent or null: no feeds); names are unique."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InputError(f"{where}: feeds must be a list of feeds (- name: iris_daily ...)")
    feeds = tuple(parse_feed(item, f"{where}: feeds[{i}]", tenant_recipes) for i, item in enumerate(raw))
    names = [f.name for f in feeds]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"{where}: feeds: the name(s) {', '.join(twice)} are used more than once; each feed "
                         "needs its own name")
    return feeds
