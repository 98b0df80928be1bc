"""Partition keys, training windows and their content keys: pure functions (no Airflow, no I/O).

* A feed run's partition is its **data interval's start** as a UTC date (``dt=YYYY-MM-DD``),
  never the wall clock: a backfill of 2026-01-05 ingests ``dt=2026-01-05`` whenever it runs.
* A training window is the ``days`` dates ending at ``end`` (the newest partition that triggered
  the run). Its members are the partitions of those dates whose dataset version exists.
* Two keys identify a window:

  - :func:`window_version`: the window *dataset's* version, from its member dataset versions only
    (``v-`` + 16 hex): the same partitions give the same dataset version, whoever builds it;
  - :func:`window_run_key`: the *training's* identity, from the member versions and the training
    parameters (``window-`` + 16 hex). The Slurm job name and the model version are derived from
    it instead of the run id, so a second training over the same window re-attaches to (or adopts)
    the first one's job and publishes nothing new.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aifactory import layout
from aifactory.errors import InputError
from aifactory.text import shown


def partition_key(interval_start: datetime) -> str:
    """The partition of a data interval: its start's UTC date, ``YYYY-MM-DD``."""
    if not isinstance(interval_start, datetime) or interval_start.tzinfo is None:
        raise InputError(f"data interval start {shown(interval_start)} must be a timezone-aware datetime; a feed "
                         "run needs a data interval (schedule it, or backfill it, instead of a manual trigger)")
    return interval_start.astimezone(UTC).strftime(layout.FEED_PARTITION_FORMAT)


def parse_partition(key: Any) -> date:
    """A partition key back to its date; InputError for anything but ``YYYY-MM-DD``."""
    if isinstance(key, str) and layout.FEED_PARTITION_RE.match(key):
        try:
            return datetime.strptime(key, layout.FEED_PARTITION_FORMAT).date()
        except ValueError:
            pass
    raise InputError(f"partition {shown(key)} is not a date like 2026-01-05")


def window_dates(end: str, days: int) -> list[str]:
    """The ``days`` partition keys ending at ``end`` (oldest first)."""
    last = parse_partition(end)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise InputError(f"window_days {shown(days)} must be a whole number >= 1")
    return [(last - timedelta(days=n)).strftime(layout.FEED_PARTITION_FORMAT) for n in range(days - 1, -1, -1)]


def window_end(partitions: Iterable[Any]) -> str | None:
    """The newest of the partition keys (those that are not dates are ignored); None when there is none."""
    keys = [k for k in partitions if isinstance(k, str) and layout.FEED_PARTITION_RE.match(k)]
    return max(keys) if keys else None


@dataclass(frozen=True)
class Member:
    """One partition of a window and its dataset version."""

    partition: str
    version: str
    manifest_sha256: str

    def as_list(self) -> list[str]:
        return [self.partition, self.version, self.manifest_sha256]


def _digest(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def _members(members: Iterable[Member]) -> list[list[str]]:
    out = sorted(m.as_list() for m in members)
    if not out:
        raise InputError("a training window needs at least one partition")
    return out


def window_version(feed: str, members: Iterable[Member]) -> str:
    """The window dataset's version: content-addressed from its member dataset versions."""
    return "v-" + _digest({"feed": feed, "members": _members(members)})


def window_run_key(feed: str, members: Iterable[Member], params: Mapping[str, Any]) -> str:
    """The training's identity: member versions + the training parameters (job name, model version)."""
    return "window-" + _digest({"feed": feed, "members": _members(members), "params": dict(params)})
