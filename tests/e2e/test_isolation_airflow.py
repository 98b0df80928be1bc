"""The Airflow rows of the cross-tenant matrix, through the real REST API and plugin of the stack.

Tenant A is ``demo``, tenant B is ``acme``; each logs in with the login onboarding generated for
it (``operators/access.py``). B runs its own DAG once (validate only: the run is stopped after it),
so every refusal below is about a run, task instance, log and XCom that exist and that B itself
may read: a 403 to A is the auth manager's decision, not a missing object.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

import pytest

from aifactory import layout
from aifactory.local.airflow_api import AirflowAPIError, AirflowClient
from aifactory.local.localstack import airflow_password
from aifactory.tenants import load_tenant

A, B = "demo", "acme"
DAG_A, DAG_B = layout.pipeline_dag_id(A), layout.pipeline_dag_id(B)
#: every DAG of each tenant (A's feed iris_daily adds a feed and a training DAG; B declares no feed)
DAGS_A, DAGS_B = load_tenant(A).dag_ids, load_tenant(B).dag_ids
TASK = "validate"

pytestmark = pytest.mark.timeout(900)


def refused(call, *args: Any, **kwargs: Any) -> int:
    """The HTTP status of a call that must be refused."""
    with pytest.raises(AirflowAPIError) as caught:
        call(*args, **kwargs)
    return caught.value.status


@pytest.fixture(scope="module")
def clients(api_as) -> dict[str, AirflowClient]:
    return {who: api_as(who) for who in (A, B, layout.OPERATOR_LOGIN, layout.PLATFORM_LOGIN)}


@pytest.fixture(scope="module")
def run_b(clients) -> str:
    """One run of B's DAG, triggered by B's user, stopped once validate succeeded (no side effect
    on the cluster or the object store)."""
    platform, b = clients[layout.PLATFORM_LOGIN], clients[B]
    was_paused = platform.wait_for_dag(DAG_B)["is_paused"]
    b.unpause(DAG_B)
    run_id = b.trigger(DAG_B, dict(load_tenant(B).defaults))["dag_run_id"]
    try:
        wait_for_task(b, run_id)
    finally:
        # paused while the run is stopped (nothing after validate gets scheduled), then left as it was:
        # other suites trigger B's DAG too
        platform.pause(DAG_B)
        try:
            platform.set_run_state(DAG_B, run_id, "failed")
        except AirflowAPIError:
            pass
        if not was_paused:
            platform.unpause(DAG_B)
    return run_id


def wait_for_task(client: AirflowClient, run_id: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {t["task_id"]: t["state"] for t in client.task_instances(DAG_B, run_id)}
        if states.get(TASK) in {"success", "failed", "upstream_failed"}:
            assert states[TASK] == "success", f"{TASK} of {DAG_B} ended {states[TASK]}: {states}"
            return
        time.sleep(3)
    raise AssertionError(f"{TASK} of {DAG_B} run {run_id} did not finish within {timeout:.0f}s")


def test_a_sees_only_its_own_dags(clients):
    assert len(DAGS_A) == 3 and DAG_A in DAGS_A
    assert sorted(clients[A].dag_ids()) == sorted(DAGS_A)
    assert clients[B].dag_ids() == [DAG_B]
    everything = set(clients[layout.PLATFORM_LOGIN].dag_ids())
    assert {*DAGS_A, *DAGS_B, layout.probe_dag_id(A)} <= everything  # the platform sees the platform DAGs
    assert set(clients[layout.OPERATOR_LOGIN].dag_ids()) == {*DAGS_A, *DAGS_B}


@pytest.mark.parametrize("dag_id", [d for d in DAGS_A if d != DAG_A])
def test_b_gets_403_on_as_feed_dags(clients, dag_id):
    b = clients[B]
    assert refused(b.wait_for_dag, dag_id, timeout=0) == 403
    assert refused(b.runs, dag_id) == 403
    assert refused(b.trigger, dag_id, {}, attempts=1) == 403
    assert refused(b.unpause, dag_id) == 403
    # Airflow's backfill asks for "create a run" on the DAG: B may not backfill A's feed either
    assert refused(b.backfill, dag_id, datetime(2026, 1, 5, tzinfo=UTC), datetime(2026, 1, 6, tzinfo=UTC)) == 403
    assert isinstance(clients[A].runs(dag_id), list)  # and A may


def test_b_reads_its_own_run_log_and_xcom(clients, run_b):
    b = clients[B]
    assert b.run(DAG_B, run_b)["dag_run_id"] == run_b
    assert b.task_log(DAG_B, run_b, TASK)
    assert b.xcom(DAG_B, run_b, TASK) is not None
    assert b.clear_tasks(DAG_B, run_b, [TASK], dry_run=True)


def test_a_gets_403_on_every_part_of_bs_dag(clients, run_b):
    a = clients[A]
    assert refused(a.wait_for_dag, DAG_B, timeout=0) == 403
    assert refused(a.runs, DAG_B) == 403
    assert refused(a.run, DAG_B, run_b) == 403
    assert refused(a.trigger, DAG_B, {}, attempts=1) == 403
    assert refused(a.task_instances, DAG_B, run_b) == 403
    assert refused(a.task_log, DAG_B, run_b, TASK) == 403
    assert refused(a.xcom, DAG_B, run_b, TASK) == 403
    assert refused(a.clear_tasks, DAG_B, run_b, [TASK], dry_run=True) == 403
    assert refused(a.unpause, DAG_B) == 403
    # and on the platform's DAGs
    assert refused(a.wait_for_dag, layout.probe_dag_id(A), timeout=0) == 403


def test_the_operator_clears_any_factory_dag_but_reads_no_connection(clients, run_b):
    operator = clients[layout.OPERATOR_LOGIN]
    assert operator.clear_tasks(DAG_B, run_b, [TASK], dry_run=True)
    assert operator.task_log(DAG_B, run_b, TASK)
    assert refused(operator.connection_ids) == 403
    assert refused(clients[A].connection_ids) == 403
    assert isinstance(clients[layout.PLATFORM_LOGIN].connection_ids(), list)


# -- the plugin's endpoints ------------------------------------------------------------------------
def plugin_get(stack_env: dict[str, str], path: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"{stack_env['AIFP_AIRFLOW_URL']}/aifactory{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@pytest.mark.parametrize("path", ["/tenants", f"/tenants/{A}", f"/tenants/{A}/models", "/recipes"])
def test_plugin_answers_401_without_a_login(stack_env, path):
    assert plugin_get(stack_env, path)[0] == 401
    assert plugin_get(stack_env, path, "forged.jwt.token")[0] in (401, 403)


def test_plugin_shows_a_only_as_data(stack_env, clients):
    token = clients[A].token()
    status, tenants = plugin_get(stack_env, "/tenants", token)
    assert status == 200 and [t["tenant"] for t in tenants] == [A]
    assert plugin_get(stack_env, f"/tenants/{A}", token)[0] == 200
    status, models = plugin_get(stack_env, f"/tenants/{A}/models", token)
    assert status == 200 and all(m["uri"].startswith(f"s3://{load_tenant(A).bucket}/{A}/models/") for m in models)
    for path in (f"/tenants/{B}", f"/tenants/{B}/models"):
        assert plugin_get(stack_env, path, token)[0] == 404
    status, everyone = plugin_get(stack_env, "/tenants", clients[layout.PLATFORM_LOGIN].token())
    assert status == 200 and {A, B} <= {t["tenant"] for t in everyone}


def test_plugin_accepts_the_uis_login_cookie(stack_env):
    """Logged in through FAB's login form (as a browser is), the plugin sees the UI's cookie."""
    base = stack_env["AIFP_AIRFLOW_URL"]
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with browser.open(f"{base}/auth/login/", timeout=30) as page:
        csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.read().decode()).group(1)
    form = urllib.parse.urlencode({"csrf_token": csrf, "username": A, "password": airflow_password(stack_env, A)})
    browser.open(f"{base}/auth/login/", data=form.encode(), timeout=30).close()
    assert "_token" in {c.name for c in jar}, "FAB's login form set no _token cookie"
    with browser.open(f"{base}/aifactory/tenants", timeout=30) as answer:
        assert [t["tenant"] for t in json.loads(answer.read())] == [A]
