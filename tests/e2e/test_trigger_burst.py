"""100 triggers sent back to back through the REST API all answer 2xx, while the scheduler works.

On the SQLite metadata database of earlier stacks, triggers sent one after another while the
scheduler moved runs along got HTTP 500 "Database error" (SQLite's one writer lock: "database is
locked"). The local stack's Airflow database is Postgres now (include/stack/metadata_db.sh); this
test sends each trigger exactly once (no retry: a 5xx fails the test) and counts the answers.

The runs cost little: each carries a hyperparameter the recipe does not know, which the trigger
form lets through and the validate task refuses at once (nothing staged, no Slurm job), and the
pipeline's ``max_active_runs`` lets only two of them run at a time. Every run the burst made is
deleted afterwards, so the demo pipeline's later tests do not queue behind them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import pytest
from airflow_client import client as ac

from aifactory import layout
from aifactory.local.airflow_api import AirflowAPIError, AirflowClient
from aifactory.tenants import load_tenant

pytestmark = pytest.mark.e2e

BURST = 100
SPEC = load_tenant("demo")
DAG_ID = layout.pipeline_dag_id(SPEC.tenant)


def _conf() -> dict:
    """The demo defaults plus a hyperparameter the recipe's schema refuses (validate fails fast)."""
    return {**SPEC.defaults, "hyperparameters": {**SPEC.defaults["hyperparameters"], "burst_probe": 1}}


def _cleanup_call(what: str, fn: Callable[[], object]) -> None:
    """One cleanup call, tried again after a server error: deleting a run, or marking it failed,
    while the scheduler works on it may meet a Postgres deadlock, which Airflow's API answers with
    HTTP 500 without retrying (seen here: ``deadlock detected`` in the server's log). The triggers
    under test are each sent once."""
    for attempt in range(1, 6):
        try:
            fn()
            return
        except AirflowAPIError as exc:
            if attempt == 5 or (exc.status or 0) < 500:
                raise
            time.sleep(0.5 * attempt)
    raise AssertionError(f"unreachable: {what}")


def _delete_runs(api: AirflowClient, run_ids: list[str]) -> list[str]:
    """Delete the burst's runs; the ids that could not be deleted (other than already gone).
    A running run cannot be deleted (HTTP 409): it is marked failed first, which stops its tasks."""
    left = []
    for run_id in run_ids:
        def delete(r: str = run_id) -> None:
            api._call(f"delete run {r}", lambda a: ac.DagRunApi(a).delete_dag_run(DAG_ID, r))
        try:
            try:
                _cleanup_call(f"delete {run_id}", delete)
            except AirflowAPIError as exc:
                if exc.status != 409:
                    raise
                _cleanup_call(f"fail {run_id}", lambda r=run_id: api.set_run_state(DAG_ID, r, "failed"))
                _cleanup_call(f"delete {run_id}", delete)
        except AirflowAPIError as exc:
            if exc.status != 404:
                left.append(f"{run_id}: {exc}")
    return left


@pytest.mark.timeout(300)
def test_100_triggers_back_to_back_all_answer_2xx(api: AirflowClient):
    prefix = f"burst__{secrets.token_hex(4)}"
    conf = _conf()
    answers: list[tuple[str, int | None, str]] = []
    try:
        for i in range(BURST):
            run_id = f"{prefix}__{i:03d}"
            try:
                run = api.trigger(DAG_ID, conf, run_id, attempts=1)  # once: no retry hides a 5xx
                answers.append((run_id, 200, run["state"]))
            except AirflowAPIError as exc:
                answers.append((run_id, exc.status, exc.detail or str(exc)))
        failed = [a for a in answers if a[1] is None or not 200 <= a[1] < 300]
        assert not failed, (f"{len(failed)} of {BURST} back-to-back triggers were not answered 2xx "
                            f"(metadata database: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN): {failed[:5]}")
        # every answer stands for a run the database really holds
        page = api._call("GET burst runs", lambda a: ac.DagRunApi(a).get_dag_runs(
            DAG_ID, limit=BURST, run_id_pattern=prefix))
        assert page.total_entries == BURST, f"{page.total_entries} runs named {prefix}* exist, {BURST} were accepted"
    finally:
        left = _delete_runs(api, [a[0] for a in answers])
    assert not left, f"runs of the burst left behind: {left[:5]}"
