"""The Airflow permission rules (operators/access.py), checked against FAB's own authorization
code: ``FabAuthManager.is_authorized_dag`` with a user holding exactly the role's permissions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager
from airflow.providers.fab.www.security import permissions as p

from aifactory import layout
from aifactory.tenants import load_tenant
from aifactory.tenants.spec import TenantSpec
from operators import access

DEMO, ACME = layout.pipeline_dag_id("demo"), layout.pipeline_dag_id("acme")
SPEC_DEMO, SPEC_ACME = load_tenant("demo"), load_tenant("acme")
#: the demo tenant's feed DAGs (include/tenants/demo.yaml declares the feed iris_daily)
DEMO_FEED, DEMO_TRAIN = layout.feed_dag_id("demo", "iris_daily"), layout.feed_training_dag_id("demo", "iris_daily")
PLATFORM_DAGS = [layout.probe_dag_id("demo"), layout.sweep_dag_id("local")]


def allowed(perms, method, dag_id=None, entity=None) -> bool:
    user = SimpleNamespace(perms=perms)
    details = DagDetails(id=dag_id) if dag_id else None
    return FabAuthManager().is_authorized_dag(method=method, user=user, access_entity=entity, details=details)


# what the REST API asks for each action of the cross-tenant matrix (core_api/routes/public/*.py)
ACTIONS = {
    "view": ("GET", None),
    "list runs": ("GET", DagAccessEntity.RUN),
    "trigger": ("POST", DagAccessEntity.RUN),
    "task instances": ("GET", DagAccessEntity.TASK_INSTANCE),
    "logs": ("GET", DagAccessEntity.TASK_LOGS),
    "xcom": ("GET", DagAccessEntity.XCOM),
    "clear": ("PUT", DagAccessEntity.TASK_INSTANCE),
    "pause": ("PUT", None),
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_a_tenant_role_may_do_everything_on_its_own_dag_and_nothing_on_another(action):
    method, entity = ACTIONS[action]
    perms = access.tenant_permissions(SPEC_DEMO)
    for own in (DEMO, DEMO_FEED, DEMO_TRAIN):
        assert allowed(perms, method, own, entity), f"{action} on {own}"
    for other in [ACME, *PLATFORM_DAGS, layout.feed_dag_id("acme", "iris_daily")]:
        assert not allowed(perms, method, other, entity), f"{action} on {other}"


def test_a_tenant_may_not_delete_runs_or_write_xcom():
    perms = access.tenant_permissions(SPEC_DEMO)
    assert not allowed(perms, "DELETE", DEMO, DagAccessEntity.RUN)
    assert not allowed(perms, "PUT", DEMO, DagAccessEntity.XCOM)
    assert not allowed(perms, "DELETE", DEMO)


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_the_operator_role_may_act_on_every_factory_dag_but_no_platform_dag(action):
    method, entity = ACTIONS[action]
    perms = access.operator_permissions([SPEC_DEMO, SPEC_ACME])
    assert all(allowed(perms, method, d, entity) for d in (DEMO, ACME, DEMO_FEED, DEMO_TRAIN))
    assert not any(allowed(perms, method, d, entity) for d in PLATFORM_DAGS)


def test_no_tenant_or_operator_role_touches_secrets_people_or_all_dags_at_once():
    for perms in (access.tenant_permissions(SPEC_DEMO), access.operator_permissions([SPEC_DEMO, SPEC_ACME])):
        assert not {r for _, r in perms} & access.FORBIDDEN_RESOURCES
        assert {a for a, r in perms if r == p.RESOURCE_DAG} == {p.ACTION_CAN_ACCESS_MENU}  # no global DAG rights
        assert (p.ACTION_CAN_CREATE, p.RESOURCE_DAG_RUN) not in perms  # runs only on the role's own DAGs


def test_the_operator_role_may_backfill():
    perms = access.operator_permissions([SPEC_DEMO])
    assert (p.ACTION_CAN_CREATE, p.RESOURCE_BACKFILL) in perms
    assert (p.ACTION_CAN_CREATE, p.RESOURCE_BACKFILL) not in access.tenant_permissions(SPEC_DEMO)


def test_role_diff_grants_what_is_missing_and_revokes_what_is_extra():
    want = access.tenant_permissions(SPEC_DEMO)
    extra = (p.ACTION_CAN_READ, p.RESOURCE_CONNECTION)
    missing = (p.ACTION_CAN_READ, p.RESOURCE_XCOM)
    grant, revoke = access.role_diff(set(want - {missing}) | {extra}, want)
    assert grant == [missing] and revoke == [extra]
    assert access.role_diff(set(want), want) == ([], [])


def _spec(tenant: str, users: tuple[str, ...]) -> TenantSpec:
    return SimpleNamespace(tenant=tenant, airflow_users=users)  # type: ignore[return-value]


def test_each_login_has_one_role_and_a_login_named_twice_is_refused():
    roles = access.logins_by_role([_spec("demo", ("demo",)), _spec("acme", ("acme", "acme2"))])
    assert roles == {"platform": layout.PLATFORM_ROLE, "operator": layout.OPERATOR_ROLE,
                     "demo": "tenant_demo", "acme": "tenant_acme", "acme2": "tenant_acme"}
    with pytest.raises(ValueError, match="'demo'.*'acme'"):
        access.logins_by_role([_spec("demo", ("demo",)), _spec("acme", ("demo",))])
    with pytest.raises(ValueError, match="platform"):
        access.logins_by_role([_spec("demo", ("platform",))])


def test_passwords_are_generated_once_and_kept_in_a_private_file(tmp_path):
    from aifactory.platform.onboard import Context

    ctx = Context(secrets_dir=tmp_path / "secrets")
    first = access.ensure_passwords(ctx, ["demo", "platform"])
    path = tmp_path / "secrets" / layout.AIRFLOW_USERS_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert access.ensure_passwords(ctx, ["demo", "platform"]) == first
    assert len(first["demo"]) >= 20 and first["demo"] != first["platform"]
    dry = access.ensure_passwords(Context(secrets_dir=tmp_path / "other", dry_run=True), ["demo"])
    assert "demo" in dry and not (tmp_path / "other").exists()
