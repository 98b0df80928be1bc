"""The trigger form in a real browser: the demo tenant's user logs in to the Airflow UI, sees its
own pipeline and not the other tenant's, fills the form, triggers, and watches the run succeed.

Playwright drives Debian's Chromium (``/usr/bin/chromium``, installed by ``make setup``); Playwright
cannot download its own browsers here. What the browser sent is checked through the REST API too:
the run carries the values typed into the form (hyperparameters, time limit) and ends in success.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aifactory import layout
from aifactory.local.localstack import airflow_password
from aifactory.tenants import load_tenant

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
#: headless Chromium as LOCAL-STACK-FACTS describes it: no sandbox (root), no GPU, nothing phoning home
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[2]
SPEC = load_tenant("demo")
OTHER = load_tenant("acme")
DAG_ID = layout.pipeline_dag_id(SPEC.tenant)
OTHER_DAG_ID = layout.pipeline_dag_id(OTHER.tenant)
LOGIN = SPEC.airflow_users[0]
RUN_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(f"{CHROMIUM} is not installed (make setup installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, stack_env) -> Iterator[Any]:
    """A page logged in as the demo tenant's user, through the auth manager's own login form."""
    # the clipboard carries the hyperparameters into the form's JSON editor (typing into it would
    # meet the editor's auto-closing brackets and the UI's one-key shortcuts)
    context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                  permissions=["clipboard-read", "clipboard-write"])
    context.set_default_timeout(60_000)
    page = context.new_page()
    base = stack_env["AIFP_AIRFLOW_URL"].rstrip("/")
    page.goto(f"{base}/")
    page.locator("input[name=username]").fill(LOGIN)
    page.locator("input[name=password]").fill(airflow_password(stack_env, LOGIN))
    page.locator("input[name=password]").press("Enter")
    page.wait_for_url(lambda url: "/login" not in url)
    yield page
    context.close()


def _dag_links(page: Any, base: str) -> set[str]:
    """The DAG ids the UI's DAG list links to (its own pages of runs and tasks not counted)."""
    page.goto(f"{base}/dags")
    page.locator(f"a[href='/dags/{DAG_ID}']").first.wait_for()
    hrefs = page.locator("a[href^='/dags/']").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    return {h.split("/")[2] for h in hrefs if h.count("/") == 2}


def _fill_trigger_form(page: Any, dataset_uri: str, hyperparameters: dict[str, Any], time_limit: int,
                       run_id: str) -> None:
    page.get_by_test_id("trigger-dag-button").click()
    dialog = page.get_by_role("dialog")
    uri = dialog.locator("#element_dataset_uri")
    uri.fill(dataset_uri)
    # hyperparameters: the form's JSON editor, replaced as a user pastes into it
    page.evaluate("text => navigator.clipboard.writeText(text)", json.dumps(hyperparameters, indent=2))
    dialog.locator(".monaco-editor").first.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Control+V")
    # a number field: its input is the one the field's increment button controls
    controls = dialog.locator("[id='number-input:element_time_limit_minutes:inc']").get_attribute("aria-controls")
    dialog.locator(f"[id='{controls}']").fill(str(time_limit))
    dialog.get_by_role("button", name=re.compile("Advanced Options")).click()
    dialog.locator("input[name=dagRunId]").fill(run_id)
    submit = dialog.get_by_test_id("trigger-dag-submit")
    assert submit.is_enabled(), page.get_by_role("dialog").inner_text()[:2000]  # the form took every value
    submit.click()
    dialog.wait_for(state="hidden")


def _ui_run_state(page: Any, base: str, run_id: str) -> str:
    """The run's state as the UI shows it: the badge in the run page's heading, next to the run id (the
    heading's block holds the run id's h2 and the badge; the task table below has one badge per
    task), the page reloaded until the state is final."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + RUN_TIMEOUT_S
    state = ""
    # run ids here are browser_<hex>: safe inside the XPath literal
    heading_badge = f"xpath=//h2[normalize-space()='{run_id}']/..//*[@data-testid='state-badge']"
    while time.monotonic() < deadline:
        page.goto(f"{base}/dags/{DAG_ID}/runs/{run_id}")
        badge = page.locator(heading_badge).first
        try:
            badge.wait_for()
        except PlaywrightTimeout:  # a slow render of a loaded machine: load the page again
            continue
        state = badge.inner_text().strip().lower()
        if state in ("success", "failed"):
            return state
        page.wait_for_timeout(10_000)
    return state


def test_the_demo_user_triggers_its_pipeline_from_the_form_and_the_run_succeeds(page, stack_env, s3_client,
                                                                               api_as) -> None:
    base = stack_env["AIFP_AIRFLOW_URL"].rstrip("/")
    demo = api_as(LOGIN)
    demo.unpause(DAG_ID)

    dags = _dag_links(page, base)
    assert DAG_ID in dags, dags
    assert OTHER_DAG_ID not in dags, f"{LOGIN} sees the other tenant's pipeline: {sorted(dags)}"
    assert not any(d.startswith("platform_") for d in dags), sorted(dags)

    key = f"{SPEC.raw_prefix}browser/iris-{secrets.token_hex(3)}.csv"
    s3_client.put_object(Bucket=SPEC.bucket, Key=key, Body=(REPO / "include/sample_data/iris.csv").read_bytes())
    dataset_uri = layout.s3_uri(SPEC.bucket, key)
    hyperparameters = {**SPEC.defaults["hyperparameters"], "epochs": 3, "hidden_units": 8}
    run_id = f"browser_{secrets.token_hex(4)}"
    page.goto(f"{base}/dags/{DAG_ID}")
    _fill_trigger_form(page, dataset_uri, hyperparameters, time_limit=15, run_id=run_id)

    # what the form sent, as the API recorded it
    conf = demo.run(DAG_ID, run_id)["conf"]
    assert conf["dataset_uri"] == dataset_uri, conf
    assert conf["hyperparameters"] == hyperparameters, conf
    assert conf["time_limit_minutes"] == 15, conf

    state = _ui_run_state(page, base, run_id)
    run = demo.wait_for_run(DAG_ID, run_id, timeout=120)
    tasks = {t["task_id"]: t["state"] for t in demo.task_instances(DAG_ID, run_id)}
    assert state == "success" and run["state"] == "success", (state, run["state"], tasks)
    assert run["triggered_by"] == "ui" and run["triggering_user_name"] == LOGIN, run
    assert demo.xcom(DAG_ID, run_id, "validate")["resources"]["time_limit_minutes"] == 15
    assert demo.xcom(DAG_ID, run_id, "validate")["hyperparameters"]["epochs"] == 3
