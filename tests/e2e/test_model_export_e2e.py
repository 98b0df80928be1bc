"""Model export end to end, through Airflow's scheduler, triggered over REST on the real local stack.

* The exported ONNX model, downloaded from the S3 endpoint and run with ONNX Runtime on the
  held-out split (recomputed from the dataset version with the recipe's own split rule), gets the
  accuracy ``metrics.json`` reports - for a one-node and a two-node (DDP over srun) run.
* The two-node job ran one rank on each node (its Slurm log), and both runs publish the same files.
* The model card carries every field; an Asset event names the model version.
* A one-class label and a non-numeric feature are refused before any Slurm job is submitted, with a
  message naming the field.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aifactory.hpc.slurm import job_name
from aifactory.local.airflow_api import AirflowClient
from aifactory.models.modelcard import missing_fields
from aifactory.tenants import load_tenant

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "factory_demo"
SPEC = load_tenant("demo")
IRIS = (REPO / "include/sample_data/iris.csv").read_bytes()



def _recipe_module():
    """The recipe's data module (its split rule), imported from its job bundle as on the cluster."""
    import tempfile

    from aifactory.models import bundle
    from aifactory.models.recipes import load_recipe

    run_dir = bundle.materialize(load_recipe(REPO / "include/recipes/tabular_classifier"),
                                 Path(tempfile.mkdtemp(prefix="aifp-e2e-bundle-")))
    spec = importlib.util.spec_from_file_location("tabular_data", run_dir / "tabular_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(run_dir))  # aifp_runtime beside it
    try:
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(run_dir))
    return module


def _upload(s3, body: bytes) -> str:
    key = f"demo/raw/e2e-model/{secrets.token_hex(4)}.csv"
    s3.put_object(Bucket=SPEC.bucket, Key=key, Body=body)
    return f"s3://{SPEC.bucket}/{key}"


def _run(api: AirflowClient, conf: dict) -> tuple[str, dict, dict[str, str]]:
    run_id = api.trigger(DAG_ID, conf)["dag_run_id"]
    run = api.wait_for_run(DAG_ID, run_id, timeout=900)
    return run_id, run, {t["task_id"]: t["state"] for t in api.task_instances(DAG_ID, run_id)}


def _failed_logs(api: AirflowClient, run_id: str, states: dict[str, str]) -> str:
    """Every try's log tail of each task that did not succeed, so that a red CI run says why."""
    parts = []
    for task, state in states.items():
        if state in ("success", "skipped"):
            continue
        for attempt in range(1, 4):
            try:
                log = api.task_log(DAG_ID, run_id, task, try_number=attempt)
            except Exception:  # no such try
                break
            parts.append(f"--- {task} ({state}) try {attempt} ---\n{log[-6000:]}")
    return "\n".join(parts)


def _get(s3, key: str) -> bytes:
    return s3.get_object(Bucket=SPEC.bucket, Key=key)["Body"].read()


def _heldout_accuracy_with_onnxruntime(s3, model_prefix: str, dataset_prefix: str, hp: dict) -> tuple[float, int]:
    """Download model.onnx and the dataset version; run ONNX Runtime on the held-out rows."""
    import numpy as np
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.parquet as pq

    config = json.loads(_get(s3, model_prefix + "model_config.json"))
    manifest = json.loads(_get(s3, dataset_prefix + "manifest.json"))
    shards = sorted(f["path"] for f in manifest["files"] if f["path"].endswith(".parquet"))
    table = pa.concat_tables([pq.read_table(io.BytesIO(_get(s3, dataset_prefix + p))) for p in shards])
    split = config["split"]
    mask = _recipe_module().test_mask(np.arange(table.num_rows), split["seed"], split["test_fraction"])
    x = np.column_stack([table.column(c).to_numpy().astype("float32") for c in config["feature_columns"]])[mask]
    labels = [v for v, m in zip(table.column(config["label_column"]).to_pylist(), mask, strict=True) if m]
    session = ort.InferenceSession(_get(s3, model_prefix + "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {config["onnx"]["input"]: x})[0]
    predicted = [config["classes"][i] for i in logits.argmax(axis=1)]
    correct = sum(p == t for p, t in zip(predicted, labels, strict=True))
    return correct / len(labels), len(labels)


def _slurm_log(ssh_client, path: str) -> str:
    _, stdout, _ = ssh_client.exec_command("cat -- " + path.replace("'", ""))
    return stdout.read().decode()


def test_onnx_model_reproduces_metrics_on_one_and_two_nodes(api, stack_env, s3_client, ssh_client):
    base = {**SPEC.defaults, "hyperparameters": {**SPEC.defaults["hyperparameters"], "epochs": 20}}
    confs = {1: {**base, "dataset_uri": _upload(s3_client, IRIS), "nodes": 1},
             2: {**base, "dataset_uri": _upload(s3_client, IRIS), "nodes": 2}}
    with ThreadPoolExecutor(2) as pool:  # max_active_runs=2: both runs go through the scheduler at once
        results = dict(zip(confs, pool.map(lambda c: _run(api, c), confs.values()), strict=True))

    published = {}
    for nodes, (run_id, run, states) in results.items():
        if run["state"] != "success":
            logs = _failed_logs(api, run_id, states)
            print(logs)  # in full under "Captured stdout call"
            errors = [line for line in logs.splitlines() if re.match(r"\w+(Error|Exception): ", line)]
            pytest.fail(f"{nodes} node(s): " + ", ".join(f"{t}={s}" for t, s in states.items())
                        + "\n" + "\n".join(errors[-6:]), pytrace=False)
        train = api.xcom(DAG_ID, run_id, "train")
        export = api.xcom(DAG_ID, run_id, "export")
        ingest = api.xcom(DAG_ID, run_id, "ingest")
        prefix = export["model_uri"][len(f"s3://{SPEC.bucket}/"):]
        metrics = json.loads(_get(s3_client, prefix + "metrics.json"))
        accuracy, n = _heldout_accuracy_with_onnxruntime(s3_client, prefix, ingest["prefix"], base["hyperparameters"])
        assert n == metrics["n_test"]
        assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-9), (nodes, accuracy, metrics)
        assert metrics["world_size"] == nodes and metrics["test_accuracy"] >= 0.8

        card = json.loads(_get(s3_client, prefix + "model_card.json"))
        assert missing_fields(card) == []
        assert card["slurm"]["job_ids"] == [train["job_id"]]
        assert card["dataset"]["manifest_sha256"] == ingest["manifest_sha256"]
        assert card["quality"]["verdict"] == "passed" and card["slurm"]["resources"]["nodes"] == nodes
        md = _get(s3_client, prefix + "MODEL_CARD.md").decode()
        for needle in (ingest["version"], ingest["manifest_sha256"], "**passed**", "`tabular_classifier`",
                       f"Slurm job id(s): {train['job_id']}", "CPU-hours:", "GPU-hours:", "test_accuracy",
                       card["code_version"], "ONNX Runtime reproduces"):
            assert needle in md, needle
        published[nodes] = {f["path"] for f in json.loads(_get(s3_client, prefix + "manifest.json"))["files"]}

        # the Asset event of this run names the model version
        events = api.asset_events(source_dag_id=DAG_ID, source_run_id=run_id)
        assert [e["extra"]["version"] for e in events] == [export["version"]], events
        assert events[0]["uri"] == f"s3://{SPEC.bucket}/demo/models/{export['model']}"

        if nodes == 2:
            log = _slurm_log(ssh_client, train["log_path"])
            ranks = dict(re.findall(r"^rank=(\d)/2 node=(\S+)", log, re.M))
            assert ranks == {"0": "n1", "1": "n2"}, log
            nodelist = subprocess.run(["sacct", "-n", "-X", "-P", "-j", str(train["job_id"]), "-o", "NodeList"],
                                      capture_output=True, text=True).stdout.strip()
            assert nodelist == "n[1-2]"
    assert published[1] == published[2] >= {"model.onnx", "model.safetensors", "model.pt", "MODEL_CARD.md"}


@pytest.mark.parametrize(
    ("case", "fragment"),
    [("one_class", "hyperparameters.label_column: column 'species'"), ("text_feature", "petal_width")],
)
def test_bad_data_is_refused_before_any_job(api, s3_client, case, fragment):
    lines = IRIS.decode().splitlines()
    header, rows = lines[0], lines[1:]
    if case == "one_class":
        body = "\n".join([header, *[r for r in rows if r.endswith("setosa")]]) + "\n"
    else:
        body = "\n".join([header, *[",".join(r.split(",")[:3] + [f"w{r.split(',')[3]}", r.split(",")[4]])
                                    for r in rows]]) + "\n"
    conf = {**SPEC.defaults, "dataset_uri": _upload(s3_client, body.encode())}
    run_id, run, states = _run(api, conf)
    assert run["state"] == "failed", states
    failed = [t for t, s in states.items() if s == "failed"]
    assert failed and failed[0] in ("quality", "train"), states
    assert states["export"] in ("upstream_failed", None)
    log = api.task_log(DAG_ID, run_id, failed[0])
    assert fragment in log, log[-3000:]
    # nothing reached Slurm
    name = job_name(SPEC.tenant, DAG_ID, run_id, "train", -1)
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-S", "now-1days", f"--name={name}", "-o", "JobID"],
                         capture_output=True, text=True).stdout.strip()
    assert out == ""
