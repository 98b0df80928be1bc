"""A startup's own training code, end to end through the REST API to a published model.

The sample code folder (include/sample_data/own_code: a softmax regression that imports the
startup's own library from a locked wheel) is uploaded to the tenant's code area. Two runs of the
same code start together: one builds the environment of its lock file on the cluster, the other
waits for that build and reuses it (the logs say which). A run of the code with a changed lock file
builds a new environment. Code with a syntax error stops in the validate task, naming the file and
line, before anything reaches Slurm.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.hpc.slurm import job_name
from aifactory.tenants import load_cluster, load_tenant

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "include" / "sample_data" / "own_code"))
make_code = __import__("make_code")
DAG_ID = "factory_demo"
SPEC = load_tenant("demo")
HP = {"label_column": "species", "feature_columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"]}
ENV_LINE = re.compile(r"Python environment (env-[0-9a-f]{16}) (built|reused)")


def _upload_code(s3, folder: Path) -> str:
    prefix = f"{SPEC.tenant}/code/{folder.name}/"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.put_object(Bucket=SPEC.bucket, Key=prefix + path.relative_to(folder).as_posix(), Body=path.read_bytes())
    return f"s3://{SPEC.bucket}/{prefix}"


def _dataset(s3) -> str:
    key = f"{SPEC.tenant}/raw/e2e/own-code-{secrets.token_hex(4)}.csv"
    s3.put_object(Bucket=SPEC.bucket, Key=key, Body=(REPO / "include/sample_data/iris.csv").read_bytes())
    return f"s3://{SPEC.bucket}/{key}"


def _env(api, run_id: str) -> tuple[str, str, str]:
    log = api.task_log(DAG_ID, run_id, "train")
    found = ENV_LINE.findall(log)
    assert len(found) == 1, found
    return found[0][0], found[0][1], log


def test_own_code_trains_to_a_published_model_with_one_environment_per_lock(api, s3_client, tmp_path):
    tag = secrets.token_hex(3)
    patch = secrets.randbelow(10**6)  # a fresh lock (and so a fresh environment) every time the test runs
    version = f"0.1.{patch}"
    first = make_code.build(tmp_path / "a", version=version, name=f"iris-softmax-{tag}")
    changed = make_code.build(tmp_path / "b", version=f"0.2.{patch}", name=f"iris-softmax-{tag}-b")
    conf = {"dataset_uri": _dataset(s3_client), "recipe": "own-code", "hyperparameters": HP}
    code_a, code_b = _upload_code(s3_client, first), _upload_code(s3_client, changed)

    together = [api.trigger(DAG_ID, {**conf, "code_uri": code_a})["dag_run_id"] for _ in range(2)]
    for run_id in together:
        states = {t["task_id"]: t["state"] for t in api.task_instances(DAG_ID, run_id)} \
            if api.wait_for_run(DAG_ID, run_id, timeout=900)["state"] != "success" else {}
        assert not states, states
    envs = [_env(api, run_id) for run_id in together]
    assert {e[0] for e in envs} == {envs[0][0]}  # one environment for one lock file
    assert sorted(e[1] for e in envs) == ["built", "reused"], [e[1] for e in envs]  # built once, then reused

    # the job ran the code's own environment, as the tenant, and the model was published
    run_id = together[0]
    train = api.xcom(DAG_ID, run_id, "train")
    env_dir = layout.env_dir(SPEC.areas(load_cluster(SPEC.cluster)), envs[0][0])  # in the project area
    assert f"tenant_features {version} from {env_dir}/" in envs[0][2]
    export = api.xcom(DAG_ID, run_id, "export")
    assert export["model_uri"].startswith(f"s3://{SPEC.bucket}/{SPEC.tenant}/models/")
    assert export["metrics"]["test_accuracy"] >= 0.8 and export["metrics"]["tenant_features"] == version
    prefix = export["model_uri"][len(f"s3://{SPEC.bucket}/"):]
    card = s3_client.get_object(Bucket=SPEC.bucket, Key=prefix + "MODEL_CARD.md")["Body"].read().decode()
    assert "A linear model: it separates what a hyperplane separates" in card  # the code's own model_card
    name = job_name(SPEC.tenant, DAG_ID, run_id, "train", -1)
    users = subprocess.run(["sacct", "-n", "-X", "-P", "-a", "-S", "now-1days", f"--name={name}", "-o", "User"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert users == [SPEC.identity.unix_user] and str(train["job_id"])

    # a changed lock file: a new environment
    run_id = api.trigger(DAG_ID, {**conf, "code_uri": code_b})["dag_run_id"]
    assert api.wait_for_run(DAG_ID, run_id, timeout=900)["state"] == "success"
    env_b, how, _ = _env(api, run_id)
    assert how == "built" and env_b != envs[0][0]


def test_code_with_a_syntax_error_stops_before_slurm_naming_the_file_and_line(api, s3_client, tmp_path):
    folder = make_code.build(tmp_path, name=f"broken-{secrets.token_hex(3)}")
    (folder / "train.py").write_text((folder / "train.py").read_text() + "\ndef oops(:\n")
    code_uri = _upload_code(s3_client, folder)
    run_id = api.trigger(DAG_ID, {"dataset_uri": _dataset(s3_client), "recipe": "own-code", "code_uri": code_uri,
                                  "hyperparameters": HP})["dag_run_id"]
    assert api.wait_for_run(DAG_ID, run_id, timeout=300)["state"] == "failed"
    states = {t["task_id"]: t["state"] for t in api.task_instances(DAG_ID, run_id)}
    assert states["validate"] == "failed" and states.get("train") in (None, "upstream_failed"), states
    log = api.task_log(DAG_ID, run_id, "validate")
    lines = (folder / "train.py").read_text().splitlines()
    assert f"{code_uri}train.py line {len(lines)}: invalid syntax" in log, log[-2000:]
