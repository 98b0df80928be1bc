"""Who may do what in Airflow: the tenant, operator and platform roles, applied to FAB by onboarding.

The permission sets below are the one place of these rules (role names: ``aifactory.layout``).
They follow FAB's ``FabAuthManager.is_authorized_dag``: a request on a DAG's sub-entity (runs, task
instances, logs, XCom) needs the global resource of that entity (``DAG Runs``, ``Task
Instances``, ``Task Logs``, ``XComs``) AND the DAG itself (``DAG:<dag_id>``: read for GET, edit
for anything else). So the global entity permissions below open nothing by themselves: every
request is also checked against the DAG, and a tenant role holds ``DAG:<id>`` of its own DAGs
only (``TenantSpec.dag_ids``: its pipeline, and its feeds' feed and training DAGs). Creating a run accepts either the global ``DAG Runs`` can_create or the DAG-level
``DAG Run:<dag_id>`` can_create; the roles get the DAG-level one, so a run can only be created on
their own DAGs. Listing DAGs returns only the DAGs a role may read (``get_authorized_dag_ids``).

Why onboarding applies the DAG-level permissions instead of the DAG's ``access_control``
argument: the dag-processor syncs ``access_control`` when it writes a DAG, raises (the DAG fails
to import) when the role does not exist yet, and revokes every DAG-level permission it does not
list. Onboarding creates the role and its DAG permissions in one idempotent step, before the DAG
is even parsed, and no DAG file carries access rules.

The platform role is FAB's Admin (every DAG, connections, users; the platform DAGs, probe and
sweep, are visible to it and to no tenant). The operator role may read, clear, re-run and
backfill every tenant's pipeline DAG, and holds no permission on connections, variables, the
configuration, users or roles.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from airflow.providers.fab.www.security import permissions as p

from aifactory import layout
from aifactory.errors import FactoryError
from aifactory.platform.onboard import Change, Context
from aifactory.platform.secrets import write_private
from aifactory.tenants.spec import ClusterSpec, TenantSpec

Perm = tuple[str, str]  # (FAB action, FAB resource)
STEP = "airflow"
PLATFORM = "platform"

#: what the UI needs to show a DAG page to its reader (menus, own profile and password)
_UI: frozenset[Perm] = frozenset({
    (p.ACTION_CAN_READ, p.RESOURCE_WEBSITE),  # FAB adds it to every custom role at startup anyway
    (p.ACTION_CAN_READ, p.RESOURCE_MY_PROFILE), (p.ACTION_CAN_EDIT, p.RESOURCE_MY_PROFILE),
    (p.ACTION_CAN_READ, p.RESOURCE_MY_PASSWORD), (p.ACTION_CAN_EDIT, p.RESOURCE_MY_PASSWORD),
    (p.ACTION_CAN_ACCESS_MENU, p.RESOURCE_BROWSE_MENU), (p.ACTION_CAN_ACCESS_MENU, p.RESOURCE_DAG),
    (p.ACTION_CAN_ACCESS_MENU, p.RESOURCE_DAG_RUN), (p.ACTION_CAN_ACCESS_MENU, p.RESOURCE_TASK_INSTANCE),
    (p.ACTION_CAN_ACCESS_MENU, p.RESOURCE_DOCS), (p.ACTION_CAN_ACCESS_MENU, p.RESOURCE_DOCS_MENU),
})

#: sub-entities of a DAG; each is also checked against ``DAG:<dag_id>`` (see the module doc)
_DAG_ENTITIES: frozenset[Perm] = frozenset({
    (p.ACTION_CAN_READ, p.RESOURCE_DAG_RUN), (p.ACTION_CAN_EDIT, p.RESOURCE_DAG_RUN),
    (p.ACTION_CAN_READ, p.RESOURCE_TASK_INSTANCE), (p.ACTION_CAN_EDIT, p.RESOURCE_TASK_INSTANCE),
    (p.ACTION_CAN_READ, p.RESOURCE_TASK_LOG), (p.ACTION_CAN_READ, p.RESOURCE_XCOM),
    (p.ACTION_CAN_READ, p.RESOURCE_HITL_DETAIL),  # the UI's DAG list asks for it
    (p.ACTION_CAN_READ, p.RESOURCE_DAG_CODE), (p.ACTION_CAN_READ, p.RESOURCE_DAG_VERSION),
    (p.ACTION_CAN_READ, p.RESOURCE_DAG_WARNING), (p.ACTION_CAN_READ, p.RESOURCE_DAG_DEPENDENCIES),
    # filtered by the DAGs the role may read (a tenant sees why its own DAG broke, no other's)
    (p.ACTION_CAN_READ, p.RESOURCE_IMPORT_ERROR),
})

#: what the operator role adds to the entity permissions: backfills, pools and jobs, read-only views
_OPERATOR_EXTRA: frozenset[Perm] = frozenset({
    (p.ACTION_CAN_READ, p.RESOURCE_BACKFILL), (p.ACTION_CAN_CREATE, p.RESOURCE_BACKFILL),
    (p.ACTION_CAN_EDIT, p.RESOURCE_BACKFILL),
    (p.ACTION_CAN_READ, p.RESOURCE_POOL), (p.ACTION_CAN_READ, p.RESOURCE_JOB),
    (p.ACTION_CAN_READ, p.RESOURCE_CLUSTER_ACTIVITY), (p.ACTION_CAN_ACCESS_MENU, p.RESOURCE_JOB),
    (p.ACTION_CAN_ACCESS_MENU, p.RESOURCE_CLUSTER_ACTIVITY),
})

#: Assets are left out: their list is not filtered by DAG, it would show every tenant's model URIs.
#: resources no tenant or operator role holds any permission on: secrets, people, roles
FORBIDDEN_RESOURCES = frozenset({p.RESOURCE_CONNECTION, p.RESOURCE_VARIABLE, p.RESOURCE_CONFIG, p.RESOURCE_USER,
                                 p.RESOURCE_ROLE, p.RESOURCE_PASSWORD, p.RESOURCE_PERMISSION, p.RESOURCE_ACTION,
                                 p.RESOURCE_RESOURCE})


def dag_permissions(dag_id: str) -> frozenset[Perm]:
    """Read, trigger and clear one DAG (with the entity permissions): ``DAG:<id>`` read and edit,
    ``DAG Run:<id>`` create. No delete."""
    return frozenset({
        (p.ACTION_CAN_READ, p.resource_name(dag_id, p.RESOURCE_DAG)),
        (p.ACTION_CAN_EDIT, p.resource_name(dag_id, p.RESOURCE_DAG)),
        (p.ACTION_CAN_CREATE, p.resource_name(dag_id, p.RESOURCE_DAG_RUN)),
    })


def _dags(specs: Iterable[TenantSpec]) -> frozenset[Perm]:
    """Read, trigger and clear every DAG generated for the tenants (``TenantSpec.dag_ids``: the
    pipeline and each feed's feed and training DAGs)."""
    return frozenset().union(*(dag_permissions(dag_id) for spec in specs for dag_id in spec.dag_ids))


def tenant_permissions(spec: TenantSpec) -> frozenset[Perm]:
    """The tenant role: see, trigger, read logs and XCom of, and clear its own DAGs only."""
    return _UI | _DAG_ENTITIES | _dags([spec])


def operator_permissions(tenants: Iterable[TenantSpec]) -> frozenset[Perm]:
    """The operator role: clear, re-run and backfill every tenant's DAGs; no secrets."""
    return _UI | _DAG_ENTITIES | _OPERATOR_EXTRA | _dags(tenants)


def role_diff(have: set[Perm], want: frozenset[Perm]) -> tuple[list[Perm], list[Perm]]:
    """(grant, revoke), sorted: what makes ``have`` equal ``want``."""
    return sorted(want - have), sorted(have - want)


def logins_by_role(tenants: Iterable[TenantSpec]) -> dict[str, str]:
    """``{login: role}`` of every generated login; a login named twice (two tenants, or a tenant
    naming a platform login) is refused: one person, one tenant."""
    out = {layout.PLATFORM_LOGIN: layout.PLATFORM_ROLE, layout.OPERATOR_LOGIN: layout.OPERATOR_ROLE}
    for spec in tenants:
        for login in spec.airflow_users:
            if login in out:
                raise ValueError(f"Airflow login {login!r} of tenant {spec.tenant!r} is already the login of "
                                 f"role {out[login]!r}: give each tenant its own logins in airflow_users")
            out[login] = layout.tenant_role(spec.tenant)
    return out


# --------------------------------------------------------------------------------------------
# Passwords (<secrets>/airflow-users.json, kept across runs)
# --------------------------------------------------------------------------------------------
def users_file(secrets_dir: Path) -> Path:
    return Path(secrets_dir) / layout.AIRFLOW_USERS_FILE


def read_passwords(secrets_dir: Path) -> dict[str, str]:
    try:
        return json.loads(users_file(secrets_dir).read_text())
    except FileNotFoundError:
        return {}


def ensure_passwords(ctx: Context, logins: Iterable[str]) -> dict[str, str]:
    """The password of each login, generated once and kept in the users file (0600)."""
    current = read_passwords(ctx.secrets_dir)
    wanted = {**current, **{login: secrets.token_urlsafe(18) for login in logins if login not in current}}
    if wanted != current and not ctx.dry_run:
        write_private(users_file(ctx.secrets_dir), json.dumps(wanted, indent=2, sort_keys=True) + "\n")
    return wanted


# --------------------------------------------------------------------------------------------
# FAB (the security manager of the auth manager's own Flask app builder)
# --------------------------------------------------------------------------------------------
@contextmanager
def security_manager() -> Iterator[Any]:
    """FAB's security manager on Airflow's metadata database (what ``airflow users``/``roles`` use)."""
    from airflow.configuration import conf
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    manager = conf.get("core", "auth_manager")
    if not manager.endswith(".FabAuthManager"):
        raise FactoryError(f"Airflow's auth manager is {manager}, not FAB's FabAuthManager: set [core] auth_manager "
                           "in airflow.cfg (the repository's does), run airflow db migrate, then onboard again")
    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        if sm.find_role(layout.PLATFORM_ROLE) is None:  # a fresh database: FAB's built-in roles
            sm.sync_roles()
        yield sm


def sync_role(sm: Any, owner: str, name: str, want: frozenset[Perm], dry_run: bool) -> list[Change]:
    """Make role ``name`` hold exactly ``want``."""
    changes: list[Change] = []
    role = sm.find_role(name)
    if role is None:
        changes.append(Change(owner, STEP, f"create role {name}"))
        role = None if dry_run else sm.add_role(name)
    have = {(x.action.name, x.resource.name) for x in role.permissions} if role is not None else set()
    grant, revoke = role_diff(have, want)
    for action, resource in grant:
        changes.append(Change(owner, STEP, f"grant {action} on {resource!r} to {name}"))
        if not dry_run:
            sm.add_permission_to_role(role, sm.create_permission(action, resource))
    for action, resource in revoke:
        changes.append(Change(owner, STEP, f"revoke {action} on {resource!r} from {name}"))
        if not dry_run:
            sm.remove_permission_from_role(role, sm.get_permission(action, resource))
    return changes


def sync_user(sm: Any, owner: str, login: str, password: str, role_name: str, dry_run: bool) -> list[Change]:
    """Make ``login`` exist, active, with ``password`` and exactly the role ``role_name``."""
    from werkzeug.security import check_password_hash

    role = sm.find_role(role_name)
    user = sm.find_user(username=login)
    if user is None:
        if not dry_run:
            sm.add_user(username=login, first_name=login, last_name=owner, email=f"{login}@aifactory.invalid",
                        role=[role], password=password)
        return [Change(owner, STEP, f"create user {login} with role {role_name}")]
    changes: list[Change] = []
    if {r.name for r in user.roles} != {role_name} or not user.active:
        changes.append(Change(owner, STEP, f"set user {login}'s role to {role_name} (was "
                                           f"{sorted(r.name for r in user.roles)}), active"))
        if not dry_run:
            user.roles = [role]
            user.active = True
            sm.update_user(user)
    if not user.password or not check_password_hash(user.password, password):
        changes.append(Change(owner, STEP, f"reset user {login}'s password to the one in {layout.AIRFLOW_USERS_FILE}"))
        if not dry_run:
            sm.reset_password(user.id, password)
    return changes


def drop_stale_members(sm: Any, owner: str, role_name: str, keep: set[str], dry_run: bool) -> list[Change]:
    """Take ``role_name`` from users no longer named for it (a login removed from a spec)."""
    changes: list[Change] = []
    for user in sm.get_all_users():
        if user.username not in keep and any(r.name == role_name for r in user.roles):
            changes.append(Change(owner, STEP, f"remove role {role_name} from user {user.username}"))
            if not dry_run:
                user.roles = [r for r in user.roles if r.name != role_name]
                sm.update_user(user)
    return changes


# --------------------------------------------------------------------------------------------
# Onboarding steps
# --------------------------------------------------------------------------------------------
def onboard_airflow(ctx: Context, spec: TenantSpec, cluster: ClusterSpec | None) -> list[Change]:
    """The tenant's role, its DAG permissions, and its users (passwords in the users file)."""
    role = layout.tenant_role(spec.tenant)
    passwords = ensure_passwords(ctx, spec.airflow_users)
    with security_manager() as sm:
        changes = sync_role(sm, spec.tenant, role, tenant_permissions(spec), ctx.dry_run)
        for login in spec.airflow_users:
            changes += sync_user(sm, spec.tenant, login, passwords[login], role, ctx.dry_run)
        changes += drop_stale_members(sm, spec.tenant, role, set(spec.airflow_users), ctx.dry_run)
    return changes


def onboard_airflow_platform(ctx: Context, tenants: list[TenantSpec], clusters: list[ClusterSpec]) -> list[Change]:
    """The operator role over every tenant's DAG, and the platform admin and operator logins."""
    logins_by_role(tenants)  # refuses a login named twice before anything changes
    logins = {layout.PLATFORM_LOGIN: layout.PLATFORM_ROLE, layout.OPERATOR_LOGIN: layout.OPERATOR_ROLE}
    passwords = ensure_passwords(ctx, logins)
    with security_manager() as sm:
        changes = sync_role(sm, PLATFORM, layout.OPERATOR_ROLE,
                            operator_permissions(tenants), ctx.dry_run)
        for login, role in logins.items():
            changes += sync_user(sm, PLATFORM, login, passwords[login], role, ctx.dry_run)
    return changes


def main(argv: list[str] | None = None) -> int:
    """``python -m operators.access [--check]``: the Airflow steps alone, for every good tenant spec
    (docker-compose's airflow-init; the local stack runs them inside ``make onboard``)."""
    import argparse
    import os

    from aifactory.platform.onboard import secrets_dir
    from aifactory.tenants import good_tenants

    parser = argparse.ArgumentParser(prog="python -m operators.access", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="report what would change, change nothing")
    args = parser.parse_args(argv)
    ctx = Context(secrets_dir=secrets_dir(os.environ), env=dict(os.environ), dry_run=args.check)
    tenants = list(good_tenants())
    changes = onboard_airflow_platform(ctx, tenants, [])
    for spec in tenants:
        changes += onboard_airflow(ctx, spec, None)  # the cluster is not used
    for change in changes:
        print(f"{change.tenant:<10} {change.action}")
    print(f"{'would change' if args.check else 'changed'} {len(changes)} thing(s); logins in {users_file(ctx.secrets_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
