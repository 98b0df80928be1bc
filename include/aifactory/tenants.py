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
from typing import Any, Collection, Mapping

import yaml

from aifactory.errors import InputError
from aifactory.s3 import check_tenant_uri

INCLUDE_DIR = Path(__file__).resolve().parent.parent
TENANTS_DIR = INCLUDE_DIR / "tenants"
CLUSTERS_DIR = INCLUDE_DIR / "clusters"

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
    )


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


def load_cluster(name: str, directory: Path = CLUSTERS_DIR) -> ClusterSpec:
    path = directory / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"unknown cluster {name!r}: no {path}")
    data = yaml.safe_load(path.read_text()) or {}
    where = str(path)
    return ClusterSpec(
        name=str(_require(data, "name", where)),
        ssh_conn_id=str(_require(data, "ssh_conn_id", where)),
        hpc_root=str(_require(data, "hpc_root", where)),
        python=str(_require(data, "python", where)),
        poll_interval_s=float(data.get("poll_interval_s", 60)),
        poll_interval_floor_s=float(data.get("poll_interval_floor_s", 30)),
    )


# --------------------------------------------------------------------------------------------------
# Run parameters
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunParams:
    """A run's parameters after validation: typed, bounded, inside the tenant's areas."""

    dataset_uri: str
    recipe: str
    hyperparameters: dict[str, Any]
    partition: str
    nodes: int
    gpus_per_node: int
    cpus_per_task: int
    mem_gb: int
    time_limit_minutes: int

    def resources(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "cpus_per_task": self.cpus_per_task,
            "mem_gb": self.mem_gb,
            "time_limit_minutes": self.time_limit_minutes,
        }


def check_dataset_uri(uri: Any, tenant: TenantSpec) -> str:
    """The dataset URI must name an object or prefix inside the tenant's raw area."""
    check_tenant_uri(uri, bucket=tenant.bucket, tenant=tenant.tenant)
    return uri


def _int_in(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputError(f"{name}: must be an integer between {lo} and {hi}, got {value!r}")
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]{1,7}", value):
            raise InputError(f"{name}: must be an integer between {lo} and {hi}, got {value!r}")
        value = int(value)
    if not lo <= value <= hi:
        raise InputError(f"{name}: {value} is outside the allowed range {lo}..{hi} for this tenant")
    return value


def validate_run_params(
    params: Mapping[str, Any], tenant: TenantSpec, recipes: Collection[str] | None = None
) -> RunParams:
    """Validate a run's params against the tenant spec; raise InputError naming the field.

    :param recipes: the recipe folders that exist (default: those under ``include/recipes``).
    """
    if recipes is None:
        from aifactory.recipes import load_recipes

        recipes = load_recipes().keys()
    recipe = params.get("recipe")
    if not isinstance(recipe, str) or recipe not in recipes:
        raise InputError(f"recipe: {recipe!r} is not a known recipe; choose one of {sorted(recipes)}")
    if not tenant.allows_recipe(recipe):
        raise InputError(
            f"recipe: {recipe!r} is not available to tenant {tenant.tenant}; choose one of {list(tenant.recipes)}"
        )
    partition = params.get("partition")
    if not isinstance(partition, str) or partition not in tenant.partitions:
        raise InputError(f"partition: {partition!r} is not allowed; choose one of {list(tenant.partitions)}")
    hp = params.get("hyperparameters") or {}
    if not isinstance(hp, dict):
        raise InputError("hyperparameters: must be a JSON object")
    lim = tenant.limits
    return RunParams(
        dataset_uri=check_dataset_uri(params.get("dataset_uri"), tenant),
        recipe=recipe,
        hyperparameters=dict(hp),
        partition=partition,
        nodes=_int_in("nodes", params.get("nodes", 1), 1, lim.max_nodes),
        gpus_per_node=_int_in("gpus_per_node", params.get("gpus_per_node", 0), 0, lim.max_gpus_per_node),
        cpus_per_task=_int_in("cpus_per_task", params.get("cpus_per_task", 1), 1, lim.max_cpus_per_task),
        mem_gb=_int_in("mem_gb", params.get("mem_gb", 1), 1, lim.max_mem_gb),
        time_limit_minutes=_int_in(
            "time_limit_minutes", params.get("time_limit_minutes", 30), 1, lim.max_time_limit_minutes
        ),
    )
