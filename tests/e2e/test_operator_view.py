"""What an operator sees, on the real stack: extra links, failure notifications, OpenLineage events.

Three runs, triggered together, serve every test of the module:

* one successful ``factory_demo`` run: the train task's "Slurm job" / "Slurm job log" links and the
  export task's "Model card" link (``GET .../taskInstances/{task}/links``) open plugin pages that
  answer 401 without a login, show the job Slurm ran (sacct over the tenant's SSH login), its log
  and the published card to the tenant, and 404 to another tenant; its OpenLineage START/COMPLETE
  events, sent to a receiver this module runs on the port ``[openlineage] transport`` names, name
  the raw object, the dataset version and the model version.
* one ``factory_demo`` run and one ``factory_acme`` run that fail at validate (a hyperparameter
  out of the recipe's range): a real SMTP server (aiosmtpd) on the port of the ``aifactory_smtp``
  connection receives exactly one mail for demo's run, to demo's address, naming the DAG, run,
  task and error and holding no secret; acme's failure goes to acme's address only.
"""

from __future__ import annotations

import configparser
import email
import email.policy
import json
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from faults import wait_for

from aifactory.local.airflow_api import AirflowClient
from aifactory.platform.secrets import ConnectionStore
from aifactory.tenants import load_tenant

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DEMO, ACME = load_tenant("demo"), load_tenant("acme")
IRIS = (REPO / "include/sample_data/iris.csv").read_bytes()
TOKEN = secrets.token_hex(4)


# -------------------------------------------------------------------------------------------------
# the receivers
# -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lineage_events() -> Iterator[list[dict[str, Any]]]:
    """An OpenLineage HTTP receiver on the URL airflow.cfg's transport names; yields what it got."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "airflow.cfg")
    transport = json.loads(cfg["openlineage"]["transport"])
    url = urlsplit(transport["url"])
    path = "/" + transport["endpoint"].lstrip("/")
    events: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == path:
                events.append(json.loads(body))
            self.send_response(200 if self.path == path else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((url.hostname, url.port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield events
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def mails(stack_env) -> Iterator[list[email.message.EmailMessage]]:
    """A real SMTP server (aiosmtpd) on the host and port of the connection demo's target names."""
    from aiosmtpd.controller import Controller

    (target,) = DEMO.notifications
    conn = ConnectionStore(Path(stack_env["AIFP_SECRETS_DIR"])).get(target.conn_id)
    assert conn is not None, f"onboarding wrote no connection {target.conn_id} (make onboard)"
    received: list[email.message.EmailMessage] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
            received.append(message)
            return "250 OK"

    controller = Controller(Handler(), hostname=conn["host"], port=int(conn["port"]))
    controller.start()
    yield received
    controller.stop()


# -------------------------------------------------------------------------------------------------
# the three runs
# -------------------------------------------------------------------------------------------------

def _conf(spec: Any, s3: Any, **hyperparameters: Any) -> dict[str, Any]:
    key = f"{spec.tenant}/raw/operator-view-{TOKEN}.csv"
    s3.put_object(Bucket=spec.bucket, Key=key, Body=IRIS)
    conf = {**spec.defaults, "dataset_uri": f"s3://{spec.bucket}/{key}"}
    return {**conf, "hyperparameters": {**conf["hyperparameters"], **hyperparameters}}


@pytest.fixture(scope="module")
def runs(api: AirflowClient, s3_client, lineage_events, mails) -> dict[str, dict[str, Any]]:
    """``{"good": run, "demo_failed": run, "acme_failed": run}``, all finished."""
    acme_paused = api.wait_for_dag("factory_acme")["is_paused"]  # other suites find it as they left it
    api.unpause("factory_acme")
    try:
        triggered = {
            "good": ("factory_demo", _conf(DEMO, s3_client, epochs=5)),
            "demo_failed": ("factory_demo", _conf(DEMO, s3_client, epochs=0)),  # recipe: minimum 1
            "acme_failed": ("factory_acme", _conf(ACME, s3_client, epochs=0)),
        }
        ids = {name: api.trigger(dag, conf, run_id=f"e2e_opview_{name}_{TOKEN}")["dag_run_id"]
               for name, (dag, conf) in triggered.items()}
        with ThreadPoolExecutor(3) as pool:
            done = {name: pool.submit(api.wait_for_run, triggered[name][0], run_id, 900)
                    for name, run_id in ids.items()}
            finished = {name: future.result() for name, future in done.items()}
    finally:
        if acme_paused:
            api.pause("factory_acme")
    assert finished["good"]["state"] == "success", finished["good"]
    assert finished["demo_failed"]["state"] == finished["acme_failed"]["state"] == "failed"
    return finished


# -------------------------------------------------------------------------------------------------
# extra links
# -------------------------------------------------------------------------------------------------

def _get(stack_env, path: str, token: str | None, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(stack_env["AIFP_AIRFLOW_URL"].rstrip("/") + path, headers=headers, timeout=60,
                     follow_redirects=True, **kwargs)


def test_links_open_the_job_its_log_and_the_card_for_the_tenant_only(api, api_as, runs, stack_env, tenant_ssh):
    run_id = runs["good"]["dag_run_id"]
    train, export = api.xcom("factory_demo", run_id, "train"), api.xcom("factory_demo", run_id, "export")
    train_links = api.extra_links("factory_demo", run_id, "train")
    export_links = api.extra_links("factory_demo", run_id, "export")
    assert train_links["Slurm job"] and train_links["Slurm job log"] and not train_links["Model card"]
    assert export_links["Model card"] and not export_links["Slurm job"]
    assert not any(api.extra_links("factory_demo", run_id, "ingest").values())

    demo, acme = api_as("demo").token(), api_as("acme").token()
    for link in (train_links["Slurm job"], train_links["Slurm job log"], export_links["Model card"]):
        assert _get(stack_env, link, None).status_code == 401
        assert _get(stack_env, link, acme).status_code == 404  # another tenant's run: as if absent

    job = _get(stack_env, train_links["Slurm job"], demo)
    assert job.status_code == 200, job.text
    page = job.json()
    assert (page["job_id"], page["state"], page["account"]) == (train["job_id"], "COMPLETED", DEMO.slurm_account)
    assert page["log_path"] == train["log_path"]
    log = _get(stack_env, train_links["Slurm job log"], demo)
    assert log.status_code == 200 and log.text.strip(), log.text
    card = _get(stack_env, export_links["Model card"], demo)
    assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
    assert export["version"] in card.text and export["model"] in card.text

    # a tenant asking for another account's job under its own name, or another tenant's card: 404
    _, out, _ = tenant_ssh("acme").exec_command(
        f"sbatch --parsable --account={ACME.slurm_account} --partition={ACME.partitions[0]} --time=1 "
        "--output=/dev/null --wrap=true")
    acme_job = out.read().decode().strip().split(";")[0]
    assert acme_job.isdigit(), acme_job
    assert _get(stack_env, f"/aifactory/tenants/demo/jobs/{acme_job}", demo).status_code == 404
    assert _get(stack_env, f"/aifactory/tenants/acme/jobs/{acme_job}", demo).status_code == 404
    card_path = f"/aifactory/tenants/demo/models/{export['model']}/{export['version']}/card"
    assert _get(stack_env, card_path, demo).status_code == 200
    assert _get(stack_env, card_path.replace("/demo/", "/acme/"), acme).status_code == 404
    assert _get(stack_env, card_path.replace("/demo/", "/acme/", 1), demo).status_code == 404


# -------------------------------------------------------------------------------------------------
# OpenLineage
# -------------------------------------------------------------------------------------------------

def _task_events(events: list[dict[str, Any]], run_id: str, task_id: str) -> dict[str, dict[str, Any]]:
    """``{eventType: event}`` of one task of one run (the run id is in the events' Airflow facets)."""
    return {e["eventType"]: e for e in events
            if e.get("job", {}).get("name") == f"factory_demo.{task_id}" and run_id in json.dumps(e)}


def _names(datasets: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(d["namespace"], d["name"]) for d in datasets}


def test_lineage_names_the_raw_object_the_dataset_version_and_the_model_version(api, runs, lineage_events):
    run_id = runs["good"]["dag_run_id"]
    ingest, export = api.xcom("factory_demo", run_id, "ingest"), api.xcom("factory_demo", run_id, "export")
    raw = ("s3://aifactory", f"demo/raw/operator-view-{TOKEN}.csv")
    version = ("s3://aifactory", ingest["prefix"].rstrip("/"))
    model = ("s3://aifactory", f"demo/models/{export['model']}/{export['version']}")
    events = wait_for(lambda: _task_events(lineage_events, run_id, "export").get("COMPLETE") and lineage_events,
                      60, "the export task's COMPLETE event")
    ingest_events = _task_events(events, run_id, "ingest")
    export_events = _task_events(events, run_id, "export")
    assert {"START", "COMPLETE"} <= set(ingest_events) and {"START", "COMPLETE"} <= set(export_events)
    assert raw in _names(ingest_events["START"]["inputs"])
    assert raw in _names(ingest_events["COMPLETE"]["inputs"])
    assert version in _names(ingest_events["COMPLETE"]["outputs"])
    assert version in _names(export_events["COMPLETE"]["inputs"])
    assert model in _names(export_events["COMPLETE"]["outputs"])
    train = _task_events(events, run_id, "train")
    assert "COMPLETE" in train and train["COMPLETE"]["outputs"], train


# -------------------------------------------------------------------------------------------------
# failure notifications
# -------------------------------------------------------------------------------------------------

def _about(messages: list[email.message.EmailMessage], run_id: str) -> list[email.message.EmailMessage]:
    return [m for m in messages if run_id in m["Subject"]]


def test_a_failed_run_mails_its_own_tenant_once_with_no_secret(runs, mails, stack_env):
    demo_run, acme_run = runs["demo_failed"]["dag_run_id"], runs["acme_failed"]["dag_run_id"]
    wait_for(lambda: _about(mails, demo_run) and _about(mails, acme_run), 90, "the mails of both failed runs")
    time.sleep(2)  # a second mail for the same failure would arrive right behind the first
    (mail,) = _about(mails, demo_run)
    assert mail["X-Envelope-To"] == "ops@demo.example"
    body = mail.get_body(("html", "plain")).get_content()
    for word in ("factory_demo", demo_run, "validate", "epochs", "InputError"):
        assert word in mail["Subject"] + body, (word, body[:2000])
    assert not _about(mails, runs["good"]["dag_run_id"])
    # acme's failure went to acme's address, and nothing of acme's reached demo's
    assert [m["X-Envelope-To"] for m in _about(mails, acme_run)] == ["ops@acme.example"]
    assert not [m for m in mails if "ops@demo.example" in m["X-Envelope-To"] and "factory_acme" in m["Subject"]]
    # no secret: the Airflow secrets, the tenant's S3 secret key and SSH private key
    secrets_dir = Path(stack_env["AIFP_SECRETS_DIR"])
    store = ConnectionStore(secrets_dir)
    found = [store.get(DEMO.identity.s3_conn_id)["password"]]
    found += [(secrets_dir / name).read_text().strip() for name in ("fernet_key", "jwt_secret", "api_secret_key")]
    key = (secrets_dir / "ssh" / "demo" / "id_ed25519").read_text()
    found += [line for line in key.splitlines() if len(line) > 40]
    text = mail.as_string()
    assert [s[:6] for s in found if s and s in text] == []
