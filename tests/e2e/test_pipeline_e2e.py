"""The whole pipeline through Airflow's scheduler, workers and triggerer (not ``dag.test()``),
triggered through the REST API exactly as the UI's trigger button does, on the real local stack."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.data.s3 import list_keys
from aifactory.hpc.slurm import job_name
from aifactory.local.airflow_api import AirflowAPIError, AirflowClient
from aifactory.tenants import load_cluster, load_tenant

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "factory_demo"
SPEC = load_tenant("demo")



def upload(s3, body: bytes, suffix: str = ".csv") -> str:
    key = f"demo/raw/e2e/{secrets.token_hex(4)}{suffix}"
    s3.put_object(Bucket=SPEC.bucket, Key=key, Body=body)
    return f"s3://{SPEC.bucket}/{key}"


def run_to_end(api: AirflowClient, conf: dict, timeout: float = 600) -> tuple[str, dict, dict[str, str]]:
    run_id = api.trigger(DAG_ID, conf)["dag_run_id"]
    run = api.wait_for_run(DAG_ID, run_id, timeout=timeout)
    states = {t["task_id"]: t["state"] for t in api.task_instances(DAG_ID, run_id)}
    return run_id, run, states


def sacct_jobs(stack_env, name: str) -> list[list[str]]:
    out = subprocess.run(
        ["sacct", "--noheader", "--parsable2", "-X", "-S", "now-1days", f"--name={name}", "-o", "JobID,Account,State"],
        capture_output=True, text=True, check=True,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def cert_logins(stack_env, sshd: str) -> int:
    """Logins of the demo tenant's user with a certificate, in one sshd's log (LogLevel VERBOSE)."""
    log = Path(stack_env["AIFP_STATE_DIR"]) / "log" / f"{sshd}.log"
    user = SPEC.identity.unix_user
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if f"Accepted publickey for {user} " in line and " ED25519-CERT " in line)


def test_demo_pipeline_end_to_end(api, stack_env, s3_client):
    conf = {**SPEC.defaults, "dataset_uri": upload(s3_client, (REPO / "include/sample_data/iris.csv").read_bytes())}
    before = {sshd: cert_logins(stack_env, sshd) for sshd in ("sshd", "sshd-dtn", "sshd-bastion")}
    run_id, run, states = run_to_end(api, conf)
    assert run["state"] == "success", states
    assert set(states.values()) == {"success"}

    # every stage that reaches the cluster went through the bastion (docs/ssh-logins.md): each
    # says so in its log, and each login at the login node came through a login at the bastion
    # bulk data (stage, export, the staged copy's check before sbatch) on the data-transfer node
    bastion = f"via [127.0.0.1]:{stack_env['AIFP_BASTION_PORT']} as {SPEC.identity.unix_user} (certificate)"
    login, dtn = f"[127.0.0.1]:{stack_env['AIFP_SSH_PORT']} {bastion}", f"[127.0.0.1]:{stack_env['AIFP_DTN_PORT']} {bastion}"
    logs = {stage: api.task_log(DAG_ID, run_id, stage) for stage in ("stage", "train", "export")}
    assert dtn in logs["stage"] and login not in logs["stage"] and dtn in logs["export"]
    assert login in logs["train"]  # sbatch on the login node
    made = {sshd: cert_logins(stack_env, sshd) - n for sshd, n in before.items()}
    assert made["sshd"] >= 1 and made["sshd-dtn"] >= 2, made
    assert made["sshd"] + made["sshd-dtn"] <= made["sshd-bastion"], made  # none straight to either

    train = api.xcom(DAG_ID, run_id, "train")
    export = api.xcom(DAG_ID, run_id, "export")
    # the staged copy on the tenant's scratch area, the run (checkpoints, outputs) in its project area
    areas = SPEC.areas(load_cluster(SPEC.cluster))
    assert areas.project != areas.scratch
    assert layout.path_inside(api.xcom(DAG_ID, run_id, "stage")["remote_dir"], layout.hpc_datasets_dir(areas))
    assert layout.path_inside(train["output_dir"], layout.runs_dir(areas))
    # exactly one Slurm job for this run, under the tenant's account
    jobs = sacct_jobs(stack_env, job_name(SPEC.tenant, DAG_ID, run_id, "train", -1))
    assert [(j[0], j[1]) for j in jobs] == [(str(train["job_id"]), SPEC.slurm_account)]
    assert jobs[0][2] == "COMPLETED"

    # the published model: every file in the manifest exists with its size; metrics are real
    uri = export["model_uri"]
    assert uri.startswith(f"s3://{SPEC.bucket}/demo/models/") and uri.endswith("/")
    prefix = uri[len(f"s3://{SPEC.bucket}/"):]
    keys = set(list_keys(s3_client, SPEC.bucket, prefix))
    manifest = json.loads(s3_client.get_object(Bucket=SPEC.bucket, Key=prefix + "manifest.json")["Body"].read())
    for f in manifest["files"]:
        assert prefix + f["path"] in keys
        assert s3_client.head_object(Bucket=SPEC.bucket, Key=prefix + f["path"])["ContentLength"] == f["bytes"]
    metrics = json.loads(s3_client.get_object(Bucket=SPEC.bucket, Key=prefix + "metrics.json")["Body"].read())
    assert metrics == export["metrics"]
    assert metrics["test_accuracy"] >= 0.8
    card = s3_client.get_object(Bucket=SPEC.bucket, Key=prefix + "MODEL_CARD.md")["Body"].read().decode()
    assert str(train["job_id"]) in card and run_id in card


def failed_stage_log(api: AirflowClient, run_id: str, states: dict[str, str], stage: str) -> str:
    assert states[stage] == "failed", states
    # nothing after the failed stage ran
    order = ["validate", "ingest", "quality", "stage", "train", "export"]
    for later in order[order.index(stage) + 1:]:
        assert states[later] in ("upstream_failed", None), states
    return api.task_log(DAG_ID, run_id, stage)


@pytest.mark.parametrize(
    ("case", "stage", "message"),
    [
        ("missing_dataset", "ingest", "no object"),
        ("bad_csv", "ingest", "line"),
        ("missing_label", "quality", "no_such_label"),
    ],
)
def test_bad_input_fails_its_stage_and_publishes_nothing(api, s3_client, case, stage, message):
    conf = dict(SPEC.defaults)
    hp = dict(conf["hyperparameters"])
    if case == "missing_dataset":
        conf["dataset_uri"] = f"s3://{SPEC.bucket}/demo/raw/e2e/absent-{secrets.token_hex(3)}.csv"
    elif case == "bad_csv":
        conf["dataset_uri"] = upload(s3_client, b"a,b,species\n1,2,x\n3,4,5,6,7\n1,2,y\n")
    elif case == "missing_label":
        conf["dataset_uri"] = upload(s3_client, (REPO / "include/sample_data/iris.csv").read_bytes())
        hp["label_column"] = "no_such_label"
    conf["hyperparameters"] = hp
    before = set(list_keys(s3_client, SPEC.bucket, "demo/models/"))
    run_id, run, states = run_to_end(api, conf, timeout=300)
    assert run["state"] == "failed"
    log = failed_stage_log(api, run_id, states, stage)
    assert message in log
    assert set(list_keys(s3_client, SPEC.bucket, "demo/models/")) == before


def test_unknown_recipe_is_refused_before_any_side_effect(api, s3_client):
    conf = {**SPEC.defaults, "recipe": "no_such_recipe"}
    # the trigger form's Params reject it at the API ...
    with pytest.raises(AirflowAPIError, match="HTTP 400"):
        api.trigger(DAG_ID, conf)
