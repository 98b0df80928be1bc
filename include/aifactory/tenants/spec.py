"""Tenant and cluster specs: loading and checking the platform-owned YAML files.

A tenant spec (``include/tenants/<tenant>.yaml``) is owned by platform engineers: it fixes the
tenant's bucket, Slurm account, allowed partitions and recipes, and the upper bounds of every
resource a startup may ask for. A startup's trigger form can only choose *within* those bounds:
it never picks a host, a connection, an account or another tenant's paths.

The validation of a run's parameters against a spec lives in :mod:`aifactory.tenants.params`.
Every name rule (tenant, Slurm names) and every key or path comes from :mod:`aifactory.layout`
and :mod:`aifactory.hpc.slurm`: this module only reads the files.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aifactory import layout
from aifactory.errors import InputError
from aifactory.feeds.spec import FeedSpec, parse_feeds
from aifactory.hpc.containers import Containers, parse_containers
from aifactory.hpc.site import SiteEnvironment, parse_environment
from aifactory.hpc.slurm import TenantSlurmPolicy
from aifactory.hpc.slurm.checks import SLURM_NAME_RE, check_remote_path
from aifactory.hpc.slurm.resources import GpuOffer, check_placement
from aifactory.hpc.staging.options import STAGING_MODES, StagingOptions
from aifactory.layout import CLUSTERS_DIR, TENANT_RE, AreaTemplates, TenantAreas
from aifactory.models.own_code import ENV_RETENTION_DAYS, check_retention_days
from aifactory.tenants.notifications import NotificationTarget, parse_notifications
from aifactory.text import shown
from aifactory.yamlfiles import cached, parse_yaml, spec_block

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_nodes: int
    max_gpus_per_node: int
    max_cpus_per_task: int
    max_mem_gb: int
    max_time_limit_minutes: int
    #: how long one run may hold an allocation across all its requeues: ``time_limit_minutes *
    #: (1 + max_requeues)`` must not exceed it (see :func:`aifactory.tenants.params.check_hold`).
    #: Absent: :data:`DEFAULT_HOLD_FACTOR` times ``max_time_limit_minutes``.
    max_hold_minutes: int = 0

    def __post_init__(self) -> None:
        if self.max_hold_minutes <= 0:
            object.__setattr__(self, "max_hold_minutes", DEFAULT_HOLD_FACTOR * self.max_time_limit_minutes)


#: a spec without ``limits.max_hold_minutes`` lets a run hold its allocation for this many time
#: limits (the first start and five requeues)
DEFAULT_HOLD_FACTOR = 6


@dataclass(frozen=True)
class Identity:
    """Who one tenant is on its cluster and in the object store (``identity:`` in the tenant spec).

    Every task of the tenant's pipeline uses these and nothing else: its own Unix login on the
    cluster (which owns the tenant's directories, mode 0700, and is the only user associated with
    its Slurm account), reached through its own Airflow SSH connection, and its own S3 credential,
    allowed only the tenant's bucket. The platform's identities (the cluster spec's
    ``ssh_conn_id``, :data:`PLATFORM_S3_CONN_ID`) are used by platform tasks only.
    """

    unix_user: str
    ssh_conn_id: str
    s3_conn_id: str


@dataclass(frozen=True)
class Allocation:
    """The tenant's budget on its cluster, applied by onboarding as Slurm ``GrpTRESMins`` on its
    account, so Slurm itself refuses work past it; the train task checks what remains first."""

    cpu_hours: int
    gpu_hours: int
    #: whom a startup asks for more (named in the train task's refusal)
    contact: str


#: the platform's own S3 credential (an Airflow connection): onboarding, platform DAGs, never a tenant task
PLATFORM_S3_CONN_ID = "aifactory_s3"


@dataclass(frozen=True)
class ClusterSpec:
    """How the factory reaches one HPC system (``include/clusters/<name>.yaml``)."""

    name: str
    #: the platform's service identity on this cluster: manages accounts and sweeps, never runs a tenant's job
    ssh_conn_id: str
    hpc_root: str
    python: str
    poll_interval_s: float
    poll_interval_floor_s: float
    #: ``staging: {mode: push|pull, parallel: N, url_ttl_s: S}`` (see aifactory.hpc.staging)
    staging_mode: str = StagingOptions.mode
    staging_parallel: int = StagingOptions.parallel
    staging_url_ttl_s: int = StagingOptions.url_ttl_s
    #: the GPUs of each partition that has some (``partitions: {<name>: {gpu_type: a100, gpus_per_node: 4}}``)
    gpus: tuple[GpuOffer, ...] = ()
    #: what every job sources and loads first (``environment: {setup, module_path, modules}``, aifactory.hpc.site)
    environment: SiteEnvironment = field(default_factory=SiteEnvironment)
    #: the container runtime and the images a recipe may name (``containers:``, aifactory.hpc.containers)
    containers: Containers = field(default_factory=Containers)
    #: where each tenant's project and scratch areas are (``areas: {project, scratch}``; layout.AreaTemplates)
    areas: AreaTemplates = field(default_factory=AreaTemplates)
    #: the package index (a site's PyPI mirror) the login nodes reach, for the environments of tenants'
    #: own code whose folder ships no wheels (``package_index:``); None: wheels only
    package_index: str | None = None
    #: an own-code environment no run used for this many days is removed by the tenant's next build
    #: or reuse of another (``env_retention_days``; aifactory.models.own_code)
    env_retention_days: int = ENV_RETENTION_DAYS

    @property
    def platform_paths(self) -> tuple[str, ...]:
        """What the platform installs on the cluster for every tenant (the training Python, the
        module tree, the container images): no tenant's area may hold one of them, or be inside one."""
        return (self.python, *self.environment.module_path, *(image.path for image in self.containers.images))

    @property
    def effective_poll_interval_s(self) -> float:
        """The interval actually used: never below the site's floor."""
        return max(self.poll_interval_s, self.poll_interval_floor_s)


@dataclass(frozen=True)
class TenantSpec:
    tenant: str
    display_name: str
    owner: str
    bucket: str
    cluster: str
    slurm_account: str
    partitions: tuple[str, ...]
    #: the QOS of the tenant's "train" jobs (its manual runs); None: the account's default
    qos: str | None
    limits: Limits
    quality_suite: str
    recipes: tuple[str, ...]
    schedule: str | None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: per-dataset suites (``quality_suites: {<dataset name>: <suite>}``); others use quality_suite
    quality_suites: Mapping[str, str] = field(default_factory=dict)
    #: overrides the cluster's ``staging.mode`` for this tenant (``staging: {mode: pull}``)
    staging_mode: str | None = None
    #: the tenant's own identities (required in every spec; the default only serves unit-test fakes)
    identity: Identity | None = None
    #: the tenant's CPU/GPU budget (required in every spec; see :class:`Allocation`)
    allocation: Allocation | None = None
    #: the tenant's Airflow logins (role :func:`aifactory.layout.tenant_role`); passwords are generated
    airflow_users: tuple[str, ...] = ()
    #: where the pipeline's failures are announced (``notifications: {on_failure: [...]}``)
    notifications: tuple[NotificationTarget, ...] = ()
    #: scheduled date-partitioned uploads and their training windows (``feeds:``, aifactory.feeds)
    feeds: tuple[FeedSpec, ...] = ()
    #: the GPU types this tenant may use (``slurm.gpu_types``), on those of its partitions that have them
    gpu_types: tuple[str, ...] = ()
    #: node features every job requires (``slurm.constraint``) and the reservation jobs run in (``slurm.reservation``)
    constraint: str | None = None
    reservation: str | None = None
    #: the QOS of each purpose of the tenant's jobs (``slurm.qos: {train: ..., feed: ..., probe: ...}``,
    #: or one name for all): platform-owned, never from a form; a purpose not named uses the account's default
    qos_by_purpose: Mapping[str, str] = field(default_factory=dict)
    #: may run its own training code from ``s3://<bucket>/<tenant>/code/<name>/`` (``own_code: true``;
    #: the recipe choice ``own-code`` with a ``code_uri``: aifactory.models.own_code)
    own_code: bool = False
    #: this tenant's own area templates (``areas: {project, scratch}``), where they differ from its
    #: cluster's (a site's project number that is not the Slurm account); each key optional
    area_templates: Mapping[str, str] = field(default_factory=dict)

    def suite_for(self, dataset_name: str, recipe_suite: str | None = None) -> str:
        """The quality suite of one dataset: its own entry in ``quality_suites``; else the suite the
        run's recipe asks for (``recipe_suite``: a platform recipe's ``quality_suite``, the shape of
        data it trains on); else the tenant's ``quality_suite``."""
        return self.quality_suites.get(dataset_name) or recipe_suite or self.quality_suite

    # --- the tenant's areas -------------------------------------------------------------------
    # (thin calls: the layout is defined once, in aifactory.layout)
    @property
    def raw_prefix(self) -> str:
        return layout.raw_prefix(self.tenant)

    @property
    def raw_uri_prefix(self) -> str:
        return layout.s3_uri(self.bucket, self.raw_prefix)

    @property
    def datasets_prefix(self) -> str:
        return layout.datasets_prefix(self.tenant)

    def dataset_prefix(self, name: str, version: str) -> str:
        return layout.dataset_prefix(self.tenant, name, version)

    def model_prefix(self, model: str, version: str) -> str:
        return layout.model_prefix(self.tenant, model, version)

    @property
    def dag_ids(self) -> tuple[str, ...]:
        """Every DAG generated for this tenant: its pipeline, and each feed's feed and training DAGs."""
        ids = [layout.pipeline_dag_id(self.tenant)]
        for feed in self.feeds:
            ids.append(layout.feed_dag_id(self.tenant, feed.name))
            if feed.training is not None:
                ids.append(layout.feed_training_dag_id(self.tenant, feed.name))
        return tuple(ids)

    def allows_recipe(self, recipe: str) -> bool:
        """``recipes: ["*"]`` allows every recipe folder; otherwise an explicit allowlist."""
        return "*" in self.recipes or recipe in self.recipes

    @property
    def qos_names(self) -> tuple[str, ...]:
        """Every QOS the tenant's jobs use (onboarding grants these to its account)."""
        return tuple(sorted(set(self.qos_by_purpose.values())))

    def slurm_policy(self, purpose: str = "train") -> TenantSlurmPolicy:
        """What this tenant may ask Slurm for (account, partitions, QoS, bounds, and the GPUs of its
        partitions whose type its spec allows, from its cluster's spec).

        :param purpose: what the job is for (:data:`JOB_PURPOSES`): it picks the QOS.
        """
        if purpose not in JOB_PURPOSES:
            raise InputError(f"job purpose {shown(purpose)} is not one of {list(JOB_PURPOSES)} (a platform bug)")
        lim = self.limits
        offers = tuple(o for o in load_cluster(self.cluster).gpus
                       if o.partition in self.partitions and o.gpu_type in self.gpu_types)
        return TenantSlurmPolicy(
            gpu_offers=offers,
            account=self.slurm_account,
            partitions=self.partitions,
            qos=self.qos_by_purpose.get(purpose),
            constraint=self.constraint,
            reservation=self.reservation,
            max_nodes=lim.max_nodes,
            max_cpus_per_task=lim.max_cpus_per_task,
            max_mem_gb=lim.max_mem_gb,
            max_gpus_per_node=lim.max_gpus_per_node,
            max_time_limit_minutes=lim.max_time_limit_minutes,
        )

    def areas(self, cluster: ClusterSpec) -> TenantAreas:
        """The tenant's project and scratch areas on ``cluster``: its own ``areas:`` templates where
        its spec has them, else the cluster's."""
        user = self.identity.unix_user if self.identity is not None else None
        templates = (self.area_templates.get("project") or cluster.areas.project,
                     self.area_templates.get("scratch") or cluster.areas.scratch)
        try:
            return TenantAreas(*(layout.area_path(template, hpc_root=cluster.hpc_root, tenant=self.tenant,
                                                  account=self.slurm_account, user=user)
                                 for template in templates))
        except ValueError as exc:
            raise InputError(f"cluster {cluster.name!r}, areas: {exc}; fix the cluster spec's areas: or the "
                             "tenant spec") from exc


def _require(spec: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in spec or spec[key] is None:
        raise InputError(f"{where}: required key {key!r} is missing; add it to the spec file")
    return spec[key]


def parse_tenant(data: Mapping[str, Any], where: str = "tenant spec") -> TenantSpec:
    tenant = str(_require(data, "tenant", where))
    if not TENANT_RE.match(tenant):
        raise InputError(f"{where}: tenant name {shown(tenant)} must match {TENANT_RE.pattern}")
    slurm = _require(data, "slurm", where)
    limits = _require(data, "limits", where)
    partitions = tuple(str(p) for p in _require(slurm, "partitions", f"{where} slurm"))
    for p in partitions:
        if not SLURM_NAME_RE.match(p):
            raise InputError(f"{where}: partition {shown(p)} must match {SLURM_NAME_RE.pattern}")
    account = str(_require(slurm, "account", f"{where} slurm"))
    if not SLURM_NAME_RE.match(account):
        raise InputError(f"{where}: Slurm account {shown(account)} must match {SLURM_NAME_RE.pattern}")
    lim = _limits(limits, where)
    gpu_types = _slurm_names(slurm.get("gpu_types") or (), f"{where}: slurm.gpu_types", "[a100]")
    qos_by_purpose = _qos(slurm.get("qos"), where)
    constraint, reservation = slurm.get("constraint"), slurm.get("reservation")
    check_placement(constraint, reservation, where)
    if lim.max_gpus_per_node and not gpu_types:
        raise InputError(f"{where}: limits.max_gpus_per_node is {lim.max_gpus_per_node} but slurm.gpu_types "
                         "lists no GPU type the tenant may use; add one (e.g. gpu_types: [a100]) or set it to 0")
    bucket, cluster = str(_require(data, "bucket", where)), str(_require(data, "cluster", where))
    quality_suite = str(_require(data, "quality_suite", where))
    recipes = tuple(str(r) for r in _require(data, "recipes", where))
    feeds = parse_feeds(data.get("feeds"), where, recipes)
    return TenantSpec(
        tenant=tenant,
        display_name=str(data.get("display_name", tenant)),
        owner=str(data.get("owner", "platform")),
        bucket=bucket,
        cluster=cluster,
        slurm_account=account,
        partitions=partitions,
        qos=qos_by_purpose.get("train"),
        qos_by_purpose=qos_by_purpose,
        limits=lim,
        quality_suite=quality_suite,
        recipes=recipes,
        schedule=data.get("schedule"),
        defaults=dict(data.get("defaults") or {}),
        quality_suites=_feed_suites(_quality_suites(data.get("quality_suites"), where), feeds, where),
        staging_mode=_staging_mode((data.get("staging") or {}).get("mode"), where),
        identity=_identity(_require(data, "identity", where), where),
        allocation=_allocation(_require(data, "allocation", where), where),
        airflow_users=_airflow_users(data.get("airflow_users") or (), where),
        notifications=parse_notifications(data.get("notifications"), where),
        feeds=feeds,
        gpu_types=gpu_types,
        constraint=constraint,
        reservation=reservation,
        own_code=_flag(data.get("own_code", False), f"{where}: own_code"),
        area_templates=_area_templates(data.get("areas"), where, shared=False),
    )


#: what a tenant's job is for: its manual runs, its feeds' trainings, the platform's probes of it
JOB_PURPOSES = ("train", "feed", "probe")


def _qos(raw: Any, where: str) -> dict[str, str]:
    """``slurm.qos``: null (the account's default), one name for every job, or a name per purpose."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = {purpose: raw for purpose in JOB_PURPOSES}
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: slurm.qos must be null, a QOS name, or a mapping of purpose to QOS name, e.g. "
                         "{train: normal, feed: low, probe: debug}")
    unknown = sorted(set(raw) - set(JOB_PURPOSES))
    if unknown:
        raise InputError(f"{where}: slurm.qos: unknown purpose(s) {[shown(k) for k in unknown]}; known: "
                         f"{list(JOB_PURPOSES)}")
    out = {}
    for purpose, name in raw.items():
        if name is None:
            continue
        if not isinstance(name, str) or not SLURM_NAME_RE.match(name):
            raise InputError(f"{where}: slurm.qos.{purpose}: {shown(name)} must match {SLURM_NAME_RE.pattern}")
        out[str(purpose)] = name
    return out


def _flag(raw: Any, where: str) -> bool:
    if not isinstance(raw, bool):
        raise InputError(f"{where} must be true or false, got {shown(raw)}")
    return raw


def _slurm_names(raw: Any, where: str, example: str) -> tuple[str, ...]:
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
        raise InputError(f"{where} must be a list of names, e.g. {example}")
    for name in raw:
        if not isinstance(name, str) or not SLURM_NAME_RE.match(name):
            raise InputError(f"{where}: {shown(name)} must match {SLURM_NAME_RE.pattern}")
    return tuple(raw)


def _gpu_offers(raw: Any, where: str) -> tuple[GpuOffer, ...]:
    """``partitions: {<partition>: {gpu_type: a100, gpus_per_node: 4}}``: the GPUs of each partition
    that has some (a partition without GPUs need not be listed)."""
    where = f"{where}: partitions"
    example = "{gpu: {gpu_type: a100, gpus_per_node: 4}}"
    offers = []
    for partition, entry in _mapping(raw or {}, where, example).items():
        entry = spec_block(entry, f"{where}.{partition}", ("gpu_type", "gpus_per_node"),
                           "{gpu_type: a100, gpus_per_node: 4}")
        try:
            offers.append(GpuOffer(partition=str(partition),
                                   gpu_type=_require(entry, "gpu_type", f"{where}.{partition}"),
                                   gpus_per_node=_require(entry, "gpus_per_node", f"{where}.{partition}")))
        except InputError as exc:
            raise InputError(f"{where}.{partition}: {exc}") from exc

    return tuple(offers)


def _mapping(raw: Any, where: str, example: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise InputError(f"{where} must be a mapping like {example}")
    return raw


def _identity(raw: Any, where: str) -> Identity:
    where = f"{where}: identity"
    raw = _mapping(raw, where, "{unix_user: aifp-demo, ssh_conn_id: ..., s3_conn_id: ...}")
    unix_user = str(_require(raw, "unix_user", where))
    if not layout.UNIX_USER_RE.match(unix_user):
        raise InputError(f"{where}: unix_user {shown(unix_user)} must match {layout.UNIX_USER_RE.pattern}")
    conn_ids = {}
    for key in ("ssh_conn_id", "s3_conn_id"):
        value = str(_require(raw, key, where))
        if not layout.CONN_ID_RE.match(value):
            raise InputError(f"{where}: {key} {shown(value)} must match {layout.CONN_ID_RE.pattern}")
        conn_ids[key] = value
    if conn_ids["s3_conn_id"] == PLATFORM_S3_CONN_ID:
        raise InputError(f"{where}: s3_conn_id must be the tenant's own credential, not the platform's "
                         f"{PLATFORM_S3_CONN_ID!r}")
    return Identity(unix_user=unix_user, **conn_ids)


def _allocation(raw: Any, where: str) -> Allocation:
    where = f"{where}: allocation"
    raw = _mapping(raw, where, "{cpu_hours: 100, gpu_hours: 0, contact: hpc-support@example.eu}")
    hours = {}
    for key in ("cpu_hours", "gpu_hours"):
        value = _require(raw, key, where)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"{where}: {key} must be a whole number of hours >= 0, got {shown(value)}")
        hours[key] = value
    return Allocation(contact=str(_require(raw, "contact", where)), **hours)


def _airflow_users(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, str) or not all(isinstance(u, str) for u in raw):
        raise InputError(f"{where}: airflow_users must be a list of login names, e.g. [demo]")
    for user in raw:
        if not layout.LOGIN_RE.match(user):
            raise InputError(f"{where}: Airflow login {shown(user)} must match {layout.LOGIN_RE.pattern}")
    return tuple(raw)


def _limits(raw: Any, where: str) -> Limits:
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: limits must be a mapping like {{max_nodes: 1, max_time_limit_minutes: 60}}")
    known = set(Limits.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"{where}: limits: unknown key(s) {[shown(k) for k in unknown]}; known: {sorted(known)}")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"{where}: limits.{key} must be a whole number >= 0, got {shown(value)}")
    try:
        return Limits(**raw)
    except TypeError as exc:
        raise InputError(f"{where}: limits: {exc}; add the missing limit") from exc


def _quality_suites(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise InputError(f"{where}: quality_suites must map dataset names to suite names, e.g. {{iris: iris_strict}}")
    return dict(raw)


def _feed_suites(suites: dict[str, str], feeds: tuple[FeedSpec, ...], where: str) -> dict[str, str]:
    """A feed's ``quality_suite`` gates its partitions and its training windows (both dataset names)."""
    out = dict(suites)
    for feed in feeds:
        if feed.quality_suite is None:
            continue
        for name in (feed.name, feed.window_dataset):
            if name is not None and out.setdefault(name, feed.quality_suite) != feed.quality_suite:
                raise InputError(f"{where}: quality_suites names {out[name]!r} for dataset {name!r} but feed "
                                 f"{feed.name!r} names {feed.quality_suite!r}; keep one of them")
    return out


def _staging_mode(raw: Any, where: str) -> str | None:
    if raw is not None and raw not in STAGING_MODES:
        raise InputError(f"{where}: staging.mode {shown(raw)} must be one of {', '.join(STAGING_MODES)}")
    return raw


@dataclass(frozen=True)
class SpecError:
    """One tenant spec file that cannot be used, and why (the message names the file and the key)."""

    path: Path
    message: str


@dataclass(frozen=True)
class TenantSpecs:
    """Every tenant spec of a directory: the good ones, and each broken file with its error.

    A broken file fails its tenant alone: the DAG files build every good tenant's DAGs, onboarding
    onboards every good tenant, and the broken files are reported (dag-processor log, the
    ``platform_tenant_specs`` import error, ``make doctor``, ``make onboard``).
    """

    specs: tuple[TenantSpec, ...]
    errors: tuple[SpecError, ...]


def _read_tenant_file(path: Path) -> TenantSpec:
    try:
        data = parse_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot be read as YAML ({exc}); fix the file") from exc
    if not isinstance(data, Mapping):
        raise InputError(f"{path}: must be a mapping of keys (tenant:, bucket:, ...), got {type(data).__name__}")
    try:
        spec = parse_tenant(data, where=str(path))
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a key of the wrong shape
        raise InputError(f"{path}: a key has the wrong shape ({type(exc).__name__}: {exc}); compare the "
                         "file with include/tenants/demo.yaml") from exc
    return spec


def _load_file(path: Path) -> tuple[TenantSpec, TenantAreas]:
    # once per version of the file: a task process parses its DAG file (every spec), then reads its
    # own tenant's again at each tenant_spec() (aifactory.yamlfiles: a broken file is never cached)
    spec = cached("tenant", [path], lambda: _read_tenant_file(path))
    try:
        cluster = load_cluster(spec.cluster)
    except InputError as exc:
        raise InputError(f"{path}: cluster: {exc}") from exc
    try:
        return spec, check_areas(spec, cluster)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc


def load_tenant_specs(directory: Path | None = None) -> TenantSpecs:
    """Every tenant spec in ``directory``, each file on its own: a broken file (bad YAML, a missing
    or invalid key, a tenant name another file also claims) is reported, the others are loaded.

    :param directory: default :func:`aifactory.layout.tenants_dir` (``$AIFP_TENANTS_DIR`` or
        ``include/tenants``).
    """
    directory = directory or layout.tenants_dir()
    loaded: list[tuple[Path, TenantSpec, TenantAreas]] = []
    errors: list[SpecError] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            loaded.append((path, *_load_file(path)))
        except InputError as exc:
            errors.append(SpecError(path, str(exc)))
    claims: dict[str, list[Path]] = {}
    for path, spec, _ in loaded:
        claims.setdefault(spec.tenant, []).append(path)
    clashes = overlapping_areas((spec.tenant, spec.cluster, areas) for _, spec, areas in loaded)
    specs = []
    for path, spec, _ in loaded:
        if len(claims[spec.tenant]) > 1:
            others = ", ".join(str(p) for p in claims[spec.tenant] if p != path)
            errors.append(SpecError(path, f"{path}: tenant {spec.tenant!r} is also defined in {others}; "
                                          "each tenant needs exactly one file"))
        elif spec.tenant in clashes:
            errors.append(SpecError(path, f"{path}: tenant {spec.tenant!r}: {clashes[spec.tenant]}"))
        else:
            specs.append(spec)
    return TenantSpecs(specs=tuple(sorted(specs, key=lambda s: s.tenant)),
                       errors=tuple(sorted(errors, key=lambda e: e.path)))


def good_tenants(directory: Path | None = None) -> tuple[TenantSpec, ...]:
    """The specs the DAG files build DAGs from: the good ones. Each broken file is logged as an error
    (the dag-processor's log of the DAG file) and is the import error of
    ``dags/platform_tenant_specs.py``, so one broken YAML removes its own tenant's DAGs only."""
    loaded = load_tenant_specs(directory)
    for broken in loaded.errors:
        log.error("tenant spec skipped, its DAGs are not built: %s", broken.message)
    return loaded.specs


def load_tenants(directory: Path | None = None) -> list[TenantSpec]:
    """Every tenant spec in ``directory``, sorted by name; any broken file raises with its path
    (callers that must survive one broken tenant use :func:`load_tenant_specs`)."""
    loaded = load_tenant_specs(directory)
    if loaded.errors:
        raise InputError("; ".join(e.message for e in loaded.errors))
    return list(loaded.specs)


def load_tenant(tenant: str, directory: Path | None = None) -> TenantSpec:
    """One tenant's spec; another tenant's broken file does not stop it."""
    loaded = load_tenant_specs(directory)
    for spec in loaded.specs:
        if spec.tenant == tenant:
            return spec
    broken = [e.message for e in loaded.errors if e.path.stem == tenant]
    if broken:
        raise InputError(broken[0])
    raise InputError(f"unknown tenant {shown(tenant)}: no valid spec in {directory or layout.tenants_dir()}"
                     + (f" ({len(loaded.errors)} broken spec file(s): "
                        f"{', '.join(e.path.name for e in loaded.errors)})" if loaded.errors else ""))


def parse_cluster(data: Mapping[str, Any], where: str = "cluster spec") -> ClusterSpec:
    name = str(_require(data, "name", where))
    if not TENANT_RE.match(name):
        raise InputError(f"{where}: cluster name {shown(name)} must match {TENANT_RE.pattern}")
    staging = data.get("staging") or {}
    if not isinstance(staging, Mapping):
        raise InputError(f"{where}: staging must be a mapping like {{mode: push, parallel: 4}}")
    return ClusterSpec(
        name=name,
        ssh_conn_id=str(_require(data, "ssh_conn_id", where)),
        hpc_root=_hpc_root(_require(data, "hpc_root", where), where),
        python=str(_require(data, "python", where)),
        poll_interval_s=float(data.get("poll_interval_s", 60)),
        poll_interval_floor_s=float(data.get("poll_interval_floor_s", 30)),
        staging_mode=str(_staging_mode(staging.get("mode"), where) or StagingOptions.mode),
        staging_parallel=int(staging.get("parallel", StagingOptions.parallel)),
        staging_url_ttl_s=int(staging.get("url_ttl_s", StagingOptions.url_ttl_s)),
        gpus=_gpu_offers(data.get("partitions"), where),
        environment=parse_environment(data.get("environment"), where),
        containers=parse_containers(data.get("containers"), where),
        areas=AreaTemplates(**_area_templates(data.get("areas"), where, shared=True)),
        package_index=_package_index(data.get("package_index"), where),
        env_retention_days=check_retention_days(data.get("env_retention_days", ENV_RETENTION_DAYS),
                                                f"{where}: env_retention_days"),
    )


#: ``package_index:``: an https, http or file URL of a PEP 503 index; quoted where it is used, and
#: still only these characters (it is written into the build command the tenant's login runs)
PACKAGE_INDEX_RE = re.compile(r"^(?:https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?|file://)/[A-Za-z0-9._~/%+-]{0,500}$")


def _package_index(raw: Any, where: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not PACKAGE_INDEX_RE.fullmatch(raw):
        raise InputError(f"{where}: package_index {shown(raw)} must be an https://, http:// or file:/// URL of a "
                         "package index (the site's PyPI mirror), e.g. https://pypi.example.eu/simple")
    return raw


def _hpc_root(raw: Any, where: str) -> str:
    root = str(raw).rstrip("/")
    check_remote_path(root, f"{where}: hpc_root")
    if not layout.normal_abs_path(root):
        raise InputError(f"{where}: hpc_root {shown(raw)} must be an absolute path in normal form, like /srv/aifactory")
    return root


def _area_templates(raw: Any, where: str, *, shared: bool) -> dict[str, str]:
    """``areas: {project: "/project/{account}", scratch: "/scratch/{user}"}``: each a path template of
    :data:`layout.AREA_FIELDS`, only the keys given.

    :param shared: a cluster's templates, which every tenant shares: each must name ``{tenant}``,
        ``{account}`` or ``{user}``. A tenant's own may be a fixed path.
    """
    where = f"{where}: areas"
    raw = spec_block(raw, where, ("project", "scratch"),
                     '{project: "{hpc_root}/project/{account}", scratch: "/scratch/{user}"}')
    templates = {}
    for key, template in raw.items():
        if template is None:
            continue
        if not isinstance(template, str):
            raise InputError(f"{where}: {key} must be a path template (a string), got {type(template).__name__}")
        fields = layout.area_template_fields(template)
        if shared and not set(fields) - {"hpc_root"}:
            raise InputError(f"{where}: {key} {shown(template)} names none of {{tenant}}, {{account}}, {{user}}: every "
                             "tenant would share one area; add one of them")
        try:  # with sample values: the template's own text must make a normal absolute path
            sample = layout.area_path(template, hpc_root="/root", tenant="tenant", account="account", user="user")
            check_remote_path(sample, f"{where}: {key}")
        except ValueError as exc:
            raise InputError(f"{where}: {key}: {exc}") from exc
        templates[key] = template
    return templates


def check_areas(spec: TenantSpec, cluster: ClusterSpec) -> TenantAreas:
    """The tenant's areas on ``cluster``, refused when the two nest (they are the same directory or
    apart) or when one holds, or lies inside, what the platform installs there."""
    areas = spec.areas(cluster)
    if areas.project != areas.scratch and layout.paths_overlap(areas.project, areas.scratch):
        raise InputError(f"cluster {cluster.name!r}: tenant {spec.tenant!r}'s project area {areas.project} and scratch "
                         f"area {areas.scratch} nest; make them the same directory or two apart in the areas: templates")
    for root in areas.roots:
        for path in cluster.platform_paths:
            if layout.paths_overlap(root, path):
                raise InputError(f"cluster {cluster.name!r}: tenant {spec.tenant!r}'s area {root} and the platform's "
                                 f"{path} overlap; the tenant would own the platform's files. Change the areas: "
                                 "templates or the tenant's name")
    return areas


def overlapping_areas(placed: Iterable[tuple[str, str, TenantAreas]]) -> dict[str, str]:
    """``{tenant: why}`` for every tenant whose area is, holds or lies inside another tenant's on the
    same cluster (both are named: neither may be used until the specs differ).

    :param placed: ``(tenant, cluster name, its areas there)`` of each tenant (:func:`check_areas`).

    In sorted order a directory comes before everything inside it, so one pass with the stack of the
    enclosing areas finds every clash (n log n: the DAG files load every spec at each parse).
    """
    entries = sorted((cluster, root + "/", tenant) for tenant, cluster, areas in placed for root in areas.roots)
    clashes: dict[str, str] = {}

    def clash(a: tuple[str, str, str], b: tuple[str, str, str]) -> None:
        for (cluster, root, tenant), (_, other_root, other) in ((a, b), (b, a)):
            clashes.setdefault(tenant, f"its area {root.rstrip('/')} on cluster {cluster!r} overlaps tenant "
                                       f"{other!r}'s {other_root.rstrip('/')}; give each tenant areas of its own "
                                       "(the cluster's areas: templates, the tenants' accounts or users)")

    enclosing: list[tuple[str, str, str]] = []
    for entry in entries:
        while enclosing and not (enclosing[-1][0] == entry[0] and entry[1].startswith(enclosing[-1][1])):
            enclosing.pop()
        if enclosing and enclosing[-1][2] != entry[2]:
            clash(enclosing[-1], entry)
        enclosing.append(entry)
    return clashes


def load_cluster(name: str, directory: Path = CLUSTERS_DIR) -> ClusterSpec:
    if not isinstance(name, str) or not TENANT_RE.match(name):
        raise InputError(f"cluster name {shown(name, max_chars=40)} must match {TENANT_RE.pattern}")
    path = directory / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"unknown cluster {shown(name)}: no {path}")
    # once per version of the file: every tenant of the cluster reads it, at every parse
    return cached("cluster", [path], lambda: _read_cluster(path, name))


def _read_cluster(path: Path, name: str) -> ClusterSpec:
    cluster = parse_cluster(parse_yaml(path.read_text()) or {}, where=str(path))
    if cluster.name != name:
        raise InputError(f"{path}: names cluster {shown(cluster.name)}; the file name must match")
    return cluster
