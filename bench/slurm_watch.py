"""How much load does watching many Slurm jobs put on the cluster and on Airflow?

Triggers the ``platform_slurm_probe_<tenant>`` DAG of the running local stack with ``--jobs``
probe jobs (a mapped SlurmJobOperator: each submits one job and defers). While the jobs pend and
run, it samples once per poll interval:

- the poll commands that reached the cluster, from the triggerer's own log (one line per command:
  how many jobs it covered, whether it ran ``squeue`` and ``sacct``, and which SSH connection of the
  triggerer's per-cluster poller carried it);
- SSH logins accepted by the cluster's sshd (all of them: the workers' submissions included);
- worker slots held by probe tasks (task instances ``running``) against those ``deferred``.

Figures (last line, JSON): ``jobs``, ``queries_per_interval_max`` (poll commands started within one
poll interval), ``squeue_calls_per_interval_max``, ``sacct_calls_per_interval_max``,
``ssh_connections_max`` (connections one triggerer's poller opened to the cluster),
``worker_slots_held_max`` (running probe tasks whose Slurm job is still pending or running, once
every probe task had been submitted: slots held *while watching*), ``worker_slots_held_max_submit_phase``,
``worker_slots_finishing_max`` (tasks resumed after their job ended), ``interval_s``, ``wall_s``.

    .venv/bin/python bench/slurm_watch.py --jobs 50 --seconds 20
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, machine_note, print_table, stack_env  # noqa: E402

POLL_LINE = re.compile(
    r"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z?.*polled (?P<jobs>\d+) job\(s\) on (?P<cluster>\S+) in one command "
    r"in (?P<secs>[\d.]+)s \(squeue (?P<squeue>\d+), sacct (?P<sacct>\d+), connection #(?P<conn>\d+)\)"
)


def new_lines(path: Path, offset: int) -> tuple[list[str], int]:
    if not path.exists():
        return [], offset
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    return data.decode("utf-8", "replace").splitlines(), offset + len(data)


def active_job_names(names: set[str]) -> set[str]:
    """Which of these Slurm jobs are still pending or running (asked of the cluster itself)."""
    if not names:
        return set()
    out = subprocess.run(["squeue", "-h", f"--name={','.join(sorted(names))}", "-t",
                          "PENDING,CONFIGURING,RUNNING,COMPLETING,REQUEUED,SUSPENDED", "-o", "%j"],
                         capture_output=True, text=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=20, help="how long each probe job runs")
    ap.add_argument("--tenant", default="demo")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()

    env = stack_env()
    from datetime import datetime

    from aifactory.hpc.slurm import job_name
    from aifactory.layout import probe_dag_id
    from aifactory.local.airflow_api import AirflowClient
    from aifactory.local.localstack import state_dir
    from aifactory.tenants import load_cluster, load_tenant

    spec = load_tenant(args.tenant)
    cluster = load_cluster(spec.cluster)
    interval = cluster.effective_poll_interval_s
    log_dir = state_dir() / "log"
    triggerer_log, sshd_log = log_dir / "airflow-triggerer.log", log_dir / "sshd.log"
    _, trig_off = new_lines(triggerer_log, 0)
    _, sshd_off = new_lines(sshd_log, 0)

    api = AirflowClient.login(env=env)
    dag_id = probe_dag_id(spec.tenant)
    api.wait_for_dag(dag_id)
    api.unpause(dag_id)
    print(f"{machine_note()}; cluster {cluster.name}: poll interval {interval:.0f}s", flush=True)
    run_id = api.trigger(dag_id, {"jobs": args.jobs, "seconds": args.seconds})["dag_run_id"]
    print(f"triggered {dag_id} run {run_id}: {args.jobs} probe jobs of {args.seconds}s", flush=True)

    rows = [("t_s", "slots watching", "slots finishing", "deferred", "done", "poll cmds", "squeue", "sacct", "jobs/poll",
             "poller conn #", "sshd logins")]
    polls: list[dict] = []
    started = time.monotonic()
    slots_watch = slots_submit = slots_finishing = 0
    submitted_all = False
    while True:
        time.sleep(interval)
        tis = [t for t in api.task_instances(dag_id, run_id) if t["task_id"] == "probe"]
        states = [t["state"] for t in tis]
        # A slot held while *watching* is a running task whose Slurm job is still active. A task
        # that runs after its job ended is finishing (execute_complete: marker check, log tail).
        running_names = {job_name(spec.tenant, dag_id, run_id, "probe", t["map_index"])
                         for t in tis if t["state"] == "running"}
        running = len(running_names & active_job_names(running_names))
        finishing = states.count("running") - running
        deferred = states.count("deferred")
        done = sum(s in ("success", "failed", "upstream_failed") for s in states)
        if len(tis) >= args.jobs and all(s in ("deferred", "success", "failed", "running") for s in states) \
                and deferred + done == len(tis):
            submitted_all = True
        slots_finishing = max(slots_finishing, finishing)
        if submitted_all:
            slots_watch = max(slots_watch, running)
        else:
            slots_submit = max(slots_submit, running)
        lines, trig_off = new_lines(triggerer_log, trig_off)
        tick = [m.groupdict() for m in map(POLL_LINE.search, lines) if m]
        polls += tick
        logins, sshd_off = new_lines(sshd_log, sshd_off)
        rows.append((
            f"{time.monotonic() - started:.0f}", str(running), str(finishing), str(deferred), str(done),
            str(len(tick)),
            str(sum(int(t["squeue"]) for t in tick)), str(sum(int(t["sacct"]) for t in tick)),
            "/".join(t["jobs"] for t in tick) or "-", "/".join(t["conn"] for t in tick) or "-",
            str(sum("Accepted publickey" in line for line in logins)),
        ))
        print("  ".join(rows[-1]), flush=True)
        run = api.run(dag_id, run_id)
        if run["state"] in ("success", "failed") or time.monotonic() - started > args.timeout:
            break
    wall = time.monotonic() - started
    print()
    print_table(rows)

    # Poll commands whose start (log time minus duration) falls in one poll interval. The poller
    # starts a poll exactly one interval after the previous one started, so the window is the
    # interval less 50 ms of timer and log-timestamp jitter.
    window = interval - 0.05
    calls = sorted((datetime.fromisoformat(p["ts"]).timestamp() - float(p["secs"]), p) for p in polls)
    starts = [t for t, _ in calls]
    gaps = [b - a for a, b in pairwise(starts)]

    def per_window_of(key: str | None) -> int:
        return max([sum(1 if key is None else int(p[key]) for t, p in calls if a <= t < a + window)
                    for a in starts] or [0])

    figures = {
        "jobs": args.jobs,
        "run_state": run["state"],
        "interval_s": interval,
        "wall_s": round(wall, 1),
        "poll_commands": len(polls),
        "jobs_per_poll_max": max([int(p["jobs"]) for p in polls] or [0]),
        "queries_per_interval_max": per_window_of(None),
        "min_seconds_between_polls": round(min(gaps), 3) if gaps else None,
        "squeue_calls_per_interval_max": per_window_of("squeue"),
        "sacct_calls_per_interval_max": per_window_of("sacct"),
        "ssh_connections_max": max([int(p["conn"]) for p in polls] or [0]),
        "worker_slots_held_max": slots_watch,
        "worker_slots_held_max_submit_phase": slots_submit,
        "worker_slots_finishing_max": slots_finishing,
    }
    print(f"\n{run['state']}: {len(polls)} poll commands for {args.jobs} jobs in {wall:.0f}s "
          f"(at most {figures['jobs_per_poll_max']} jobs in one command)")
    emit(figures)
    return 0 if run["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
