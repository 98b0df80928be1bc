"""The supervisor's rules (aifactory.local.supervisor): what counts as dead or hung, the back-off,
which components it restarts (Airflow's only), and AirflowClient's early failure on a scheduler
without a heartbeat. Pure functions, a fake ``stack.sh`` and a local fake health endpoint."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aifactory.local import supervisor as sv
from aifactory.local.airflow_api import AirflowAPIError, AirflowClient

NOW = 1_800_000_000.0


def health(age: float | None, db: str = "healthy") -> dict[str, Any]:
    beat = None if age is None else (datetime.fromtimestamp(NOW, UTC) - timedelta(seconds=age)).isoformat()
    return {"metadatabase": {"status": db},
            "scheduler": {"status": "healthy", "latest_scheduler_heartbeat": beat},
            "triggerer": {"status": "healthy", "latest_triggerer_heartbeat": beat},
            "dag_processor": {"status": "healthy", "latest_dag_processor_heartbeat": beat}}


def judge(component: str = "airflow-scheduler", *, alive: bool = True, up_for: float = 600,
          h: dict[str, Any] | None = None, silent_for: float | None = None) -> sv.Verdict:
    return sv.judge(component, pid=42, alive=alive, started=NOW - up_for, now=NOW,
                    health=health(5) if h is None else h,
                    api_silent_since=None if silent_for is None else NOW - silent_for)


def test_a_gone_process_is_dead_and_a_young_one_is_starting():
    assert judge(alive=False).state == "dead" and "42" in judge(alive=False).reason
    assert judge(up_for=10, h=health(500)).state == "starting"


@pytest.mark.parametrize("component", list(sv.HEARTBEATS))
def test_an_alive_component_without_a_heartbeat_for_a_minute_is_hung(component):
    assert judge(component, h=health(5)).state == "running"
    hung = judge(component, h=health(sv.HUNG_AFTER_S + 1))
    assert hung.state == "hung" and hung.needs_restart and "last heartbeat" in hung.reason
    assert judge(component, h=health(None)).state == "hung"


def test_nothing_is_restarted_on_a_guess_when_the_database_or_api_is_away():
    assert judge(h=health(900, db="unhealthy")).state == "running"
    v = sv.judge("airflow-scheduler", pid=42, alive=True, started=NOW - 600, now=NOW, health=None,
                 api_silent_since=NOW - 900)
    assert v.state == "running" and "unknown" in v.reason


def test_an_api_server_that_stops_answering_is_hung_and_celery_workers_are_judged_by_process():
    assert judge("airflow-api-server", silent_for=10).state == "running"
    assert judge("airflow-api-server", silent_for=sv.HUNG_AFTER_S).state == "hung"
    assert judge("airflow-celery-worker-1", h=health(900)).state == "running"


def test_backoff_doubles_after_quick_deaths_caps_and_forgives():
    b = sv.Backoff(base=10, cap=40, quick=120)
    assert b.delay(0) == 0  # the first restart at once
    b.started(0)
    assert b.delay(30) == 10
    b.started(40)
    assert b.delay(50) == 20
    b.started(70)
    assert b.delay(80) == 40
    b.started(120)
    assert b.delay(130) == 40  # capped
    b.started(130)
    assert b.delay(1000) == 0  # it ran long enough: forgiven


def write_pid(state: Path, component: str, pid: int) -> None:
    (state / "run").mkdir(parents=True, exist_ok=True)
    (state / "run" / f"{component}.pid").write_text(f"{pid}\n")


@pytest.fixture()
def stack(tmp_path):
    """A state dir where every Airflow component but the scheduler lives (this process), sshd is
    dead too, and a fake stack.sh that records what it is asked to restart."""
    state = tmp_path / "state"
    for c in sv.CORE_PARTS:
        write_pid(state, c, os.getpid())
    write_pid(state, "airflow-scheduler", 2**22 + 1)  # above pid_max's default: no such process
    write_pid(state, "sshd", 2**22 + 1)
    script = tmp_path / "stack.sh"
    script.write_text(f'echo "$@" >>{tmp_path}/calls\necho "[stack] restarted $2"\n')
    (state / "log").mkdir()
    return state, script, tmp_path / "calls"


def test_step_restarts_the_dead_airflow_component_only_and_logs_why(stack, tmp_path):
    state, script, calls = stack
    log = (tmp_path / "supervisor.log").open("w")
    sup = sv.Supervisor(state, "http://127.0.0.1:9", script, log=log)  # port 9: nothing answers
    sup.step(NOW)
    log.close()
    assert calls.read_text().splitlines() == ["restart airflow-scheduler"]  # never sshd
    text = (tmp_path / "supervisor.log").read_text()
    assert "restarting airflow-scheduler: dead (process 4194305 is gone)" in text
    assert "[stack] restarted airflow-scheduler" in text


class LockProbe:
    """A log that notes, for each line written, whether ``run/supervisor.lock`` was held then."""

    def __init__(self, lock: Path) -> None:
        self.lock, self.lines = lock, []

    def write(self, text: str) -> None:
        with self.lock.open("a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = False
                fcntl.flock(f, fcntl.LOCK_UN)
            except BlockingIOError:
                held = True
        self.lines += [(held, line) for line in text.splitlines() if line]

    def flush(self) -> None:
        pass


def test_what_a_restart_said_is_logged_before_the_lock_is_released(stack):
    """stack.sh up/down stop the supervisor the moment they hold the lock (a CI run lost the
    'died and left' lines that way): the restart's output is written while the lock is held."""
    state, script, _ = stack
    probe = LockProbe(state / "run" / "supervisor.lock")
    sv.Supervisor(state, "http://127.0.0.1:9", script, log=probe).step(NOW)
    said = [held for held, line in probe.lines if "[stack] restarted airflow-scheduler" in line]
    assert said == [True]


def test_a_component_that_keeps_dying_is_backed_off(stack, tmp_path):
    state, script, calls = stack
    log = (tmp_path / "supervisor.log").open("w")
    sup = sv.Supervisor(state, "http://127.0.0.1:9", script, log=log)
    sup.step(NOW)
    sup.backoff["airflow-scheduler"].started(NOW)  # as if the restart just happened
    sup.step(NOW + 5)  # dead again 5 s after its start: waits
    sup.step(NOW + 6)
    log.close()
    assert calls.read_text().splitlines() == ["restart airflow-scheduler"]
    assert "backing off, next restart in 10s" in (tmp_path / "supervisor.log").read_text()
    assert sup.not_before["airflow-scheduler"] == NOW + 15


def test_celery_workers_are_supervised_only_on_a_celery_stack(tmp_path):
    assert sv.parts(tmp_path) == sv.CORE_PARTS
    (tmp_path / "executor").write_text("celery\n")
    assert sv.parts(tmp_path) == sv.CORE_PARTS + sv.CELERY_PARTS


class _Health(BaseHTTPRequestHandler):
    answer: dict[str, Any] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send({"access_token": "t"})

    def do_GET(self) -> None:  # noqa: N802
        self._send(self.answer)


@pytest.fixture()
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield AirflowClient(f"http://127.0.0.1:{server.server_port}", "platform", "pw", timeout=5)
    server.shutdown()


def live_health(age: float | None, db: str = "healthy") -> dict[str, Any]:
    beat = None if age is None else (datetime.now(UTC) - timedelta(seconds=age)).isoformat()
    return {**health(0, db), "scheduler": {"status": "unhealthy", "latest_scheduler_heartbeat": beat}}


def test_a_scheduler_without_a_heartbeat_fails_early_naming_what_to_run(api):
    _Health.answer = live_health(5)
    api.check_scheduler()
    _Health.answer = live_health(400, db="unhealthy")
    api.check_scheduler()  # the database is away: nothing to say about the scheduler
    _Health.answer = live_health(400)
    with pytest.raises(AirflowAPIError, match=r"not heartbeated for 40\ds .*stack\.sh status"):
        api.check_scheduler()
    _Health.answer = live_health(None)
    with pytest.raises(AirflowAPIError, match="has never heartbeated"):
        api.check_scheduler()
