"""The run parameters of a feed's DAGs, checked by the pipeline's own validation.

A feed run and a window training run take no trigger form: their parameters come from the tenant
spec (``feeds[].training``) and the data interval. :func:`feed_run_params` turns them into the
pipeline's :class:`~aifactory.tenants.RunParams` with
:func:`~aifactory.tenants.params.validate_run_params`, so the recipe's schema and the tenant's
limits are checked in one place, before any side effect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aifactory import layout
from aifactory.errors import InputError
from aifactory.feeds.partitions import Member, parse_partition, window_dates
from aifactory.feeds.spec import FeedSpec
from aifactory.tenants.params import RunParams, validate_run_params
from aifactory.tenants.spec import TenantSpec
from aifactory.text import shown


def find_feed(spec: TenantSpec, name: str) -> FeedSpec:
    for feed in spec.feeds:
        if feed.name == name:
            return feed
    raise InputError(f"tenant {spec.tenant} has no feed {shown(name)}; feeds: {[f.name for f in spec.feeds]}")


def partition_uri(spec: TenantSpec, feed: FeedSpec, partition: str | None) -> str:
    """The raw folder of one partition, or of the whole feed (``partition=None``)."""
    prefix = (layout.feed_raw_prefix(spec.tenant, feed.name) if partition is None
              else layout.feed_partition_prefix(spec.tenant, feed.name, partition))
    return layout.s3_uri(spec.bucket, prefix)


def feed_run_params(spec: TenantSpec, feed: FeedSpec, partition: str | None) -> RunParams:
    """The validated parameters of one feed run (``partition``) or training run (``None``)."""
    if partition is not None:
        parse_partition(partition)
    training = feed.training
    if training is None:  # ingest and quality only: the suite's parameters come from the tenant's defaults
        conf: dict[str, Any] = {k: spec.defaults[k] for k in ("recipe", "hyperparameters") if k in spec.defaults}
    else:
        conf = {"recipe": training.recipe, "hyperparameters": dict(training.hyperparameters),
                **dict(training.resources)}
    conf["dataset_uri"] = partition_uri(spec, feed, partition)
    try:
        return validate_run_params(conf, spec, purpose="feed")
    except InputError as exc:
        where = "training" if training is not None else "(no training: the tenant's defaults)"
        raise InputError(f"tenant spec {spec.tenant}: feed {feed.name} {where}: {exc}; fix the spec") from exc


def members_from_events(extras: Iterable[Mapping[str, Any]], dates: Iterable[str]) -> list[Member]:
    """The window's members from the feed's asset events (newest first): per date, the newest
    event's dataset version; dates without an event are missing. Oldest partition first."""
    wanted = set(dates)
    found: dict[str, Member] = {}
    for extra in extras:
        key = extra.get("partition") if isinstance(extra, Mapping) else None
        if key in wanted and key not in found:
            version, digest = extra.get("version"), extra.get("manifest_sha256")
            if isinstance(version, str) and layout.VERSION_RE.match(version) and isinstance(digest, str):
                found[key] = Member(partition=key, version=version, manifest_sha256=digest)
    return [found[d] for d in sorted(found)]


__all__ = ["feed_run_params", "find_feed", "members_from_events", "partition_uri", "window_dates"]
