"""Tenants: the platform-owned specs (:mod:`.spec`) and a run's parameters validated against them
(:mod:`.params`). Everything is re-exported here: ``from aifactory.tenants import X`` keeps working."""

from __future__ import annotations

from aifactory.tenants.params import (
    FORM_FIELDS,
    RESOURCE_FIELDS,
    RunParams,
    check_dataset_uri,
    check_hold,
    check_known_fields,
    validate_run_params,
)
from aifactory.tenants.spec import (
    ClusterSpec,
    Limits,
    SpecError,
    TenantSpec,
    TenantSpecs,
    good_tenants,
    load_cluster,
    load_tenant,
    load_tenant_specs,
    load_tenants,
    parse_cluster,
    parse_tenant,
)

__all__ = [
    "FORM_FIELDS",
    "RESOURCE_FIELDS",
    "ClusterSpec",
    "Limits",
    "RunParams",
    "SpecError",
    "TenantSpec",
    "TenantSpecs",
    "check_dataset_uri",
    "check_hold",
    "check_known_fields",
    "good_tenants",
    "load_cluster",
    "load_tenant",
    "load_tenant_specs",
    "load_tenants",
    "parse_cluster",
    "parse_tenant",
    "validate_run_params",
]
