"""
### Platform: tenant spec check (declares no DAG)

Every tenant's DAGs are built from its own spec file; a broken file (bad YAML, a missing or
invalid key, an unknown cluster, a tenant name claimed twice) fails that tenant alone: the DAG
files build every good tenant and skip the broken one. So that the broken file is not only a line
in the dag-processor's log, this file, which declares no Airflow DAG, fails to import naming each
broken spec and its key: Airflow shows it under *Import errors*, and no tenant's DAG goes stale
with it (an import error of a file marks that file's own DAGs stale). `make doctor` reports the
same errors.
"""

from __future__ import annotations

from aifactory.errors import InputError
from aifactory.tenants import load_tenant_specs

_broken = load_tenant_specs().errors
if _broken:
    raise InputError(
        f"{len(_broken)} tenant spec file(s) are broken; their tenants' DAGs are not built, every other "
        "tenant's are:\n" + "\n".join(f"- {e.message}" for e in _broken)
    )
