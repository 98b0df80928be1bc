"""Scheduled data feeds: one date partition per data interval, and training over a window of them.

=================  ====================================================================
``spec``           the ``feeds:`` block of a tenant spec (parsed and checked)
``partitions``     partition keys from data intervals, windows, their content keys
``params``         the feed runs' parameters, through the pipeline's own validation
``window``         a training window as a real dataset version (shards + manifest)
=================  ====================================================================

``docs/feeds.md`` describes how a platform engineer declares a feed and how backfill behaves.
"""

from aifactory.feeds.partitions import (
    Member,
    parse_partition,
    partition_key,
    window_dates,
    window_end,
    window_run_key,
    window_version,
)
from aifactory.feeds.spec import FeedSpec, FeedTraining, parse_feeds

__all__ = ["FeedSpec", "FeedTraining", "Member", "parse_feeds", "parse_partition", "partition_key",
           "window_dates", "window_end", "window_run_key", "window_version"]
