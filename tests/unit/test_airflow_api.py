"""The REST facade's trigger is idempotent: retried after a server error, it never makes two runs.

A local fake of the API server answers the real ``apache-airflow-client`` calls the facade makes, so
the retry decisions are tested through the client's own request and error paths.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest

from aifactory.local import airflow_api
from aifactory.local.airflow_api import AirflowAPIError, AirflowClient


def _run(run_id: str, conf: Any, state: str) -> dict[str, Any]:
    """A DAGRunResponse with the fields the generated client requires."""
    return {"dag_run_id": run_id, "dag_id": "factory_demo", "dag_display_name": "factory_demo", "conf": conf,
            "state": state, "dag_versions": [], "run_after": "2026-01-01T00:00:00Z", "run_type": "manual"}


def _task_instance(map_index: int) -> dict[str, Any]:
    """A TaskInstanceResponse with the fields the generated client requires; state null (not yet run)."""
    return {"id": f"00000000-0000-0000-0000-{map_index:012d}", "task_id": "probe", "dag_id": "factory_demo", "dag_run_id": "r",
            "dag_display_name": "factory_demo", "task_display_name": "probe", "map_index": map_index,
            "try_number": 0, "max_tries": 0, "pool": "default_pool", "pool_slots": 1, "priority_weight": 1,
            "executor_config": "{}", "run_after": "2026-01-01T00:00:00Z", "state": None}


class _FakeAirflow(BaseHTTPRequestHandler):
    """Token, POST dagRuns and GET dagRun; ``script`` says what each POST does."""

    runs: dict[str, dict[str, Any]] = {}
    posts: list[str] = []
    # per POST: "ok", "500" (nothing created), "lost" (created, then 500), "drop" (created, then
    # the connection closes without an answer)
    script: list[str] = []
    tokens: list[str] = []  # tokens handed out; only the last one is accepted
    # per PATCH or DELETE: "ok", or the HTTP status to answer with (nothing changes)
    change_script: list[str] = []
    changes: list[str] = []  # "PATCH <run>" / "DELETE <run>", as received

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        body = json.loads(raw)
        if self.path == "/auth/token":
            self.tokens.append(f"t{len(self.tokens)}")
            return self._send(201, {"access_token": self.tokens[-1]})
        if self.headers.get("Authorization") != f"Bearer {self.tokens[-1]}":
            return self._send(401, {"detail": "Invalid JWT token"})
        run_id = body["dag_run_id"]
        self.posts.append(run_id)
        action = self.script.pop(0) if self.script else "ok"
        if run_id in self.runs:
            return self._send(409, {"detail": f"DAGRun with dag_run_id: '{run_id}' already exists"})
        if action == "500":
            return self._send(500, {"detail": {"reason": "Database error"}})
        if b"NaN" in raw:  # what Airflow's form validation does with a non-finite number
            return self._send(400, {"detail": [{"msg": "not a finite number", "loc": ["conf", "lr"]}]})
        if action == "400":
            return self._send(400, {"detail": "Invalid input for param epochs: 5.0 is not of type 'integer'"})
        self.runs[run_id] = _run(run_id, body["conf"], "queued")
        if action == "lost":
            return self._send(500, {"detail": {"reason": "Database error"}})
        if action == "drop":
            self.close_connection = True
            return None
        return self._send(200, self.runs[run_id])

    def _scripted_failure(self, verb: str, run_id: str) -> bool:
        self.changes.append(f"{verb} {run_id}")
        action = self.change_script.pop(0) if self.change_script else "ok"
        if action != "ok":
            self._send(int(action), {"detail": "deadlock detected" if action == "500" else "Forbidden"})
            return True
        return False

    def do_PATCH(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        run_id = unquote(self.path.rsplit("/", 1)[-1])
        if self._scripted_failure("PATCH", run_id):
            return None
        run = self.runs[run_id]
        run["state"] = body["state"]
        return self._send(200, run)

    def do_DELETE(self) -> None:  # noqa: N802
        run_id = unquote(self.path.rsplit("/", 1)[-1])
        if self._scripted_failure("DELETE", run_id):
            return None
        if run_id not in self.runs:
            return self._send(404, {"detail": "not found"})
        if self.runs[run_id]["state"] in ("queued", "running"):
            return self._send(409, {"detail": "the run is still running"})
        del self.runs[run_id]
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return None

    def do_GET(self) -> None:  # noqa: N802
        path, _, query = self.path.partition("?")
        if path.endswith("/taskInstances"):  # 130 mapped task instances, one page per call
            offset, limit = (int(parse_qs(query)[k][0]) for k in ("offset", "limit"))
            page = [_task_instance(i) for i in range(130)][offset : offset + limit]
            return self._send(200, {"task_instances": page, "total_entries": 130})
        run_id = path.rsplit("/", 1)[-1]
        run = self.runs.get(unquote(run_id))
        return self._send(200, run) if run else self._send(404, {"detail": "not found"})


@pytest.fixture()
def api(monkeypatch):
    monkeypatch.setattr(airflow_api.time, "sleep", lambda s: None)
    _FakeAirflow.runs, _FakeAirflow.posts, _FakeAirflow.script, _FakeAirflow.tokens = {}, [], [], []
    _FakeAirflow.change_script, _FakeAirflow.changes = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeAirflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield AirflowClient(base_url=f"http://127.0.0.1:{server.server_address[1]}", username="u", password="p")
    server.shutdown()


def test_a_server_error_is_retried_with_the_same_run_id(api):
    _FakeAirflow.script = ["500", "500"]
    run = api.trigger("factory_demo", {"a": 1})
    assert len(_FakeAirflow.posts) == 3 and len(set(_FakeAirflow.posts)) == 1
    assert list(_FakeAirflow.runs) == [run["dag_run_id"]] and run["dag_run_id"].startswith("manual__")


@pytest.mark.parametrize("lost", ["lost", "drop"])
def test_a_lost_answer_finds_the_run_instead_of_making_a_second(api, lost):
    _FakeAirflow.script = [lost]
    run = api.trigger("factory_demo", {"a": 1})
    assert len(_FakeAirflow.runs) == 1 and run["conf"] == {"a": 1} and len(_FakeAirflow.posts) == 2


def test_an_existing_run_id_of_someone_else_is_an_error_and_errors_end(api):
    _FakeAirflow.runs["mine"] = _run("mine", {"other": True}, "success")
    with pytest.raises(AirflowAPIError, match="HTTP 409"):
        api.trigger("factory_demo", {"a": 1}, run_id="mine")
    _FakeAirflow.script = ["500"] * 10
    with pytest.raises(AirflowAPIError, match="HTTP 500"):
        api.trigger("factory_demo", {"a": 1})
    assert len(_FakeAirflow.posts) == 1 + 4  # four tries, then the error


def test_a_refused_trigger_gives_its_status_and_detail_and_an_accepted_one_is_an_error(api):
    _FakeAirflow.script = ["400"]
    status, detail = api.trigger_expecting_refusal("factory_demo", {"epochs": 5.0})
    assert status == 400 and detail.startswith("Invalid input for param epochs") and not _FakeAirflow.runs
    with pytest.raises(AirflowAPIError, match="was accepted"):
        api.trigger_expecting_refusal("factory_demo", {"epochs": 5})
    assert [r["state"] for r in _FakeAirflow.runs.values()] == ["failed"]  # stopped, as far as it can be


def test_an_expired_token_is_renewed_once(api):
    api.trigger("factory_demo", {"a": 1})
    _FakeAirflow.tokens.append("rotated")  # the server no longer accepts the facade's token
    api.trigger("factory_demo", {"a": 2})
    assert len(_FakeAirflow.runs) == 2 and len(_FakeAirflow.tokens) == 3


def test_task_instances_are_read_to_the_last_page_and_a_null_state_stays_a_key(api):
    tis = api.task_instances("factory_demo", "r")
    assert [t["map_index"] for t in tis] == list(range(130))
    assert all(t["state"] is None for t in tis)


def test_a_trigger_outcome_sends_nan_as_the_literal_and_reports_either_answer(api):
    status, detail = api.trigger_outcome("factory_demo", {"lr": float("nan")})
    assert status == 400 and json.loads(detail)[0]["msg"] == "not a finite number" and not _FakeAirflow.runs
    status, detail = api.trigger_outcome("factory_demo", {"lr": 0.1}, run_id="r1")
    assert status == 200 and json.loads(detail)["dag_run_id"] == "r1" and list(_FakeAirflow.runs) == ["r1"]


def test_a_state_change_is_tried_again_after_a_server_error_but_not_after_a_refusal(api):
    """Postgres: changing a run while the scheduler works on it can deadlock, answered HTTP 500."""
    api.trigger("factory_demo", {}, "r1")
    _FakeAirflow.change_script = ["500", "500"]
    assert api.set_run_state("factory_demo", "r1", "failed")["state"] == "failed"
    assert _FakeAirflow.changes == ["PATCH r1"] * 3
    _FakeAirflow.change_script, _FakeAirflow.changes = ["403"], []
    with pytest.raises(AirflowAPIError) as refused:
        api.set_run_state("factory_demo", "r1", "success")
    assert refused.value.status == 403 and _FakeAirflow.changes == ["PATCH r1"]


def test_fail_runs_fails_what_is_still_going_never_deletes_and_names_what_it_could_not(api):
    api.trigger("factory_demo", {}, "r2")
    api.trigger("factory_demo", {}, "r3")
    _FakeAirflow.runs["r3"]["state"] = "success"
    _FakeAirflow.change_script = ["500"]  # a deadlock with the scheduler once: tried again
    left = api.fail_runs("factory_demo", ["r2", "r3", "gone"])
    assert _FakeAirflow.runs["r2"]["state"] == "failed" and _FakeAirflow.runs["r3"]["state"] == "success"
    assert _FakeAirflow.changes == ["PATCH r2", "PATCH r2"]  # no DELETE, nothing done to the finished run
    assert len(left) == 1 and left[0].startswith("gone: ")
