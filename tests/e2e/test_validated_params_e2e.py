"""Validate once, and refuse tampering: through the real scheduler, workers and REST API.

- An XCom value can be rewritten by anyone with edit rights on a run (``PATCH .../xcomEntries``):
  a dataset prefix or an output directory pointing at another tenant's area is refused by the next
  stage, and nothing is staged or published.
- NaN, infinity, ``5.0`` for an integer and an unknown top-level conf key are refused before any
  side effect: either Airflow refuses the trigger itself, or the validate task fails and no later
  task starts (nothing is ingested).
"""

from __future__ import annotations

import json
import posixpath
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from aifactory import layout
from aifactory.data.s3 import list_keys
from aifactory.local.airflow_api import AirflowAPIError, AirflowClient
from aifactory.tenants import load_cluster, load_tenant

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "factory_demo"
SPEC = load_tenant("demo")
CLUSTER = load_cluster(SPEC.cluster)
AREAS = SPEC.areas(CLUSTER)
OTHER = "other-tenant"  # a tenant name of the layout's rule (TENANT_RE); it has no spec here
#: where that tenant's areas would be, by the cluster's templates
OTHER_AREAS = replace(SPEC, tenant=OTHER, slurm_account=OTHER,
                      identity=replace(SPEC.identity, unix_user=f"aifp-{OTHER}")).areas(CLUSTER)


def _upload(s3, name: str) -> str:
    key = f"{SPEC.raw_prefix}e2e-params/{name}.csv"
    s3.put_object(Bucket=SPEC.bucket, Key=key, Body=(REPO / "include/sample_data/iris.csv").read_bytes())
    return layout.s3_uri(SPEC.bucket, key)


def _states(api: AirflowClient, run_id: str) -> dict[str, dict[str, Any]]:
    return {t["task_id"]: t for t in api.task_instances(DAG_ID, run_id)}


def _log(api: AirflowClient, run_id: str, task_id: str) -> str:
    """The latest try's log, the failure's message (``error_detail``) included."""
    return api.task_log(DAG_ID, run_id, task_id, _states(api, run_id)[task_id]["try_number"])


def _remote(ssh_client, command: str) -> str:
    _, out, _ = ssh_client.exec_command(command, timeout=60)
    return out.read().decode()


def _models(s3) -> dict[str, str]:
    prefix = layout.models_prefix(SPEC.tenant)
    return {o["Key"]: o["ETag"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=SPEC.bucket, Prefix=prefix) for o in page.get("Contents", [])}


# --------------------------------------------------------------------------------------------------
# Tampering: one completed demo run, reused by both checks
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(api, s3_client) -> str:
    conf = {**SPEC.defaults, "dataset_uri": _upload(s3_client, f"tamper-{secrets.token_hex(4)}")}
    run_id = api.trigger(DAG_ID, conf)["dag_run_id"]
    run = api.wait_for_run(DAG_ID, run_id, timeout=900)
    assert run["state"] == "success", {k: v["state"] for k, v in _states(api, run_id).items()}
    return run_id


def _rerun(api: AirflowClient, run_id: str, task_id: str) -> dict[str, Any]:
    before = _states(api, run_id)[task_id]["try_number"]
    api.clear_tasks(DAG_ID, run_id, [task_id])
    api.wait_for_run(DAG_ID, run_id, timeout=300)
    ti = _states(api, run_id)[task_id]
    assert ti["try_number"] > before, ti  # it really ran again
    return ti


def test_a_dataset_prefix_rewritten_to_another_tenant_is_refused_by_stage(api, finished_run, s3_client, ssh_client):
    run_id = finished_run
    ingest = api.xcom(DAG_ID, run_id, "ingest")
    foreign = layout.dataset_prefix(OTHER, ingest["name"], ingest["version"])
    # the other tenant's area holds a real dataset version: a stage that followed the prefix would stage it
    for key in list_keys(s3_client, SPEC.bucket, ingest["prefix"]):
        s3_client.copy_object(Bucket=SPEC.bucket, Key=foreign + key[len(ingest["prefix"]):],
                              CopySource={"Bucket": SPEC.bucket, "Key": key})
    staged = layout.hpc_dataset_dir(AREAS, ingest["name"], ingest["version"])
    # every tenant's areas (the folders that hold them), and the staged copy
    listing = (f"ls -A {' '.join(sorted({posixpath.dirname(a) for a in AREAS.roots}))}; "
               f"ls -la --time-style=full-iso {staged}")
    staged_before = _remote(ssh_client, listing)
    assert layout.STAGING_MARKER in staged_before  # the run staged it
    api.patch_xcom(DAG_ID, run_id, "ingest", {**ingest, "prefix": foreign,
                                              "uri": layout.s3_uri(SPEC.bucket, foreign)})
    try:
        assert api.xcom(DAG_ID, run_id, "ingest")["prefix"] == foreign
        ti = _rerun(api, run_id, "stage")
        assert ti["state"] == "failed", ti
        log = _log(api, run_id, "stage")
        assert "not inside this tenant's datasets area" in log and foreign in log, log[-3000:]
        # refused before any SSH connection: nothing for the other tenant, nothing new for this one
        for area in OTHER_AREAS.roots:
            assert _remote(ssh_client, f"test -e {area} && echo present || echo absent").strip() == "absent"
        assert _remote(ssh_client, listing) == staged_before
        # the refusal is final: no retry was scheduled
        assert ti["try_number"] == _states(api, run_id)["stage"]["try_number"]
    finally:
        api.patch_xcom(DAG_ID, run_id, "ingest", ingest)
        for key in list_keys(s3_client, SPEC.bucket, foreign):
            s3_client.delete_object(Bucket=SPEC.bucket, Key=key)


def test_an_output_dir_rewritten_to_another_tenant_is_refused_by_export(api, finished_run, s3_client):
    run_id = finished_run
    train = api.xcom(DAG_ID, run_id, "train")
    run_dir = train["output_dir"].rstrip("/").rsplit("/", 2)[-2]
    foreign = layout.run_output_dir(layout.run_dir(OTHER_AREAS, run_dir))
    models_before = _models(s3_client)
    api.patch_xcom(DAG_ID, run_id, "train", {**train, "output_dir": foreign})
    try:
        ti = _rerun(api, run_id, "export")
        assert ti["state"] == "failed", ti
        log = _log(api, run_id, "export")
        assert "not inside this tenant's runs directory" in log and foreign in log, log[-3000:]
        assert _models(s3_client) == models_before  # nothing published, nothing rewritten
    finally:
        api.patch_xcom(DAG_ID, run_id, "train", train)


# --------------------------------------------------------------------------------------------------
# Input hardening: refused before any side effect
# --------------------------------------------------------------------------------------------------


def _post_raw(api: AirflowClient, run_id: str, conf_json: str) -> tuple[int, str]:
    """Trigger with a conf written as JSON text: ``NaN``, ``1e999`` and ``-Infinity`` parse to floats
    here, and the REST client sends them as the literals ``NaN``, ``Infinity``, ``-Infinity``."""
    return api.trigger_outcome(DAG_ID, json.loads(conf_json), run_id)


def _assert_refused_before_any_side_effect(api: AirflowClient, s3, run_id: str, status: int, detail: str,
                                           dataset: str, message: str) -> str:
    """Either the trigger was refused (no run exists), or validate failed and nothing after it started."""
    if status >= 400:
        assert status in (400, 422), (status, detail)
        with pytest.raises(AirflowAPIError) as exc:
            api.run(DAG_ID, run_id)
        assert exc.value.status == 404
        return f"trigger refused: HTTP {status}"
    assert status == 200, (status, detail)
    assert api.wait_for_run(DAG_ID, run_id, timeout=300)["state"] == "failed"
    states = _states(api, run_id)
    assert states["validate"]["state"] == "failed", states["validate"]
    for later in ("ingest", "quality", "stage", "train", "export"):
        assert states[later]["state"] in (None, "upstream_failed"), states[later]
        # never ran: no try, no worker (the scheduler stamps a start date on upstream_failed itself)
        assert states[later]["try_number"] == 0 and not states[later].get("hostname"), states[later]
    assert states["validate"]["try_number"] == 1  # an input error is not retried
    log = _log(api, run_id, "validate")
    assert message in log, log[-3000:]
    assert list_keys(s3, SPEC.bucket, layout.datasets_prefix(SPEC.tenant) + dataset + "/") == []
    return "validate failed"


def _conf(uri: str, **changes: Any) -> dict[str, Any]:
    conf = {**SPEC.defaults, "dataset_uri": uri}
    hp = {**conf["hyperparameters"], **changes.pop("hyperparameters", {})}
    return {**conf, **changes, "hyperparameters": hp}


@pytest.mark.parametrize(("case", "literal", "message"), [
    ("nan", "NaN", "not a finite number"),
    ("overflow", "1e999", "not a finite number"),  # a float out of range parses as infinity
    ("negative-infinity", "-Infinity", "not a finite number"),
])
def test_non_finite_numbers_are_refused_through_the_api(api, s3_client, case, literal, message):
    dataset = f"hardening-{case}-{secrets.token_hex(3)}"
    conf = _conf(_upload(s3_client, dataset))
    text = json.dumps(conf).replace('"learning_rate": 0.01', f'"learning_rate": {literal}')
    assert literal in text
    run_id = f"e2e_hardening_{case}_{secrets.token_hex(4)}"
    status, detail = _post_raw(api, run_id, text)
    if status == 200:
        # Airflow 3.3 accepts the non-standard literal and stores the conf as JSON, where it becomes
        # null: the validate task then sees None (refused by the schema), not the float itself
        recorded = api.run(DAG_ID, run_id)["conf"]["hyperparameters"]["learning_rate"]
        if recorded is None:
            message = "hyperparameters.learning_rate: None is not of type 'number'"
    outcome = _assert_refused_before_any_side_effect(api, s3_client, run_id, status, detail, dataset, message)
    print(f"{case}: {outcome}")


@pytest.mark.parametrize(("case", "changes", "message"), [
    ("float-epochs", {"hyperparameters": {"epochs": 5.0}}, "expected an integer, got '5.0'; write 5"),
    ("float-nodes", {"nodes": 1.0}, "expected an integer"),
    ("unknown-account", {"account": "other"}, "unknown parameter"),
    ("unknown-qos", {"qos": "high"}, "unknown parameter"),
])
def test_non_integers_and_unknown_keys_are_refused_through_the_api(api, s3_client, case, changes, message):
    dataset = f"hardening-{case}-{secrets.token_hex(3)}"
    conf = _conf(_upload(s3_client, dataset), **changes)
    run_id = f"e2e_hardening_{case}_{secrets.token_hex(4)}"
    status, detail = _post_raw(api, run_id, json.dumps(conf))
    outcome = _assert_refused_before_any_side_effect(api, s3_client, run_id, status, detail, dataset, message)
    if case.startswith("unknown"):
        log = _log(api, run_id, "validate") if outcome == "validate failed" else detail
        for field in ("dataset_uri", "recipe", "hyperparameters", "partition", "time_limit_minutes"):
            assert field in log
    print(f"{case}: {outcome}")
