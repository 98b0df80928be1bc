"""Killing the export midway (SIGKILL, a real process) leaves no manifest.json; a rerun publishes one
complete version; a further rerun publishes nothing new. Also: the model card of a real training
run renders and carries every field, and export re-checks the ONNX model with ONNX Runtime."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.data.s3 import list_keys
from aifactory.hpc.remote import ParamikoShell, q
from aifactory.models import bundle
from aifactory.models.contract import parse_marker
from aifactory.models.export import CardContext, ExportError, export_model
from aifactory.models.modelcard import REQUIRED_FIELDS, missing_fields
from aifactory.models.recipes import load_recipe
from tests.conftest import tenant_areas

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BUCKET = "aifactory"
PYTHON = "/srv/aifactory/venv/bin/python"
RECIPE_DIR = REPO / "include/recipes/tabular_classifier"


@pytest.fixture(scope="module")
def trained(stack_env, ssh_client, test_tenant):
    """A real tabular_classifier run (no Slurm: the recipe runs as a plain process) on the HPC side,
    in the demo tenant's area, as its own login."""
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

    root = layout.run_dir(tenant_areas(test_tenant), f"itest-export-{secrets.token_hex(3)}")
    with ParamikoShell(ssh_client) as sh:
        sh.run("mkdir -p -m 0700 " + q(root + "/ds", root + "/run", f"{root}/run/{layout.RUNTIME_PACKAGE}"))
        local = Path(f"/tmp/aifp-{secrets.token_hex(3)}.parquet")
        pq.write_table(pc.read_csv(REPO / "include/sample_data/iris.csv"), local)
        sftp = sh.sftp_client()
        sftp.put(str(local), f"{root}/ds/part-00000.parquet")
        local.unlink()
        for local_file, remote in bundle.job_files(load_recipe(RECIPE_DIR)):
            sftp.put(str(local_file), f"{root}/run/{remote}")
        params = {"dataset_dir": f"{root}/ds", "output_dir": f"{root}/run/output", "hyperparameters": {
            "label_column": "species", "feature_columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
            "epochs": 20}}
        with sftp.open(f"{root}/run/params.json", "wb") as fh:
            fh.write(json.dumps(params).encode())
        rc, out, err = sh.run(f"cd {q(root + '/run')} && {PYTHON} train.py --params params.json", timeout=300)
        assert rc == 0, out + err
        yield f"{root}/run/output"
        sh.run("rm -rf -- " + q(root))


def _card(version: str) -> CardContext:
    return CardContext(
        tenant="itest", model="iris-tabular-classifier", version=version, dag_id="factory_itest", run_id="manual__k",
        recipe="tabular_classifier", hyperparameters={"epochs": 20},
        dataset={"name": "iris", "version": "v-1", "uri": "s3://aifactory/itest/datasets/iris/v-1/",
                 "manifest_sha256": "ab" * 32, "rows": 150},
        quality={"verdict": "passed", "expectations": 5, "failed": 0, "suite": "tabular_default"},
        slurm={"job_ids": ["7"], "state": "COMPLETED", "elapsed_s": 3, "cpu_hours": 0.001, "gpu_hours": 0.0,
               "alloc_tres": {"cpu": 1.0}, "resources": {"nodes": 1, "cpus_per_task": 1}},
        code_version="test",
    )


def test_card_carries_every_field_and_onnx_is_rechecked(s3_client, shell, trained):
    version = "v-" + secrets.token_hex(6)
    prefix = f"itest/models/iris-tabular-classifier/{version}/"
    logs: list[str] = []
    result = export_model(s3_client, shell, bucket=BUCKET, model_prefix=prefix, output_dir=trained,
                          card=_card(version), log=logs.append)
    assert result["published"] and any("re-checked with ONNX Runtime" in line for line in logs)
    keys = {k[len(prefix):] for k in list_keys(s3_client, BUCKET, prefix)}
    assert keys == {"model.pt", "model.safetensors", "model.onnx", "onnx_check.json", "model_config.json",
                    "metrics.json", "model_card.json", "MODEL_CARD.md", "manifest.json"}
    card = json.loads(s3_client.get_object(Bucket=BUCKET, Key=prefix + "model_card.json")["Body"].read())
    assert missing_fields(card) == []
    assert card["formats"] == {"onnx": "model.onnx", "pytorch": "model.pt", "safetensors": "model.safetensors"}
    assert card["onnx_check"]["export_recheck_max_abs_diff"] <= card["onnx_check"]["tolerance"]["atol"]
    md = s3_client.get_object(Bucket=BUCKET, Key=prefix + "MODEL_CARD.md")["Body"].read().decode()
    for needle in ("v-1", "ab" * 32, "**passed**", "`tabular_classifier`", '"epochs": 20', "`test`",
                   "Slurm job id(s): 7", "CPU-hours: 0.001", "GPU-hours: 0", "test_accuracy", "onnx: `model.onnx`",
                   "safetensors: `model.safetensors`", "ONNX Runtime reproduces PyTorch's logits within atol 0.0001"):
        assert needle in md, needle
    assert len(REQUIRED_FIELDS) >= 10


def test_tampered_onnx_check_is_refused(s3_client, shell, trained, tmp_path):
    # a copy of the outputs whose onnx_check.json claims other logits (marker updated to match)
    copy = trained.rsplit("/", 1)[0] + "/output-tampered"
    shell.run(f"rm -rf {q(copy)} && cp -r {q(trained)} {q(copy)}")
    sftp = shell.sftp_client()
    with sftp.open(f"{copy}/onnx_check.json", "rb") as fh:
        check = json.loads(fh.read())
    check["probe"]["logits"][0][0] += 1.0
    data = json.dumps(check).encode()
    with sftp.open(f"{copy}/onnx_check.json", "wb") as fh:
        fh.write(data)
    with sftp.open(f"{copy}/{layout.COMPLETION_MARKER}", "rb") as fh:
        marker = json.loads(fh.read())
    for entry in marker["files"]:
        if entry["path"] == "onnx_check.json":
            entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    parse_marker(marker, output_dir=copy)  # still a valid marker: only the logits lie
    with sftp.open(f"{copy}/{layout.COMPLETION_MARKER}", "wb") as fh:
        fh.write(json.dumps(marker).encode())
    prefix = f"itest/models/iris-tabular-classifier/v-{secrets.token_hex(6)}/"
    with pytest.raises(ExportError, match="model.onnx: ONNX Runtime .* differs"):
        export_model(s3_client, shell, bucket=BUCKET, model_prefix=prefix, output_dir=copy, card=_card("v-t"),
                     log=lambda m: None)
    assert not any(k.endswith("manifest.json") for k in list_keys(s3_client, BUCKET, prefix))


KILLABLE = textwrap.dedent('''
    import json, sys, time
    import paramiko
    from aifactory.models.export import CardContext, export_model
    from aifactory.hpc.remote import ParamikoShell
    from aifactory.data.s3 import make_client
    a = json.loads(sys.argv[1])
    s3 = make_client(endpoint_url=a["endpoint"], access_key=a["key"], secret_key=a["secret"], region="us-east-1")
    c = paramiko.SSHClient(); c.load_host_keys(a["known_hosts"]); c.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.connect(a["host"], port=a["port"], username=a["user"], key_filename=a["ssh_key"], look_for_keys=False, allow_agent=False)
    def log(m):
        print(m, flush=True)
        if m.startswith("uploaded"):
            time.sleep(a["pause"])  # slow uploads down so that the test can kill us between two of them
    with ParamikoShell(c) as sh:
        export_model(s3, sh, bucket=a["bucket"], model_prefix=a["prefix"], output_dir=a["output_dir"],
                     card=CardContext(**a["card"]), log=log)
''')


def _run_export(stack_env, prefix: str, output_dir: str, card: CardContext, pause: float) -> subprocess.Popen:
    from aifactory.local.localstack import tenant_login

    user, key = tenant_login(stack_env, "demo")  # export runs as the tenant's own login
    args = {"endpoint": stack_env["AIFP_S3_ENDPOINT"], "key": stack_env["AWS_ACCESS_KEY_ID"],
            "secret": stack_env["AWS_SECRET_ACCESS_KEY"], "known_hosts": stack_env["AIFP_SSH_KNOWN_HOSTS"],
            "host": stack_env["AIFP_SSH_HOST"], "port": int(stack_env["AIFP_SSH_PORT"]),
            "user": user, "ssh_key": key, "bucket": BUCKET,
            "prefix": prefix, "output_dir": output_dir, "card": card.__dict__, "pause": pause}
    return subprocess.Popen([sys.executable, "-c", KILLABLE, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **stack_env})


def test_export_killed_midway_publishes_nothing_then_once(stack_env, s3_client, trained):
    version = "v-" + secrets.token_hex(6)
    prefix = f"itest/models/iris-tabular-classifier/{version}/"
    proc = _run_export(stack_env, prefix, trained, _card(version), pause=30)
    seen = []
    deadline = time.time() + 120
    for line in proc.stdout:  # wait for the 2nd upload, then SIGKILL (no cleanup can run)
        seen.append(line)
        if line.startswith("uploaded") and sum(s.startswith("uploaded") for s in seen) == 2:
            break
        assert time.time() < deadline, seen
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = set(list_keys(s3_client, BUCKET, prefix))
    assert len(partial) == 2 and prefix + "manifest.json" not in partial, partial

    rerun = _run_export(stack_env, prefix, trained, _card(version), pause=0)
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out
    assert "published s3://" in out
    manifest = json.loads(s3_client.get_object(Bucket=BUCKET, Key=prefix + "manifest.json")["Body"].read())
    for f in manifest["files"]:
        body = s3_client.get_object(Bucket=BUCKET, Key=prefix + f["path"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == f["sha256"]
    assert {prefix + f["path"] for f in manifest["files"]} | {prefix + "manifest.json"} == set(
        list_keys(s3_client, BUCKET, prefix))
    etag = s3_client.head_object(Bucket=BUCKET, Key=prefix + "manifest.json")["ETag"]
    before = {k: s3_client.head_object(Bucket=BUCKET, Key=k)["ETag"] for k in list_keys(s3_client, BUCKET, prefix)}

    again = _run_export(stack_env, prefix, trained, _card(version), pause=0)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "already published" in out and "uploaded" not in out, out
    assert s3_client.head_object(Bucket=BUCKET, Key=prefix + "manifest.json")["ETag"] == etag
    assert {k: s3_client.head_object(Bucket=BUCKET, Key=k)["ETag"] for k in list_keys(s3_client, BUCKET, prefix)} == before
