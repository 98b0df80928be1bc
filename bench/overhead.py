"""How much of a pipeline run is Airflow's own overhead, and how much is the stages' work?

Triggers ``--runs`` runs of one tenant's pipeline (default the demo tenant with its defaults: the
iris sample), one after another through the REST API as the UI does, on the running local stack
and its scheduler, waits for each, and reads back what Airflow recorded: the run's and each task
instance's timestamps, the train task's Slurm accounting (its XCom: sacct's submit, start, end and
elapsed) and the task logs' own timestamps (the stack's log folder). ``--run-id`` analyses runs
that already ended instead (e.g. the end-to-end suite's), triggering nothing.

Per stage (the pipeline is a chain, so each stage waits for the one before):

- ``queue_s``: the upstream's end (the run's start for validate) -> the task queued: the scheduler's
  loop noticing the upstream finished and queueing the next task;
- ``start_s``: queued -> running: the executor handing it to a worker, which forks the task's
  supervisor and process (for train, which was queued again on its resume, only ``queue_s`` +
  ``start_s`` together are known);
- ``work_s``: the task's own duration as Airflow records it (running -> end, the task process's DAG
  file parse included; ``in_task_start_s`` shows that part, from the log's "Pre Execute" group); for
  train, the Slurm job's elapsed time: the rest of the train task (checks and submission, Slurm's
  queue, the trigger's pick-up and poll latency, the resume) is overhead, shown apart in
  ``train``: ``submit_s``, ``to_trigger_s``, ``slurm_pending_s``, ``poll_latency_s``, ``resume_s``;
- ``overhead_s``: ``queue_s + start_s`` (plus, for train, its duration less the job's elapsed).

For the run: ``run_start_s`` (triggered -> running) and ``tail_s`` (the last task's end -> the run
marked finished). ``overhead_s = wall_s - work_s`` with ``wall_s`` from the trigger (the run
queued) to the run's end; ``overhead_s_per_stage`` divides it by the stages. Target: at most 2 s
per stage. ``running_overhead_s_per_stage`` is the same from the run's start (without waiting for
a run slot: of use for runs of a busy suite, ``--run-id``). Slurm's accounting has whole seconds, so train's parts are good to about a second.

``--idle-seconds`` first samples the CPU time the idle Airflow components burn (each one's process
tree, from ``/proc``), before any run is triggered: what every test on a 2-core machine competes with.

Figures: the breakdown as a JSON line (``breakdown``), then the last line, one JSON object with
``stages``, ``overhead_s_per_stage`` (median over the runs), ``overhead_s``, ``wall_s``,
``work_s``, ``per_stage`` (medians), ``train``, ``idle_cpu_pct`` and the settings measured.

    .venv/bin/python bench/overhead.py                  # 3 demo runs, 20 s idle sample
    .venv/bin/python bench/overhead.py --runs 1 --idle-seconds 0
    .venv/bin/python bench/overhead.py --run-id 'manual__2026-...' --run-id ...
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

STAGES = ("validate", "ingest", "quality", "stage", "train", "export")
#: the Airflow components whose idle CPU is sampled (pid files of include/stack/stack.sh)
COMPONENTS = ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-api-server")
#: the airflow.cfg sections whose settings decide the overhead (recorded with the figures)
SETTINGS = ("scheduler", "dag_processor", "triggerer")


# -- timestamps -------------------------------------------------------------------------------------
def ts(value: str | None) -> float | None:
    """An API or log timestamp (ISO 8601, ``Z`` or an offset) as epoch seconds; a naive one (sacct
    prints local time) is read as local time."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.astimezone(UTC).timestamp()


def _gap(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else later - earlier


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# -- the task logs ----------------------------------------------------------------------------------
def log_events(path: Path) -> list[tuple[float, str]]:
    """``(epoch seconds, event)`` of each JSON line of an Airflow 3 task or trigger log file."""
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("timestamp"):
            events.append((ts(entry["timestamp"]) or 0.0, str(entry.get("event", ""))))
    return events


def task_log_marks(events: Sequence[tuple[float, str]]) -> dict[str, float | None]:
    """From a task's log: the end of its first "Pre Execute" group (the task process has parsed the
    DAG file and is about to execute), when it deferred, and when it started again after deferral."""
    marks: dict[str, float | None] = {"pre_execute_end": None, "deferred": None, "resumed": None}
    groups = [t for t, e in events if e.startswith("::group::Pre Execute")]
    in_pre = False
    for t, e in events:
        if e.startswith("::group::Pre Execute"):
            in_pre = True
        elif e.startswith("::endgroup::") and in_pre:
            in_pre = False
            if marks["pre_execute_end"] is None:
                marks["pre_execute_end"] = t
        elif e.startswith("Pausing task as DEFERRED") and marks["deferred"] is None:
            marks["deferred"] = t
    if marks["deferred"] is not None:
        marks["resumed"] = next((t for t in groups if t > marks["deferred"]), None)
    return marks


def trigger_log_marks(events: Sequence[tuple[float, str]]) -> dict[str, float | None]:
    """From a trigger's log (``attempt=N.log.trigger.<id>.log``): when the triggerer started it, when it fired."""
    started = next((t for t, e in events if e.startswith("trigger ") and e.endswith("starting")), None)
    fired = next((t for t, e in events if e.startswith("Trigger fired event")), None)
    return {"trigger_started": started, "trigger_fired": fired}


def log_dir(log_root: Path, dag_id: str, run_id: str, task_id: str) -> Path:
    """Airflow's default log_filename_template: ``dag_id=<d>/run_id=<r>/task_id=<t>/attempt=<n>.log``."""
    return log_root / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"


def read_marks(log_root: Path | None, dag_id: str, run_id: str, tis: Iterable[Mapping[str, Any]]) -> dict[str, dict]:
    """The log marks of each task's last try (train: its trigger's log too); empty without logs."""
    out: dict[str, dict] = {}
    if log_root is None:
        return out
    for ti in tis:
        folder = log_dir(log_root, dag_id, run_id, ti["task_id"])
        attempt = folder / f"attempt={ti.get('try_number') or 1}.log"
        marks = task_log_marks(log_events(attempt))
        triggers = sorted(folder.glob(f"{attempt.name}.trigger.*.log"))
        if triggers:
            marks.update(trigger_log_marks(log_events(triggers[-1])))
        out[ti["task_id"]] = marks
    return out


# -- the breakdown (pure: recorded timestamps in, figures out) -------------------------------------
def breakdown(run: Mapping[str, Any], tis: Iterable[Mapping[str, Any]], accounting: Mapping[str, Any] | None,
              marks: Mapping[str, Mapping[str, float | None]] | None = None,
              stages: Sequence[str] = STAGES) -> dict[str, Any]:
    """One run's wall time split into the stages' work and Airflow's overhead (module docstring).

    :param run: the run as the REST API answers (``queued_at``, ``start_date``, ``end_date``).
    :param tis: its task instances as the API answers (``start_date``, ``end_date``, ``queued_when``,
        ``duration``).
    :param accounting: the train task's Slurm accounting (its XCom's ``accounting``: ``elapsed_s``,
        ``submit``, ``start``, ``end``); without it train's whole duration counts as work.
    :param marks: :func:`read_marks` of the run (optional: the in-task start and train's parts).
    """
    by_id = {t["task_id"]: t for t in tis}
    missing = [s for s in stages if s not in by_id or by_id[s].get("end_date") is None]
    if missing:
        raise ValueError(f"run {run.get('dag_run_id')}: stage(s) {missing} did not run to an end; "
                         "only a run whose stages all ran can be measured")
    marks = marks or {}
    queued, started, ended = ts(run.get("queued_at")), ts(run.get("start_date")), ts(run.get("end_date"))
    per_stage: dict[str, dict[str, float | None]] = {}
    train: dict[str, float | None] = {}
    previous_end = started
    work_total = 0.0
    for stage in stages:
        ti = by_id[stage]
        t_start, t_end, t_queued = ts(ti["start_date"]), ts(ti["end_date"]), ts(ti.get("queued_when"))
        duration = t_end - t_start
        wait = t_start - previous_end
        queue_s = start_s = None
        if t_queued is not None and previous_end <= t_queued <= t_start:
            queue_s, start_s = t_queued - previous_end, t_start - t_queued
        work = duration
        mark = marks.get(stage, {})
        if stage == "train" and accounting and accounting.get("elapsed_s") is not None:
            work = float(accounting["elapsed_s"])
            job_submit, job_start, job_end = (ts(accounting.get(k)) for k in ("submit", "start", "end"))
            train = {
                "duration_s": duration,
                "job_elapsed_s": work,
                # running -> deferred (data checks, the SSH session, sbatch), from the task log
                "submit_s": _gap(mark.get("deferred"), t_start),
                # deferred -> the triggerer runs the trigger
                "to_trigger_s": _gap(mark.get("trigger_started"), mark.get("deferred")),
                "slurm_pending_s": _gap(job_start, job_submit),
                # the job ended -> the trigger saw it (the poll interval)
                "poll_latency_s": _gap(mark.get("trigger_fired"), job_end),
                # the trigger fired -> the task's end (scheduled, queued, started again, execute_complete)
                "resume_s": _gap(t_end, mark.get("trigger_fired")),
                "resume_start_s": _gap(mark.get("resumed"), mark.get("trigger_fired")),
            }
        work_total += work
        per_stage[stage] = {
            "queue_s": queue_s,
            "start_s": start_s,
            "wait_s": wait,
            "work_s": work,
            "in_task_start_s": _gap(mark.get("pre_execute_end"), t_start),
            "overhead_s": wait + (duration - work),
        }
        previous_end = t_end
    wall = ended - (queued if queued is not None else started)
    out = {
        "run_id": run.get("dag_run_id"),
        "stages": len(stages),
        "wall_s": wall,
        "work_s": work_total,
        "overhead_s": wall - work_total,
        "overhead_s_per_stage": (wall - work_total) / len(stages),
        # the same from the run's start: without the wait for a run slot (max_active_runs, other runs)
        "running_overhead_s_per_stage": (ended - started - work_total) / len(stages),
        "run_start_s": _gap(started, queued),
        "tail_s": ended - previous_end,
        "per_stage": per_stage,
        "train": train,
    }
    return _rounded(out)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def median_of(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over the runs (None where no run has it)."""

    def med(values: Iterable[Any]) -> float | None:
        vals = [v for v in values if v is not None]
        return round(statistics.median(vals), 3) if vals else None

    keys = ("wall_s", "work_s", "overhead_s", "overhead_s_per_stage", "running_overhead_s_per_stage", "run_start_s",
            "tail_s")
    out: dict[str, Any] = {k: med(r[k] for r in runs) for k in keys}
    stages = list(runs[0]["per_stage"])
    fields = list(runs[0]["per_stage"][stages[0]])
    out["per_stage"] = {s: {f: med(r["per_stage"][s][f] for r in runs) for f in fields} for s in stages}
    train_keys = sorted({k for r in runs for k in r["train"]})
    out["train"] = {k: med(r["train"].get(k) for r in runs) for k in train_keys}
    return out


# -- idle CPU of the stack -------------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, float, int]]:
    """pid -> (parent pid, CPU seconds of it and its reaped children, start time) of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        table[int(entry.name)] = (int(fields[1]), (utime + stime + cutime + cstime) / tick, int(fields[19]))
    return table


def _tree(root: int, table: Mapping[int, tuple[int, float, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, row in table.items():
        children.setdefault(row[0], []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append(pid)
            todo += children.get(pid, [])
    return out


def tree_cpu(root: int, before: Mapping[int, tuple[int, float, int]], after: Mapping[int, tuple[int, float, int]]) -> float:
    """CPU seconds a process and its descendants used between two samples: each process's own
    growth (a process born meanwhile from zero; children that ended count in the parent that reaped them)."""
    total = 0.0
    for pid in _tree(root, after):
        _, cpu, started = after[pid]
        old = before.get(pid)
        total += cpu - (old[1] if old is not None and old[2] == started else 0.0)
    return total


def idle_cpu(seconds: float, run_dir: Path) -> dict[str, float]:
    """Per component, its process tree's CPU use (percent of one core) over ``seconds`` of idling."""
    pids = {}
    for name in COMPONENTS:
        try:
            pids[name] = int((run_dir / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    before, t0 = _proc_table(), time.monotonic()
    time.sleep(seconds)
    after, elapsed = _proc_table(), time.monotonic() - t0
    out = {name.removeprefix("airflow-"): round(100 * tree_cpu(pid, before, after) / elapsed, 1)
           for name, pid in pids.items()}
    out["total"] = round(sum(out.values()), 1)
    return out


def settings(cfg_path: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The overhead's settings as the components read them: airflow.cfg, then AIRFLOW__S__K overrides."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(cfg_path)
    out = {f"{s}.{k}": v for s in SETTINGS if cfg.has_section(s) for k, v in cfg.items(s, raw=True)}
    for key, value in env.items():
        parts = key.split("__")
        if len(parts) == 3 and parts[0] == "AIRFLOW" and parts[1].lower() in SETTINGS:
            out[f"{parts[1].lower()}.{parts[2].lower()}"] = value
    return out


# -- the bench --------------------------------------------------------------------------------------
def _table(results: Sequence[Mapping[str, Any]]) -> None:
    med = median_of(results)
    rows = [(f"stage (median of {len(results)})", "queue s", "start s", "wait s", "work s", "in-task start s", "overhead s")]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for stage, f in med["per_stage"].items():
        rows.append((stage, fmt(f["queue_s"]), fmt(f["start_s"]), fmt(f["wait_s"]), fmt(f["work_s"]),
                     fmt(f["in_task_start_s"]), fmt(f["overhead_s"])))
    rows.append(("run: triggered -> running", "", "", fmt(med["run_start_s"]), "", "", fmt(med["run_start_s"])))
    rows.append(("run: last task -> run ended", "", "", fmt(med["tail_s"]), "", "", fmt(med["tail_s"])))
    rows.append(("total", "", "", "", fmt(med["work_s"]), "", fmt(med["overhead_s"])))
    c.print_table(rows)
    t = med["train"]
    if t:
        print("train: " + ", ".join(f"{k} {fmt(v)}" for k, v in t.items()), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--runs", type=int, default=3, help="pipeline runs, one after another")
    ap.add_argument("--tenant", default="demo")
    ap.add_argument("--run-id", action="append", default=[], help="analyse this finished run (repeatable); triggers nothing")
    ap.add_argument("--idle-seconds", type=float, default=20, help="sample the idle components' CPU first (0: skip)")
    ap.add_argument("--timeout", type=float, default=900, help="per run")
    args = ap.parse_args(argv)

    env = c.stack_env()
    from aifactory.layout import pipeline_dag_id
    from aifactory.local.airflow_api import AirflowClient
    from aifactory.local.demo import upload_sample
    from aifactory.local.localstack import state_dir
    from aifactory.tenants import load_cluster, load_tenant

    spec = load_tenant(args.tenant)
    dag_id = pipeline_dag_id(spec.tenant)
    api = AirflowClient.login(env=env)
    log_root = Path(env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]) if env.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER") else None
    print(f"overhead bench: {dag_id}; {c.machine_note()}", flush=True)

    idle = None
    if args.idle_seconds > 0 and not args.run_id:
        idle = idle_cpu(args.idle_seconds, state_dir() / "run")
        print(f"idle CPU over {args.idle_seconds:.0f} s (% of one core): {json.dumps(idle)}", flush=True)

    run_ids = list(args.run_id)
    if not run_ids:
        api.wait_for_dag(dag_id)
        api.unpause(dag_id)
        conf = dict(spec.defaults)
        upload_sample(env, conf["dataset_uri"], c.REPO / "include" / "sample_data" / "iris.csv")
        for n in range(args.runs):
            run_id = api.trigger(dag_id, conf)["dag_run_id"]
            run = api.wait_for_run(dag_id, run_id, timeout=args.timeout)
            print(f"run {n + 1}/{args.runs} {run_id}: {run['state']}", flush=True)
            if run["state"] != "success":
                raise SystemExit(f"run {run_id} of {dag_id} ended {run['state']}; the bench measures successful "
                                 "runs only (see its task logs)")
            run_ids.append(run_id)

    results = []
    for run_id in run_ids:
        run, tis = api.run(dag_id, run_id), api.task_instances(dag_id, run_id)
        train = api.xcom(dag_id, run_id, "train") if any(t["task_id"] == "train" and t["state"] == "success"
                                                          for t in tis) else {}
        try:
            one = breakdown(run, tis, (train or {}).get("accounting"), read_marks(log_root, dag_id, run_id, tis))
        except ValueError as exc:  # a given run that did not run every stage (--run-id)
            print(f"skipped: {exc}", flush=True)
            continue
        print(f"{run_id}: wall {one['wall_s']:.1f} s, work {one['work_s']:.1f} s, overhead {one['overhead_s']:.1f} s "
              f"({one['overhead_s_per_stage']:.2f} s per stage)", flush=True)
        results.append(one)

    if not results:
        raise SystemExit("no run to measure: none of the runs ran every stage")
    run_ids = [r["run_id"] for r in results]
    _table(results)
    med = median_of(results)
    print("breakdown " + json.dumps({s: {k: f[k] for k in ("queue_s", "start_s", "work_s")}
                                     for s, f in med["per_stage"].items()}, sort_keys=True), flush=True)
    c.emit({
        "stages": len(STAGES),
        "overhead_s_per_stage": med["overhead_s_per_stage"],
        "overhead_s": med["overhead_s"],
        "running_overhead_s_per_stage": med["running_overhead_s_per_stage"],
        "wall_s": med["wall_s"],
        "work_s": med["work_s"],
        "run_start_s": med["run_start_s"],
        "tail_s": med["tail_s"],
        "per_stage": med["per_stage"],
        "train": med["train"],
        "runs": len(results),
        "run_ids": run_ids,
        "runs_overhead_s_per_stage": [r["overhead_s_per_stage"] for r in results],
        "idle_cpu_pct": idle,
        "settings": settings(c.REPO / "airflow.cfg", env),
        "poll_interval_s": load_cluster(spec.cluster).effective_poll_interval_s,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
