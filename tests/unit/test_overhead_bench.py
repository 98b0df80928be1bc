"""bench/overhead.py's arithmetic on one recorded demo run (the local stack's REST answers and task
log lines, copied from a real run): the wall time splits exactly into the stages' work and the
overhead, and each part comes from the timestamp it claims to come from.

Timings belong to the bench; this checks the breakdown only.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

RUN = {"dag_run_id": "manual__r1", "queued_at": "2026-12-02T18:22:04.900000Z",
       "start_date": "2026-12-02T18:22:04.992191Z", "end_date": "2026-12-02T18:22:26.060850Z"}
TIS = [
    {"task_id": "validate", "queued_when": "2026-12-02T18:22:05.062234Z", "start_date": "2026-12-02T18:22:05.197262Z",
     "end_date": "2026-12-02T18:22:05.417369Z", "try_number": 1},
    {"task_id": "ingest", "queued_when": "2026-12-02T18:22:06.156200Z", "start_date": "2026-12-02T18:22:06.237461Z",
     "end_date": "2026-12-02T18:22:07.339998Z", "try_number": 1},
    {"task_id": "quality", "queued_when": "2026-12-02T18:22:08.290351Z", "start_date": "2026-12-02T18:22:08.383710Z",
     "end_date": "2026-12-02T18:22:10.558105Z", "try_number": 1},
    {"task_id": "stage", "queued_when": "2026-12-02T18:22:11.491453Z", "start_date": "2026-12-02T18:22:11.585522Z",
     "end_date": "2026-12-02T18:22:12.895869Z", "try_number": 1},
    # queued again on its resume: queued_when is after start_date
    {"task_id": "train", "queued_when": "2026-12-02T18:22:23.099196Z", "start_date": "2026-12-02T18:22:13.739819Z",
     "end_date": "2026-12-02T18:22:23.656869Z", "try_number": 1},
    {"task_id": "export", "queued_when": "2026-12-02T18:22:24.174237Z", "start_date": "2026-12-02T18:22:24.255222Z",
     "end_date": "2026-12-02T18:22:25.246535Z", "try_number": 1},
]
#: the train XCom's accounting (sacct: whole seconds, local time = UTC on the stack)
ACCOUNTING = {"submit": "2026-12-02T18:22:14+00:00", "start": "2026-12-02T18:22:15+00:00",
              "end": "2026-12-02T18:22:20+00:00", "elapsed_s": 5}
TRAIN_LOG = [
    ("2026-12-02T18:22:13.754290Z", "::group::Pre Execute"),
    ("2026-12-02T18:22:13.909567Z", "Worker startup parse complete"),
    ("2026-12-02T18:22:13.961488Z", "::endgroup::"),
    ("2026-12-02T18:22:14.871912Z", "Submitted Slurm job 1"),
    ("2026-12-02T18:22:14.872575Z", "Pausing task as DEFERRED. "),
    ("2026-12-02T18:22:14.890308Z", "::endgroup::"),
    ("2026-12-02T18:22:23.237937Z", "::group::Pre Execute"),
    ("2026-12-02T18:22:23.450010Z", "::endgroup::"),
]
TRIGGER_LOG = [
    ("2026-12-02T18:22:16.488346Z", "trigger factory_demo/manual__r1/train/-1/1 (ID 1) starting"),
    ("2026-12-02T18:22:17.141506Z", "Slurm job 1 is running."),
    ("2026-12-02T18:22:22.315014Z", "Trigger fired event"),
    ("2026-12-02T18:22:22.315577Z", "trigger completed"),
]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_overhead", REPO / "bench" / "overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_log(path: Path, lines: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"timestamp": t, "level": "info", "event": e}) + "\n" for t, e in lines)
                    + "not json: a line of plain text is skipped\n")


@pytest.fixture
def marks(bench, tmp_path):
    folder = bench.log_dir(tmp_path, "factory_demo", RUN["dag_run_id"], "train")
    _write_log(folder / "attempt=1.log", TRAIN_LOG)
    _write_log(folder / "attempt=1.log.trigger.1.log", TRIGGER_LOG)
    return bench.read_marks(tmp_path, "factory_demo", RUN["dag_run_id"], TIS)


def test_the_wall_time_is_the_work_plus_the_overhead(bench, marks):
    out = bench.breakdown(RUN, TIS, ACCOUNTING, marks)
    durations = {"validate": 0.220107, "ingest": 1.102537, "quality": 2.174395, "stage": 1.310347, "export": 0.991313}
    assert out["work_s"] == pytest.approx(sum(durations.values()) + 5, abs=1e-3)  # train: the job's elapsed
    assert out["wall_s"] == pytest.approx(26.060850 - 4.9, abs=1e-3)  # from the trigger (queued_at)
    assert out["overhead_s"] == pytest.approx(out["wall_s"] - out["work_s"], abs=2e-3)
    assert out["overhead_s_per_stage"] == pytest.approx(out["overhead_s"] / 6, abs=1e-3)
    # the parts add up: run start + each stage's overhead + the tail
    parts = out["run_start_s"] + sum(s["overhead_s"] for s in out["per_stage"].values()) + out["tail_s"]
    assert parts == pytest.approx(out["overhead_s"], abs=5e-3)


def test_each_stage_waits_for_its_upstream_then_for_a_worker(bench, marks):
    out = bench.breakdown(RUN, TIS, ACCOUNTING, marks)["per_stage"]
    # ingest: validate ended 05.417, ingest queued 06.156, running 06.237
    assert out["ingest"]["queue_s"] == pytest.approx(0.739, abs=1e-3)
    assert out["ingest"]["start_s"] == pytest.approx(0.081, abs=1e-3)
    assert out["ingest"]["overhead_s"] == pytest.approx(0.820, abs=1e-3)
    assert out["validate"]["queue_s"] == pytest.approx(0.070, abs=1e-3)  # from the run's start
    # train was queued again when it resumed: only the wait as a whole is known
    assert out["train"]["queue_s"] is None and out["train"]["wait_s"] == pytest.approx(0.844, abs=1e-3)
    # ... and all of it beyond the Slurm job is overhead
    assert out["train"]["overhead_s"] == pytest.approx(0.844 + 9.917 - 5, abs=1e-3)
    assert out["train"]["in_task_start_s"] == pytest.approx(13.961488 - 13.739819, abs=1e-3)
    assert out["ingest"]["in_task_start_s"] is None  # no log given for it


def test_the_train_task_is_split_at_its_deferral(bench, marks):
    train = bench.breakdown(RUN, TIS, ACCOUNTING, marks)["train"]
    assert train["submit_s"] == pytest.approx(14.872575 - 13.739819, abs=1e-3)
    assert train["to_trigger_s"] == pytest.approx(16.488346 - 14.872575, abs=1e-3)
    assert train["slurm_pending_s"] == 1
    assert train["poll_latency_s"] == pytest.approx(22.315014 - 20, abs=1e-3)
    assert train["resume_s"] == pytest.approx(23.656869 - 22.315014, abs=1e-3)
    assert train["resume_start_s"] == pytest.approx(23.237937 - 22.315014, abs=1e-3)


def test_without_accounting_train_counts_as_work(bench):
    out = bench.breakdown(RUN, TIS, None)
    assert out["per_stage"]["train"]["work_s"] == pytest.approx(9.917, abs=1e-3)
    assert out["train"] == {}


def test_a_run_whose_stages_did_not_all_run_is_refused(bench):
    tis = [dict(t, end_date=None) if t["task_id"] == "export" else t for t in TIS]
    with pytest.raises(ValueError, match=r"\['export'\] did not run to an end"):
        bench.breakdown(RUN, tis, ACCOUNTING)


def test_medians_over_runs(bench, marks):
    one = bench.breakdown(RUN, TIS, ACCOUNTING, marks)
    slower = json.loads(json.dumps(one))
    slower["overhead_s_per_stage"] += 3
    slower["per_stage"]["ingest"]["queue_s"] += 3
    med = bench.median_of([one, slower, one])
    assert med["overhead_s_per_stage"] == one["overhead_s_per_stage"]
    assert med["per_stage"]["ingest"]["queue_s"] == one["per_stage"]["ingest"]["queue_s"]


def test_a_process_tree_counts_what_its_processes_used_meanwhile(bench):
    before = {1: (0, 1.0, 5), 10: (1, 2.0, 6), 12: (10, 4.0, 6), 20: (0, 7.0, 1)}
    # 10 used 1 s more (0.5 of it a child it reaped), 11 was born and used 0.5 s, 12 ended,
    # pid 13 was reused by a process of another start time; 20 is another tree
    after = {1: (0, 1.0, 5), 10: (1, 3.0, 6), 11: (10, 0.5, 9), 13: (10, 0.25, 9), 20: (0, 9.0, 1)}
    before[13] = (10, 100.0, 2)
    assert bench.tree_cpu(1, before, after) == pytest.approx(1.75)
    assert bench.tree_cpu(99, before, after) == 0


def test_settings_follow_the_environment_over_the_file(bench, tmp_path):
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text("[scheduler]\nscheduler_idle_sleep_time = 0.5\n[api]\nworkers = 1\n")
    out = bench.settings(cfg, {"AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30", "AIRFLOW__API__PORT": "1"})
    assert out == {"scheduler.scheduler_idle_sleep_time": "0.5", "dag_processor.refresh_interval": "30"}
