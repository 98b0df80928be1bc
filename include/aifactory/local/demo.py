"""``make demo``: upload the demo dataset, trigger ``factory_demo`` through the REST API, report.

The run goes through exactly the path a startup's click on the UI's trigger button takes
(``POST /api/v2/dags/{dag_id}/dagRuns``); the scheduler, the workers and the triggerer of the
local stack do the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from aifactory.data.s3 import make_client, parse_s3_uri
from aifactory.layout import PLATFORM_LOGIN, pipeline_dag_id
from aifactory.local.airflow_api import AirflowClient
from aifactory.local.localstack import REPO, airflow_password, read_env_file
from aifactory.tenants import load_tenant

STAGES = ["validate", "ingest", "quality", "stage", "train", "export"]


def upload_sample(env: dict[str, str], dataset_uri: str, sample: Path) -> None:
    s3 = make_client(endpoint_url=env["AIFP_S3_ENDPOINT"], access_key=env["AWS_ACCESS_KEY_ID"],
                     secret_key=env["AWS_SECRET_ACCESS_KEY"])
    bucket, key = parse_s3_uri(dataset_uri)
    s3.put_object(Bucket=bucket, Key=key, Body=sample.read_bytes())
    print(f"uploaded {sample.relative_to(REPO)} to {dataset_uri}")


def run_pipeline(client: AirflowClient, tenant: str, conf: dict[str, Any], timeout: float) -> dict[str, Any]:
    dag_id = pipeline_dag_id(tenant)
    client.wait_for_dag(dag_id)
    client.unpause(dag_id)
    run = client.trigger(dag_id, conf)
    run_id = run["dag_run_id"]
    print(f"triggered {dag_id}: run id {run_id}")
    started = time.monotonic()
    final = client.wait_for_run(dag_id, run_id, timeout=timeout,
                                progress=lambda line: print(f"  [{time.monotonic() - started:5.0f}s] {line}"))
    states = {t["task_id"]: t["state"] for t in client.task_instances(dag_id, run_id)}
    result: dict[str, Any] = {"dag_id": dag_id, "run_id": run_id, "state": final["state"], "stages": states}
    if states.get("train") == "success":
        result["train"] = client.xcom(dag_id, run_id, "train")
    if states.get("export") == "success":
        result["export"] = client.xcom(dag_id, run_id, "export")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tenant", default="demo")
    ap.add_argument("--sample", type=Path, default=REPO / "include" / "sample_data" / "iris.csv")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args(argv)

    env = read_env_file()
    spec = load_tenant(args.tenant)
    conf = dict(spec.defaults)
    upload_sample(env, conf["dataset_uri"], args.sample)
    client = AirflowClient.login(spec.airflow_users[0] if spec.airflow_users else PLATFORM_LOGIN, env)
    result = run_pipeline(client, args.tenant, conf, args.timeout)

    print()
    print(f"run id      {result['run_id']}  ({result['state']})")
    for stage in STAGES:
        print(f"  {stage:<9} {result['stages'].get(stage)}")
    if "train" in result:
        t = result["train"]
        print(f"Slurm job   {t.get('job_id')} ({t.get('state')}), account {spec.slurm_account}")
    if "export" in result:
        e = result["export"]
        print(f"model URI   {e['model_uri']}")
        print(f"metrics     {json.dumps(e['metrics'], sort_keys=True)}")
    print(f"Airflow UI  {env['AIFP_AIRFLOW_URL']}/dags/{result['dag_id']}/runs/{result['run_id']}"
          f"  (login: {client.username} / {airflow_password(env, client.username)})")
    if result["state"] != "success":
        failed = [s for s, st in result["stages"].items() if st not in ("success", "skipped")]
        print(f"\nthe run did not succeed; failed or unfinished stages: {failed}. "
              f"Open the UI above, or read the logs under {env['AIRFLOW_HOME']}/logs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
