"""Twenty pipeline runs at once on the Celery topology (``make up EXECUTOR=celery``), natively.

Triggers ``--runs`` runs of the tenants' pipeline DAGs (round robin over the tenant specs, each on
its own copy of iris, one epoch) back to back through the REST API, then waits for all of them.
Each DAG runs at most ``max_active_runs`` (2) at a time and the workers hold 8 task slots in all,
so the runs queue: ``wall_s`` is from the first trigger to the last run's end. Duplicates are
counted from Slurm's own accounting: ``sacct`` by each run's deterministic train job name; a run
with more than one job counts each extra one.

Last line (JSON): ``runs``, ``succeeded``, ``failed``, ``wall_s``, ``duplicate_jobs``,
``executor``. Not part of ``make test``; it loads the stack for several minutes.

    make up EXECUTOR=celery && .venv/bin/python bench/concurrency.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, emit, machine_note, s3_client, stack_env  # noqa: E402


def jobs_by_name(names: list[str]) -> dict[str, int]:
    """How many Slurm jobs carry each name (sacct, the last day, allocations only)."""
    out = subprocess.run(["sacct", "-n", "-X", "--parsable2", "-S", "now-1days", f"--name={','.join(names)}",
                          "-o", "JobName%200"], capture_output=True, text=True, check=True).stdout
    counts = dict.fromkeys(names, 0)
    for line in out.splitlines():
        if line.strip() in counts:
            counts[line.strip()] += 1
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for all runs")
    args = ap.parse_args()
    env = stack_env()
    from aifactory import layout
    from aifactory.hpc.slurm import job_name
    from aifactory.local.airflow_api import AirflowClient
    from aifactory.tenants import good_tenants

    executor = (Path(env["AIFP_STATE_DIR"]) / "executor").read_text().strip()
    if executor != "celery":
        print(f"the stack runs the {executor} executor; this bench measures the Celery topology: "
              "make up EXECUTOR=celery (make up goes back)", file=sys.stderr)
        return 2
    specs = list(good_tenants())
    api = AirflowClient.login(env=env)
    s3 = s3_client(env)
    body = (REPO / "include" / "sample_data" / "iris.csv").read_bytes()
    plans = []
    for i in range(args.runs):
        spec = specs[i % len(specs)]
        dag_id = layout.pipeline_dag_id(spec.tenant)
        key = f"{spec.tenant}/raw/bench/concurrency-{time.time_ns()}-{i}.csv"
        s3.put_object(Bucket=spec.bucket, Key=key, Body=body)
        conf = {**spec.defaults, "dataset_uri": layout.s3_uri(spec.bucket, key), "time_limit_minutes": 10,
                "hyperparameters": {**spec.defaults["hyperparameters"], "epochs": 1}}
        plans.append((spec, dag_id, conf))
    for dag_id in {d for _, d, _ in plans}:
        api.wait_for_dag(dag_id)
        api.unpause(dag_id)
    print(f"{args.runs} runs over {', '.join(sorted({d for _, d, _ in plans}))}; {machine_note()}", flush=True)

    started = time.monotonic()
    runs = [(spec, dag_id, api.trigger(dag_id, conf)["dag_run_id"]) for spec, dag_id, conf in plans]
    print(f"triggered {len(runs)} runs in {time.monotonic() - started:.1f}s", flush=True)

    def wait(item: tuple) -> str:
        _, dag_id, run_id = item
        client = AirflowClient.login(env=env)  # one client per thread
        return client.wait_for_run(dag_id, run_id, timeout=args.timeout, poll_s=5)["state"]  # 20 waiters: light on the api-server

    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        states = list(pool.map(wait, runs))
    wall = time.monotonic() - started
    names = [job_name(spec.tenant, dag_id, run_id, "train", -1) for spec, dag_id, run_id in runs]
    counts = jobs_by_name(names)
    for (_, dag_id, run_id), state, name in zip(runs, states, names, strict=True):
        print(f"  {dag_id:<16} {run_id:<60} {state:<8} jobs={counts[name]}", flush=True)
    emit({"runs": len(runs), "succeeded": states.count("success"), "failed": len(runs) - states.count("success"),
          "wall_s": round(wall, 1), "duplicate_jobs": sum(max(0, n - 1) for n in counts.values()),
          "executor": executor})
    return 0


if __name__ == "__main__":
    sys.exit(main())
