"""A small client of Airflow 3's public REST API (``/api/v2``), the same path the UI's trigger takes.

Used by ``make demo`` and by the end-to-end tests; plain ``urllib`` so it needs no Airflow install.
"""

from __future__ import annotations

import http.client
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from aifactory.errors import FactoryError

TERMINAL_RUN_STATES = {"success", "failed"}


class AirflowAPIError(FactoryError):
    """A failed API call; ``status`` is the HTTP status, ``None`` when no answer came back."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class AirflowClient:
    base_url: str
    username: str
    password: str
    timeout: float = 30.0
    _token: str | None = None

    # -- plumbing -------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url.rstrip("/") + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        req.add_header("Accept", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.token()}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:1000]
            raise AirflowAPIError(f"{method} {path} -> HTTP {exc.code}: {detail}", status=exc.code) from exc
        except urllib.error.URLError as exc:
            raise AirflowAPIError(f"{method} {path}: Airflow API at {self.base_url} unreachable ({exc.reason}); "
                                  "is the stack up? (make up / make status)") from exc
        except TimeoutError as exc:
            raise AirflowAPIError(f"{method} {path}: no answer from the Airflow API at {self.base_url} "
                                  f"within {self.timeout:.0f}s (unreachable?)") from exc
        except (ConnectionError, http.client.HTTPException) as exc:  # sent, then the answer was lost
            raise AirflowAPIError(f"{method} {path}: the Airflow API at {self.base_url} closed the connection "
                                  f"without an answer ({exc!r})") from exc
        return json.loads(raw) if raw else None

    def token(self) -> str:
        if self._token is None:
            out = self._request("POST", "/auth/token", {"username": self.username, "password": self.password},
                                auth=False)
            self._token = out["access_token"]
        return self._token

    # -- API ------------------------------------------------------------------------------------
    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id`` (it appears in the API)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._request("GET", f"/api/v2/dags/{urllib.parse.quote(dag_id)}")
            except AirflowAPIError as exc:
                if "HTTP 404" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{urllib.parse.quote(dag_id)}", {"is_paused": False})

    def pause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{urllib.parse.quote(dag_id)}", {"is_paused": True})

    def import_errors(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/v2/importErrors")["import_errors"]

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None, *,
                attempts: int = 4) -> dict[str, Any]:
        """Trigger a run; safe to retry, because the run id is chosen here.

        A server error (on the embedded SQLite, "database is locked" while the scheduler writes)
        or a lost answer is retried with the same run id: a retry either creates the run or finds
        the one an earlier try created (HTTP 409), never a second run.
        """
        run_id = run_id or f"manual__{datetime.now(timezone.utc).isoformat()}__{secrets.token_hex(3)}"
        body: dict[str, Any] = {"logical_date": None, "conf": conf, "dag_run_id": run_id}
        for attempt in range(1, attempts + 1):
            try:
                return self._request("POST", f"/api/v2/dags/{urllib.parse.quote(dag_id)}/dagRuns", body)
            except AirflowAPIError as exc:
                if exc.status == 409 and attempt > 1:
                    existing = self.run(dag_id, run_id)
                    if existing.get("conf") == conf:
                        return existing  # an earlier try created it; its answer was lost
                    raise
                # None: unreachable, or no answer in time
                if attempt == attempts or not (exc.status is None or exc.status >= 500):
                    raise
                time.sleep(2.0 * attempt)
        raise AssertionError("unreachable")

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v2/dags/{urllib.parse.quote(dag_id)}/dagRuns/{urllib.parse.quote(run_id)}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{urllib.parse.quote(dag_id)}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances"
        return self._request("GET", path)["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = (f"/api/v2/dags/{urllib.parse.quote(dag_id)}/dagRuns/{urllib.parse.quote(run_id)}"
                f"/taskInstances/{urllib.parse.quote(task_id)}/xcomEntries/{urllib.parse.quote(key)}?deserialize=true")
        value = self._request("GET", path)["value"]
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, new_state: str) -> Any:
        """Mark a task instance (as a user does in the UI: "Mark as failed / success")."""
        path = (f"/api/v2/dags/{urllib.parse.quote(dag_id)}/dagRuns/{urllib.parse.quote(run_id)}"
                f"/taskInstances/{urllib.parse.quote(task_id)}")
        return self._request("PATCH", path, {"new_state": new_state})

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        path = (f"/api/v2/dags/{urllib.parse.quote(dag_id)}/dagRuns/{urllib.parse.quote(run_id)}"
                f"/taskInstances/{urllib.parse.quote(task_id)}/logs/{try_number}?full_content=true")
        out = self._request("GET", path)
        content = out.get("content", "")
        if not isinstance(content, list):
            return str(content)
        lines = []
        for c in content:
            if not isinstance(c, dict):
                lines.append(str(c))
                continue
            lines.append(str(c.get("event", "")))
            # a failure's message travels in error_detail, not in the event text
            for err in c.get("error_detail") or []:
                if isinstance(err, dict):
                    lines.append(f"{err.get('exc_type')}: {err.get('exc_value')}")
        return "\n".join(lines)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            run = self.run(dag_id, run_id)
            states = {t["task_id"]: t["state"] for t in self.task_instances(dag_id, run_id)}
            line = f"run {run['state']}: " + ", ".join(f"{k}={v}" for k, v in states.items())
            if progress and line != last:
                progress(line)
                last = line
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                raise AirflowAPIError(f"run {run_id} of {dag_id} not finished after {timeout:.0f}s ({line})")
            time.sleep(3)
