"""100 triggers sent back to back through the REST API all answer 2xx, while the scheduler works.

On the SQLite metadata database of earlier stacks, triggers sent one after another while the
scheduler moved runs along got HTTP 500 "Database error" (SQLite's one writer lock: "database is
locked"). The local stack's Airflow database is Postgres now (include/stack/metadata_db.sh); this
test sends each trigger exactly once (no retry: a 5xx fails the test) and counts the answers.

The runs cost little: each carries a hyperparameter the recipe does not know, which the trigger
form lets through and the validate task refuses at once (nothing staged, no Slurm job), and the
pipeline's ``max_active_runs`` lets only two of them run at a time. Every run the burst made is
marked failed afterwards, so the demo pipeline's later tests do not queue behind them; none is
deleted, because deleting runs under a working scheduler kills it (``AirflowClient.fail_runs``).
"""

from __future__ import annotations

import secrets

import pytest

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
        held = api.count_runs(DAG_ID, prefix)
        assert held == BURST, f"{held} runs named {prefix}* exist, {BURST} were accepted"
    finally:
        left = api.fail_runs(DAG_ID, [a[0] for a in answers])
    assert not left, f"runs of the burst left behind: {left[:5]}"
