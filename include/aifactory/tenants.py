"""Tenant and cluster specs, and the validation of a run's parameters against them.

A tenant spec (``include/tenants/<tenant>.yaml``) is owned by platform engineers: it fixes the
tenant's bucket, Slurm account, allowed partitions and recipes, and the upper bounds of every
resource a startup may ask for. A startup's trigger form can only choose *within* those bounds:
it never picks a host, a connection, an account or another tenant's paths.

``validate_run_params`` is the one place that turns the untyped ``params`` of a DAG run into a
typed :class:`RunParams`. The DAG's Params enforce the same rules in the UI form; the operators call
this again before any side effect, because a run can also be triggered through the API or the CLI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from aifactory.errors import InputError
from aifactory.models.recipes import Recipe, load_recipes
from aifactory.data.s3 import check_tenant_uri
from aifactory.hpc.slurm import Resources, TenantSlurmPolicy
from aifactory.layout import CLUSTERS_DIR, INCLUDE_DIR, TENANTS_DIR


NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
PARTITION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Limits:
    max_nodes: int
    max_gpus_per_node: int
    max_cpus_per_task: int
    max_mem_gb: int
    max_time_limit_minutes: int


@dataclass(frozen=True)
class ClusterSpec:
    """How the factory reaches one HPC system (``include/clusters/<name>.yaml``)."""

    name: str
    ssh_conn_id: str
    hpc_root: str
    python: str
    poll_interval_s: float
    poll_interval_floor_s: float
    #: ``staging: {mode: push|pull, parallel: N, url_ttl_s: S}`` (see aifactory.hpc.staging)
    staging_mode: str = "push"
    staging_parallel: int = 4
    staging_url_ttl_s: int = 900

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

    def suite_for(self, dataset_name: str) -> str:
        """The quality suite of one dataset: its own entry in ``quality_suites``, else ``quality_suite``."""
        return self.quality_suites.get(dataset_name, self.quality_suite)

    # --- the tenant's areas -------------------------------------------------------------------
    @property
    def raw_prefix(self) -> str:
        return f"{self.tenant}/raw/"

    @property
    def raw_uri_prefix(self) -> str:
        return f"s3://{self.bucket}/{self.raw_prefix}"

    def dataset_prefix(self, name: str, version: str) -> str:
        return f"{self.tenant}/datasets/{name}/{version}/"

    def model_prefix(self, model: str, version: str) -> str:
        return f"{self.tenant}/models/{model}/{version}/"

    def allows_recipe(self, recipe: str) -> bool:
        """``recipes: ["*"]`` allows every recipe folder; otherwise an explicit allowlist."""
        return "*" in self.recipes or recipe in self.recipes

    def slurm_policy(self) -> TenantSlurmPolicy:
        """What this tenant may ask Slurm for (account, partitions, QoS, bounds)."""
        lim = self.limits
        return TenantSlurmPolicy(
            account=self.slurm_account,
            partitions=self.partitions,
            qos=self.qos,
            max_nodes=lim.max_nodes,
            max_cpus_per_task=lim.max_cpus_per_task,
            max_mem_gb=lim.max_mem_gb,
            max_gpus_per_node=lim.max_gpus_per_node,
            max_time_limit_minutes=lim.max_time_limit_minutes,
        )

    def hpc_dir(self, cluster: ClusterSpec) -> str:
        return f"{cluster.hpc_root.rstrip('/')}/{self.tenant}"


def _require(spec: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in spec or spec[key] is None:
        raise InputError(f"{where}: required key {key!r} is missing; add it to the spec file")
    return spec[key]


def parse_tenant(data: Mapping[str, Any], where: str = "tenant spec") -> TenantSpec:
    tenant = str(_require(data, "tenant", where))
    if not NAME_RE.match(tenant):
        raise InputError(f"{where}: tenant name {tenant!r} must match {NAME_RE.pattern}")
    slurm = _require(data, "slurm", where)
    limits = _require(data, "limits", where)
    partitions = tuple(str(p) for p in _require(slurm, "partitions", f"{where} slurm"))
    for p in partitions:
        if not PARTITION_RE.match(p):
            raise InputError(f"{where}: partition {p!r} must match {PARTITION_RE.pattern}")
    account = str(_require(slurm, "account", f"{where} slurm"))
    if not PARTITION_RE.match(account):
        raise InputError(f"{where}: Slurm account {account!r} must match {PARTITION_RE.pattern}")
    try:
        lim = Limits(**{k: int(v) for k, v in limits.items()})
    except TypeError as exc:
        raise InputError(f"{where}: limits: {exc}") from exc
    return TenantSpec(
        tenant=tenant,
        display_name=str(data.get("display_name", tenant)),
        owner=str(data.get("owner", "platform")),
        bucket=str(_require(data, "bucket", where)),
        cluster=str(_require(data, "cluster", where)),
        slurm_account=account,
        partitions=partitions,
        qos=slurm.get("qos"),
        limits=lim,
        quality_suite=str(_require(data, "quality_suite", where)),
        recipes=tuple(str(r) for r in _require(data, "recipes", where)),
        schedule=data.get("schedule"),
        defaults=dict(data.get("defaults") or {}),
        quality_suites=_quality_suites(data.get("quality_suites"), where),
        staging_mode=_staging_mode((data.get("staging") or {}).get("mode"), where),
    )


def _quality_suites(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise InputError(f"{where}: quality_suites must map dataset names to suite names, e.g. {{iris: iris_strict}}")
    return dict(raw)


def _staging_mode(raw: Any, where: str) -> str | None:
    if raw is not None and raw not in ("push", "pull"):
        raise InputError(f"{where}: staging.mode {raw!r} must be 'push' or 'pull'")
    return raw


def load_tenants(directory: Path = TENANTS_DIR) -> list[TenantSpec]:
    """Every tenant spec in ``directory``, sorted by name; a broken file raises with its path."""
    specs = []
    for path in sorted(directory.glob("*.yaml")):
        specs.append(parse_tenant(yaml.safe_load(path.read_text()) or {}, where=str(path)))
    names = [s.tenant for s in specs]
    if len(names) != len(set(names)):
        raise InputError(f"duplicate tenant names in {directory}: {names}")
    return specs


def load_tenant(tenant: str, directory: Path = TENANTS_DIR) -> TenantSpec:
    for spec in load_tenants(directory):
        if spec.tenant == tenant:
            return spec
    raise InputError(f"unknown tenant {tenant!r}: no spec in {directory}")


def parse_cluster(data: Mapping[str, Any], where: str = "cluster spec") -> ClusterSpec:
    name = str(_require(data, "name", where))
    if not NAME_RE.match(name):
        raise InputError(f"{where}: cluster name {name!r} must match {NAME_RE.pattern}")
    staging = data.get("staging") or {}
    if not isinstance(staging, Mapping):
        raise InputError(f"{where}: staging must be a mapping like {{mode: push, parallel: 4}}")
    return ClusterSpec(
        name=name,
        ssh_conn_id=str(_require(data, "ssh_conn_id", where)),
        hpc_root=str(_require(data, "hpc_root", where)).rstrip("/"),
        python=str(_require(data, "python", where)),
        poll_interval_s=float(data.get("poll_interval_s", 60)),
        poll_interval_floor_s=float(data.get("poll_interval_floor_s", 30)),
        staging_mode=str(_staging_mode(staging.get("mode"), where) or "push"),
        staging_parallel=int(staging.get("parallel", 4)),
        staging_url_ttl_s=int(staging.get("url_ttl_s", 900)),
    )


def load_cluster(name: str, directory: Path = CLUSTERS_DIR) -> ClusterSpec:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(f"cluster name {name!r:.40} must match {NAME_RE.pattern}")
    path = directory / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"unknown cluster {name!r}: no {path}")
    cluster = parse_cluster(yaml.safe_load(path.read_text()) or {}, where=str(path))
    if cluster.name != name:
        raise InputError(f"{path}: names cluster {cluster.name!r}; the file name must match")
    return cluster


# --------------------------------------------------------------------------------------------------
# Run parameters
# --------------------------------------------------------------------------------------------------
RESOURCE_FIELDS = ("partition", "nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "time_limit_minutes")


@dataclass(frozen=True)
class RunParams:
    """A run's parameters after validation: typed, bounded, inside the tenant's areas.

    ``hyperparameters`` have the recipe's defaults applied; ``resources`` carry the tenant's
    account and QoS (never chosen by the user).
    """

    dataset_uri: str
    recipe: str
    hyperparameters: dict[str, Any]
    resources: Resources

    def resource_request(self) -> dict[str, Any]:
        """The user-choosable part of the resources, as the train task takes it."""
        res = self.resources.as_dict()
        return {k: res[k] for k in RESOURCE_FIELDS}


def check_dataset_uri(uri: Any, tenant: TenantSpec) -> str:
    """The dataset URI must name an object or prefix inside the tenant's raw area."""
    check_tenant_uri(uri, bucket=tenant.bucket, tenant=tenant.tenant)
    return uri


def validate_run_params(
    params: Mapping[str, Any], tenant: TenantSpec, recipes: Mapping[str, Recipe] | None = None
) -> RunParams:
    """Validate a run's params against the tenant spec and the recipe; raise InputError naming the field.

    :param recipes: the recipe folders that exist (default: those under ``include/recipes``).
    """
    if recipes is None:
        recipes = load_recipes()
    recipe_name = params.get("recipe")
    if not isinstance(recipe_name, str) or recipe_name not in recipes:
        raise InputError(f"recipe: {recipe_name!r} is not a known recipe; choose one of {sorted(recipes)}")
    if not tenant.allows_recipe(recipe_name):
        raise InputError(
            f"recipe: {recipe_name!r} is not available to tenant {tenant.tenant}; "
            f"choose one of {list(tenant.recipes)}"
        )
    recipe = recipes[recipe_name]
    hp = params.get("hyperparameters") or {}
    if not isinstance(hp, dict):
        raise InputError("hyperparameters: must be a JSON object")
    request = {k: params[k] for k in RESOURCE_FIELDS if k in params}
    return RunParams(
        dataset_uri=check_dataset_uri(params.get("dataset_uri"), tenant),
        recipe=recipe_name,
        hyperparameters=recipe.validate_hyperparameters(hp),
        resources=Resources.from_request(request, policy=tenant.slurm_policy(), defaults=recipe.resources),
    )
