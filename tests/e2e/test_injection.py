"""Hostile values through the REST API into every field of the trigger form, as the tenants' own users.

Every value of tests/hostile_values.py goes into every field the trigger itself checks (the form's
Params: dataset URI pattern, recipe and partition lists, integer types, the hyperparameters object);
those it lets through, and every value put into the fields only the validate task checks
(hyperparameter keys and values, unknown extra keys), become runs. Each must be refused before any
remote command runs:

- the trigger answers 4xx and no run exists, or
- the run fails at validate and no later task ever started (no try, no worker), or
- for a column name only (``label_column``, ``feature_columns``: any printable text can name a
  column, and validate carries it as data), the run fails at quality, on the dataset (no such
  column), and stage, train and export never started: nothing reached the cluster.

Values that would run a command ``touch`` canary files on the HPC side (``/tmp`` and each tenant's
directory); at the end none exists, seen over SSH as each tenant's user and on this machine (the
local cluster runs here). The runs are triggered first and awaited together, spread over both
tenants' pipelines (each admits two active runs), so the suite takes minutes. Its unit twin is
tests/unit/test_injection_values.py.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hostile_values import FIELDS, HOSTILE_NUMBERS, Hostile, hostile_uris, hostile_values, with_value

from aifactory import layout
from aifactory.local.airflow_api import AirflowAPIError, AirflowClient
from aifactory.tenants import load_cluster, load_tenant

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TENANTS = [load_tenant("demo"), load_tenant("acme")]
CLUSTER = load_cluster(TENANTS[0].cluster)
CANARY = f"aifp-canary-{secrets.token_hex(8)}"
#: where an injected command would write: /tmp, and each of every tenant's areas
CANARIES = [f"/tmp/{CANARY}", *(f"{area}/{CANARY}" for t in TENANTS for area in t.areas(CLUSTER).roots)]
#: checked by the trigger itself (the form's Params): every value goes into each, refusals cost nothing
TRIGGER_FIELDS = ["dataset_uri", "recipe", "partition", "nodes", "gpus_per_node", "cpus_per_task", "mem_gb",
                  "time_limit_minutes", "hyperparameters"]
#: checked only by the validate task: each value goes into one of them (in turn), as one run
RUN_FIELDS = ["hyperparameters.epochs", "hyperparameters.<key>", "<extra key>", "hyperparameters.learning_rate",
              "<extra key's value>"]
#: column names: printable text is data there, refused by the dataset at quality (see the docstring)
COLUMN_FIELDS = ["hyperparameters.label_column", "hyperparameters.feature_columns[]"]
#: the values sent into a column field as runs (each costs an ingest and a quality check)
COLUMN_VALUES = ["command-substitution", "backticks", "jinja-os", "newline-sbatch", "dash-wrap"]
LATER = ("ingest", "quality", "stage", "train", "export")
REMOTE = ("stage", "train", "export")  # the tasks that reach the cluster
RUN_TIMEOUT_S = 1800


@dataclass
class Sent:
    tenant: str
    field: str
    value: Hostile
    run_id: str
    status: int = 0
    detail: str = ""
    outcome: str = ""
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.value.name} in {self.field} ({self.tenant})"


def _values(spec) -> list[Hostile]:
    other = next(t for t in TENANTS if t.tenant != spec.tenant)
    return [*hostile_values(CANARIES), *hostile_uris(spec.bucket, spec.tenant, other.bucket, other.tenant),
            *HOSTILE_NUMBERS]


@pytest.fixture(scope="module")
def clients(api, api_as) -> dict[str, AirflowClient]:
    """Each tenant's own user; both pipelines unpaused (by the platform)."""
    for spec in TENANTS:
        api.wait_for_dag(layout.pipeline_dag_id(spec.tenant))
        api.unpause(layout.pipeline_dag_id(spec.tenant))
    return {spec.tenant: api_as(spec.airflow_users[0]) for spec in TENANTS}


@pytest.fixture(scope="module")
def base_confs(s3_client) -> dict[str, dict[str, Any]]:
    """A valid conf per tenant, on a real dataset: only the hostile value makes a run fail."""
    out = {}
    for spec in TENANTS:
        key = f"{spec.raw_prefix}injection/iris.csv"
        s3_client.put_object(Bucket=spec.bucket, Key=key, Body=(REPO / "include/sample_data/iris.csv").read_bytes())
        hp = {**TENANTS[0].defaults["hyperparameters"], "epochs": 1}
        out[spec.tenant] = {"dataset_uri": layout.s3_uri(spec.bucket, key), "recipe": "tabular_classifier",
                            "hyperparameters": hp}
    return out


def _plan() -> Iterator[tuple[str, str, Hostile]]:
    """(tenant, field, value) of every send; runs alternate between the tenants."""
    turn = 0
    for spec in TENANTS[:1]:
        for name in TRIGGER_FIELDS:
            for value in _values(spec):
                yield spec.tenant, name, value
    for i, value in enumerate(hostile_values(CANARIES)):
        yield TENANTS[turn % 2].tenant, RUN_FIELDS[i % len(RUN_FIELDS)], value
        turn += 1
    by_name = {v.name: v for v in hostile_values(CANARIES)}
    for i, name in enumerate(COLUMN_VALUES):
        yield TENANTS[turn % 2].tenant, COLUMN_FIELDS[i % len(COLUMN_FIELDS)], by_name[name]
        turn += 1


def _exists(client: AirflowClient, dag_id: str, run_id: str) -> bool:
    try:
        client.run(dag_id, run_id)
    except AirflowAPIError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _beyond_64_bits(value: Any) -> bool:
    return isinstance(value, int) and not -(2**63) <= value < 2**64


def _judge(sent: Sent) -> str | None:
    """None when the run was refused before any remote command; else what went wrong."""
    tasks = sent.tasks
    never = [t for t in REMOTE if tasks[t]["try_number"] or tasks[t].get("hostname")]
    if never:
        return f"{never} started: {({t: tasks[t]['state'] for t in tasks})}"
    if tasks["validate"]["state"] == "failed":
        later = [t for t in LATER if tasks[t]["try_number"] or tasks[t]["state"] not in (None, "upstream_failed")]
        if later:
            return f"validate failed but {later} ran"
        # An integer beyond 64 bits is accepted by the API but cannot be handed to a task: Airflow's
        # executor fails the task before its code runs (OverflowError), and its retry fails the same way.
        if tasks["validate"]["try_number"] != 1 and not _beyond_64_bits(sent.value.value):
            return f"validate was retried (try {tasks['validate']['try_number']}): an input error is final"
        return None
    if sent.field in COLUMN_FIELDS and tasks["quality"]["state"] == "failed":
        return None
    return f"not refused: {({t: tasks[t]['state'] for t in tasks})}"


def _canaries_seen(tenant_ssh) -> list[str]:
    """The canary files that exist: on this machine (root sees all), and over SSH as each tenant."""
    found = [p for p in CANARIES if Path(p).exists()]
    for spec in TENANTS:
        areas = spec.areas(CLUSTER).roots
        # the tenant's own areas are readable by that user only (0700): ls proves the look worked
        command = f"ls -d {' '.join(areas)} && " + " ; ".join(
            f"test -e {p} && echo FOUND {p}" for p in (CANARIES[0], *(f"{a}/{CANARY}" for a in areas))) + " ; true"
        _, out, err = tenant_ssh(spec.tenant).exec_command(command, timeout=60)
        text = out.read().decode()
        assert set(areas) <= set(text.splitlines()), (spec.tenant, text, err.read().decode())
        found += [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("FOUND ")]
    return sorted(set(found))


def _await(api: AirflowClient, clients: dict[str, AirflowClient], runs: list[Sent]) -> list[str]:
    """Wait for every run together; judge each as it ends. A pipeline another test paused meanwhile is
    unpaused again (queued runs of a paused DAG never start)."""
    problems = []
    pending = {s.run_id: s for s in runs}
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while pending and time.monotonic() < deadline:
        for dag_id in {layout.pipeline_dag_id(s.tenant) for s in pending.values()}:
            if api.wait_for_dag(dag_id)["is_paused"]:
                print(f"{dag_id} was paused (by another test?): unpausing it")
                api.unpause(dag_id)
        for run_id, sent in list(pending.items()):
            client, dag_id = clients[sent.tenant], layout.pipeline_dag_id(sent.tenant)
            run = client.run(dag_id, run_id)
            if run["state"] not in ("success", "failed"):
                continue
            del pending[run_id]
            sent.tasks = {t["task_id"]: t for t in client.task_instances(dag_id, run_id)}
            why = _judge(sent) if run["state"] == "failed" else f"run {run['state']}"
            if why:
                problems.append(f"{sent.label}: run {run_id}: {why}")
            sent.outcome = "validate failed" if sent.tasks["validate"]["state"] == "failed" else "quality failed"
        time.sleep(5)
    return problems + [f"{s.label}: run {s.run_id} not finished after {RUN_TIMEOUT_S}s" for s in pending.values()]


def test_every_hostile_value_is_refused_before_any_remote_command(api, clients, base_confs, tenant_ssh) -> None:
    assert _canaries_seen(tenant_ssh) == []  # nothing from an earlier session
    batch = secrets.token_hex(3)
    sends = [Sent(tenant, name, value, f"inj_{batch}_{n:03d}")
             for n, (tenant, name, value) in enumerate(_plan())]
    assert len({s.value.name for s in sends}) >= 30
    assert {s.field for s in sends} == set(FIELDS)  # every field of the form, keys and extra keys too

    # 1. send everything; the trigger refuses what the form's Params catch
    started = time.monotonic()
    for sent in sends:
        client = clients[sent.tenant]
        conf = with_value(base_confs[sent.tenant], sent.field, sent.value.value)
        sent.status, sent.detail = client.trigger_outcome(layout.pipeline_dag_id(sent.tenant), conf, sent.run_id)
    problems = []
    for sent in sends:
        dag_id = layout.pipeline_dag_id(sent.tenant)
        if sent.status != 200:
            if sent.status not in (400, 422):
                problems.append(f"{sent.label}: HTTP {sent.status} {sent.detail[:200]}")
            elif _exists(clients[sent.tenant], dag_id, sent.run_id):
                problems.append(f"{sent.label}: refused with {sent.status}, yet run {sent.run_id} exists")
            sent.outcome = f"trigger HTTP {sent.status}"

    runs = [s for s in sends if s.status == 200]
    print(f"{len(sends)} sent in {time.monotonic() - started:.0f}s, {len(runs)} runs")

    # 2. every accepted trigger must end before any remote command: wait for all of them together
    problems += _await(api, clients, runs)
    print(f"runs ended after {time.monotonic() - started:.0f}s")

    # 3. no value ran a command anywhere on the cluster
    seen = _canaries_seen(tenant_ssh)
    summary: dict[str, int] = {}
    for sent in sends:
        summary[sent.outcome] = summary.get(sent.outcome, 0) + 1
    print(f"{len(sends)} hostile sends ({len(runs)} runs): {json.dumps(summary)}")
    assert not seen, f"canary files were created: {seen}"
    assert not problems, "\n".join(problems)
