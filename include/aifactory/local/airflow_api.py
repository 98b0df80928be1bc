"""The local stack's view of Airflow 3's public REST API (``/api/v2``), the path the UI's trigger takes.

Every call goes through ``apache-airflow-client`` (the generated client that matches the Airflow
release); this module only composes its calls into what the demo, the end-to-end tests and the
benches need: wait loops, an idempotent trigger, a refused trigger's status and detail. It builds no
HTTP request itself. Results are the API's JSON objects as plain dicts, so callers index them as the
API documents them (``run["state"]``, ``ti["task_id"]``). ``AirflowClient.login(user)`` logs in as
one of the logins onboarding generated (a tenant's user, ``platform``, ``operator``): every call
then has exactly that user's rights (the FAB auth manager decides, ``operators/access.py``).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pydantic
import urllib3
from airflow_client import client as ac
from airflow_client.client.exceptions import ApiException, UnauthorizedException

from aifactory.errors import FactoryError
from aifactory.layout import PLATFORM_LOGIN

TERMINAL_RUN_STATES = {"success", "failed"}
#: wait_for_run gives up when the scheduler has not heartbeated for this long: nothing will be
#: scheduled. Above the supervisor's restart of a hung one (60 s without a heartbeat, then a
#: restart of ~20 s: aifactory.local.supervisor), so that a restart it makes is waited through.
SCHEDULER_STALE_S = 120.0
#: wait_for_run's period: one GET of the run a second (the scheduler queues the next stage within
#: ~0.3 s of the last one's end, so 3 s made every wait up to 3 s longer than the run)
RUN_POLL_S = 1.0
_PAGE = 100  # list endpoints page at most this many items per call


class AirflowAPIError(FactoryError):
    """A failed API call; ``status`` is the HTTP status, ``None`` when no answer came back; ``detail``
    the error answer's detail (empty without one)."""

    def __init__(self, message: str, *, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def _transient(exc: AirflowAPIError) -> bool:
    """No answer, or a server error (on the embedded SQLite, "database is locked" while the scheduler
    writes): the same call may succeed when tried again."""
    return exc.status is None or exc.status >= 500


def _detail(exc: ApiException) -> str:
    """The ``detail`` of an error answer (FastAPI's shape), else its body."""
    body = exc.body or ""
    try:
        detail = json.loads(body).get("detail", body)
    except (ValueError, AttributeError):
        detail = body
    return (detail if isinstance(detail, str) else json.dumps(detail))[:1000]


def _plain(model: Any) -> dict[str, Any]:
    """A response model as the API's JSON object; fields the server sent as null stay present (None)."""
    data = json.loads(model.to_json())
    for name, info in type(model).model_fields.items():
        if name != "additional_properties":
            data.setdefault(info.alias or name, None)
    return data


class _ApiClient(ac.ApiClient):
    """The generated ``ApiClient`` with one default timeout for every call."""

    def __init__(self, configuration: ac.Configuration, timeout: float) -> None:
        super().__init__(configuration)
        self.timeout = timeout

    def call_api(self, method, url, header_params=None, body=None, post_params=None,  # type: ignore[override]
                 _request_timeout=None):
        return super().call_api(method, url, header_params, body, post_params,
                                _request_timeout if _request_timeout is not None else self.timeout)


@dataclass
class AirflowClient:
    base_url: str
    username: str
    password: str
    timeout: float = 30.0
    _client: _ApiClient | None = field(default=None, repr=False)

    @classmethod
    def login(cls, user: str = PLATFORM_LOGIN, env: Mapping[str, str] | None = None, *,
              timeout: float = 30.0) -> AirflowClient:
        """A client of the local stack that logs in as ``user`` (default: the platform admin) with
        the password onboarding generated for it (``<secrets>/airflow-users.json``)."""
        from aifactory.local.localstack import airflow_password, read_env_file

        env = read_env_file() if env is None else env
        return cls(env["AIFP_AIRFLOW_URL"], user, airflow_password(env, user), timeout=timeout)

    # -- plumbing -------------------------------------------------------------------------------
    def _api(self) -> _ApiClient:
        if self._client is None:
            config = ac.Configuration(host=self.base_url.rstrip("/"))
            # Only refused connections are retried below the facade (the request was never sent);
            # a lost answer is the facade's decision (see trigger).
            config.retries = urllib3.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=0,
                                           backoff_factor=1.0)
            self._client = _ApiClient(config, self.timeout)
        return self._client

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Turn the client's exceptions into one ``AirflowAPIError`` that names the call and its status."""
        try:
            yield
        except ApiException as exc:
            status = exc.status or None  # 0: the client could not even build or send the request
            detail = _detail(exc)
            raise AirflowAPIError(f"{what} -> HTTP {exc.status}: {detail}", status=status, detail=detail) from exc
        except pydantic.ValidationError as exc:  # answered, in a shape this client version does not know
            raise AirflowAPIError(f"{what}: the answer does not fit apache-airflow-client's model ({exc}); "
                                  "is the client pinned to the server's Airflow version?", status=200) from exc
        except urllib3.exceptions.MaxRetryError as exc:
            raise AirflowAPIError(f"{what}: Airflow API at {self.base_url} unreachable ({exc.reason}); "
                                  "is the stack up? (make up / make status)") from exc
        except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
            raise AirflowAPIError(f"{what}: no answer from the Airflow API at {self.base_url} "
                                  f"within {self.timeout:.0f}s (unreachable?)") from exc
        except (urllib3.exceptions.HTTPError, ConnectionError) as exc:  # sent, then the answer was lost
            raise AirflowAPIError(f"{what}: the Airflow API at {self.base_url} closed the connection "
                                  f"without an answer ({exc!r})") from exc

    def _call(self, what: str, fn: Callable[[ac.ApiClient], Any]) -> Any:
        """One API call, logged in first; an expired token is renewed once."""
        for renewed in (False, True):
            api = self._api()
            if api.configuration.access_token is None:
                api.configuration.access_token = self.token()
            try:
                with self._calling(what):
                    return fn(api)
            except AirflowAPIError as exc:
                if renewed or not isinstance(exc.__cause__, UnauthorizedException):
                    raise
                api.configuration.access_token = None
        raise AssertionError("unreachable")

    def _call_retrying(self, what: str, fn: Callable[[ac.ApiClient], Any], attempts: int = 5) -> Any:
        """An idempotent change (a state set, a clear, a pause, a delete), tried again after a server
        error or no answer: on Postgres, changing a run while the scheduler works on it can meet a
        deadlock, which Airflow's API answers with HTTP 500 without retrying (``deadlock detected``
        in the server's log)."""
        for attempt in range(1, attempts + 1):
            try:
                return self._call(what, fn)
            except AirflowAPIError as exc:
                if attempt == attempts or not _transient(exc):
                    raise
                time.sleep(0.5 * attempt)
        raise AssertionError("unreachable")

    def token(self) -> str:
        """A JWT from the auth manager's ``POST /auth/token`` (not part of the generated API, so it
        is sent through the client's own request layer)."""
        api = self._api()
        with self._calling("POST /auth/token"):
            request = api.param_serialize(
                "POST", "/auth/token", body={"username": self.username, "password": self.password},
                header_params={"Content-Type": "application/json", "Accept": "application/json"})
            response = api.call_api(*request)
            response.read()
            out = api.response_deserialize(response, {"2XX": "object"}).data
        return out["access_token"]

    # -- Dags -----------------------------------------------------------------------------------
    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id`` (it appears in the API)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._call(f"GET dag {dag_id}", lambda a: _plain(ac.DAGApi(a).get_dag(dag_id)))
            except AirflowAPIError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(2)

    def dag_ids(self) -> list[str]:
        """The DAGs this login may see (the auth manager filters the list), all pages."""
        out: list[str] = []
        while True:
            offset = len(out)
            page = self._call("GET dags", lambda a, o=offset: ac.DAGApi(a).get_dags(limit=_PAGE, offset=o))
            out += [d.dag_id for d in page.dags]
            if not page.dags or len(out) >= page.total_entries:
                return out

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's runs (first page, newest first)."""
        page = self._call(f"GET runs of {dag_id}", lambda a: ac.DagRunApi(a).get_dag_runs(
            dag_id, limit=_PAGE, order_by=["-run_after"]))
        return [_plain(r) for r in page.dag_runs]

    def connection_ids(self) -> list[str]:
        """The connection ids stored in Airflow's database (the platform role only)."""
        page = self._call("GET connections", lambda a: ac.ConnectionApi(a).get_connections(limit=_PAGE))
        return [c.connection_id for c in page.connections]

    def unpause(self, dag_id: str) -> None:
        self._call_retrying(f"unpause {dag_id}",
                   lambda a: ac.DAGApi(a).patch_dag(dag_id, ac.DAGPatchBody(is_paused=False)))

    def pause(self, dag_id: str) -> None:
        self._call_retrying(f"pause {dag_id}",
                   lambda a: ac.DAGApi(a).patch_dag(dag_id, ac.DAGPatchBody(is_paused=True)))

    def import_errors(self) -> list[dict[str, Any]]:
        out = self._call("GET import errors", lambda a: ac.ImportErrorApi(a).get_import_errors(limit=_PAGE))
        return [_plain(e) for e in out.import_errors]

    # -- runs -----------------------------------------------------------------------------------
    def _post_run(self, dag_id: str, conf: dict[str, Any], run_id: str, attempts: int) -> dict[str, Any]:
        """POST a run with a run id chosen here, so that a retry is safe: it either creates the run
        or finds the one an earlier try created (HTTP 409), never a second run."""
        body = ac.TriggerDAGRunPostBody(dag_run_id=run_id, conf=conf, logical_date=None)
        for attempt in range(1, attempts + 1):
            try:
                return self._call(f"trigger {dag_id}", lambda a: _plain(ac.DagRunApi(a).trigger_dag_run(dag_id, body)))
            except AirflowAPIError as exc:
                if exc.status == 409 and attempt > 1:
                    existing = self.run(dag_id, run_id)
                    if existing.get("conf") == conf:
                        return existing  # an earlier try created it; its answer was lost
                    raise
                if attempt == attempts or not _transient(exc):
                    raise
                time.sleep(2.0 * attempt)
        raise AssertionError("unreachable")

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None, *,
                attempts: int = 4) -> dict[str, Any]:
        """Trigger a run; safe to retry (a server error or a lost answer is tried again, same run id)."""
        run_id = run_id or f"manual__{datetime.now(UTC).isoformat()}__{secrets.token_hex(3)}"
        return self._post_run(dag_id, conf, run_id, attempts)

    def trigger_outcome(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None) -> tuple[int, str]:
        """Trigger, accepting either answer: ``(200, the run as JSON)`` or ``(status, detail)`` of a
        refusal. For tests of what the API lets through (a float NaN or infinity in ``conf`` is sent
        as the literal ``NaN`` / ``Infinity``). A server error or no answer, after the retries of
        ``trigger``, raises ``AirflowAPIError``.
        """
        try:
            run = self.trigger(dag_id, conf, run_id)
        except AirflowAPIError as exc:
            if _transient(exc):
                raise
            return exc.status or 0, exc.detail or str(exc)
        return 200, json.dumps(run)

    def trigger_expecting_refusal(self, dag_id: str, conf: dict[str, Any]) -> tuple[int, str]:
        """Trigger a run that must be refused; the refusal's HTTP status and detail.

        Raises ``AirflowAPIError`` when the run was accepted (naming it, after marking it failed),
        or when no refusal came back (no answer, a server error after every retry).
        """
        status, detail = self.trigger_outcome(dag_id, conf)
        if status != 200:
            return status, detail
        run_id = json.loads(detail)["dag_run_id"]
        try:  # stop what the refusal should have prevented, as far as it has not happened yet
            body = ac.DAGRunPatchBody(state=ac.DagRunMutableStates("failed"), note="should have been refused")
            self._call(f"fail run {run_id}", lambda a: ac.DagRunApi(a).patch_dag_run(dag_id, run_id, body))
        except AirflowAPIError:
            pass
        raise AirflowAPIError(f"trigger {dag_id} was accepted (run {run_id}, now marked failed) but should "
                              f"have been refused: conf {json.dumps(conf)[:300]}", status=200, detail=detail)

    def set_run_state(self, dag_id: str, run_id: str, state: str) -> dict[str, Any]:
        """Mark a run ``success`` or ``failed`` (as the UI does); the scheduler starts none of its
        remaining tasks."""
        body = ac.DAGRunPatchBody(state=ac.DagRunMutableStates(state))
        return self._call_retrying(f"set run {run_id} to {state}",
                          lambda a: _plain(ac.DagRunApi(a).patch_dag_run(dag_id, run_id, body)))

    def fail_runs(self, dag_id: str, run_ids: Iterable[str]) -> list[str]:
        """Mark runs failed (a run already finished is left as it is); the ids that could not be.

        Runs are failed, never deleted, under a working scheduler: Airflow 3.3's scheduler that
        meets a run deleted through the API between loading and scheduling it dies of
        ``ObjectDeletedError`` in ``_schedule_all_dag_runs`` and then hangs in ``LocalExecutor.end``,
        alive but scheduling nothing (seen in CI; ``docs/failure-modes.md``, "Operations").
        """
        left = []
        for run_id in run_ids:
            try:
                if self.run(dag_id, run_id)["state"] not in TERMINAL_RUN_STATES:
                    self.set_run_state(dag_id, run_id, "failed")
            except AirflowAPIError as exc:
                left.append(f"{run_id}: {exc}")
        return left

    def count_runs(self, dag_id: str, run_id_pattern: str) -> int:
        """How many runs of the DAG have an id matching ``run_id_pattern`` (SQL LIKE, as the API)."""
        page = self._call(f"GET runs {run_id_pattern} of {dag_id}", lambda a: ac.DagRunApi(a).get_dag_runs(
            dag_id, limit=1, run_id_pattern=run_id_pattern))
        return int(page.total_entries)

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._call(f"GET run {run_id} of {dag_id}",
                          lambda a: _plain(ac.DagRunApi(a).get_dag_run(dag_id, run_id)))

    def health(self) -> dict[str, Any]:
        """``GET /api/v2/monitor/health``: the metadata database and each component's latest heartbeat."""
        return self._call("GET health", lambda a: _plain(ac.MonitorApi(a).get_health()))

    def check_scheduler(self, stale_after: float = SCHEDULER_STALE_S) -> None:
        """Raise when the scheduler has not heartbeated for ``stale_after`` seconds (dead or hung:
        no run moves), naming what to run. No answer or a database away says nothing: passes."""
        from aifactory.local.supervisor import heartbeat_age

        try:
            health = self.health()
        except AirflowAPIError:
            return
        if (health.get("metadatabase") or {}).get("status") != "healthy":
            return
        age = heartbeat_age(health, "airflow-scheduler", datetime.now(UTC))
        if age is None or age >= stale_after:
            last = (health.get("scheduler") or {}).get("latest_scheduler_heartbeat") or "never"
            silent = "has never heartbeated" if age is None else f"has not heartbeated for {age:.0f}s"
            raise AirflowAPIError(
                f"the scheduler of {self.base_url} {silent} (last: {last}): it is dead or hung and no run "
                "moves. See `bash include/stack/stack.sh status` and .stack/log/supervisor.log (the "
                "supervisor restarts a hung scheduler after 60 s); `make up` starts one that is gone")

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900,
                     progress: Callable[[str], None] | None = None, *,
                     scheduler_stale_after: float = SCHEDULER_STALE_S, poll_s: float = RUN_POLL_S) -> dict[str, Any]:
        """Poll the run until it is finished; a transient API error (server error, no answer) is
        polled through until the deadline, since the run goes on without us. Fails early when the
        scheduler has not heartbeated for ``scheduler_stale_after`` seconds (checked every 30 s).
        The task instances are read only for ``progress`` and for the timeout's message."""
        deadline = time.monotonic() + timeout
        last = ""
        checked = time.monotonic()

        def line(run: dict[str, Any]) -> str:
            states = {t["task_id"]: t["state"] for t in self.task_instances(dag_id, run_id)}
            return f"run {run['state']}: " + ", ".join(f"{k}={v}" for k, v in states.items())

        while True:
            if time.monotonic() - checked >= 30:
                checked = time.monotonic()
                try:
                    self.check_scheduler(scheduler_stale_after)
                except AirflowAPIError as exc:
                    raise AirflowAPIError(f"run {run_id} of {dag_id} cannot finish: {exc}") from exc
            try:
                run = self.run(dag_id, run_id)
                now = line(run) if progress else ""
            except AirflowAPIError as exc:
                if not _transient(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(3)
                continue
            if progress and now != last:
                progress(now)
                last = now
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                raise AirflowAPIError(f"run {run_id} of {dag_id} not finished after {timeout:.0f}s ({now or line(run)})")
            time.sleep(poll_s)

    # -- task instances -------------------------------------------------------------------------
    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run (mapped ones included), all pages."""
        out: list[dict[str, Any]] = []
        while True:
            page = self._call(f"GET task instances of {run_id}", self._task_page(dag_id, run_id, len(out)))
            out += [_plain(t) for t in page.task_instances]
            if not page.task_instances or len(out) >= page.total_entries:
                return out

    @staticmethod
    def _task_page(dag_id: str, run_id: str, offset: int) -> Callable[[ac.ApiClient], Any]:
        return lambda a: ac.TaskInstanceApi(a).get_task_instances(
            dag_id, run_id, limit=_PAGE, offset=offset, order_by=["id"])

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, new_state: str) -> Any:
        """Mark a task instance (as a user does in the UI: "Mark as failed / success")."""
        body = ac.PatchTaskInstanceBody(new_state=ac.TaskInstanceState(new_state))
        out = self._call_retrying(f"set {task_id} of {run_id} to {new_state}",
                         lambda a: ac.TaskInstanceApi(a).patch_task_instance(dag_id, run_id, task_id, body))
        return _plain(out)

    def clear_tasks(self, dag_id: str, run_id: str, task_ids: list[str], *,
                    only_failed: bool = False, dry_run: bool = False) -> list[dict[str, Any]]:
        """Clear task instances of a run (as "Clear" in the UI) so the scheduler runs them again;
        the cleared task instances (``dry_run``: those that would be, and nothing changes; the
        same permission is checked)."""
        body = ac.ClearTaskInstancesBody(
            dag_run_id=run_id, dry_run=dry_run, only_failed=only_failed, reset_dag_runs=True,
            task_ids=[ac.ClearTaskInstancesBodyTaskIdsInner(t) for t in task_ids])
        out = self._call_retrying(f"clear {task_ids} of {run_id}",
                         lambda a: ac.TaskInstanceApi(a).post_clear_task_instances(dag_id, body))
        return [_plain(t) for t in out.task_instances]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        """One try's log as text, with each failure's exception type and message (``map_index``:
        one instance of a mapped task).

        Read from the answer's JSON, not the generated model: the model keeps ``event`` and
        ``timestamp`` only, and the failure's message travels in ``error_detail``.
        """
        out = self._call(f"GET log of {task_id} try {try_number}", lambda a: ac.TaskInstanceApi(
            a).get_log_with_http_info(dag_id, run_id, task_id, try_number, full_content=True, map_index=map_index))
        content = json.loads(out.raw_data).get("content") or []
        lines = []
        for entry in content if isinstance(content, list) else [content]:
            if not isinstance(entry, dict):
                lines.append(str(entry))
                continue
            lines.append(str(entry.get("event", "")))
            # a failure's message travels in error_detail, not in the event text
            for err in entry.get("error_detail") or []:
                if isinstance(err, dict):
                    lines.append(f"{err.get('exc_type')}: {err.get('exc_value')}")
        return "\n".join(lines)

    # -- XCom and assets ------------------------------------------------------------------------
    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        out = self._call(f"GET XCom {key} of {task_id}", lambda a: ac.XComApi(a).get_xcom_entry(
            dag_id, task_id, run_id, key, deserialize=True))
        value = out.actual_instance.value
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def extra_links(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, str | None]:
        """``{link name: URL or None}`` of one task instance (``GET .../taskInstances/{task}/links``).

        Read from the answer's JSON: the generated model (3.3.2) refuses the null URL of a link
        that has none for this task."""
        out = self._call(f"GET links of {task_id}", lambda a: ac.TaskInstanceApi(
            a).get_extra_links_without_preload_content(dag_id, run_id, task_id, map_index=map_index))
        if out.status != 200:
            raise AirflowAPIError(f"GET links of {task_id}: HTTP {out.status}", status=out.status,
                                  detail=out.data.decode(errors="replace")[:500])
        return dict(json.loads(out.data)["extra_links"])

    def patch_xcom(self, dag_id: str, run_id: str, task_id: str, value: Any, key: str = "return_value") -> Any:
        """Overwrite an XCom value (what anyone with edit rights on the run can do through the API)."""
        body = ac.XComUpdateBody(value=value, map_index=-1)
        out = self._call_retrying(f"PATCH XCom {key} of {task_id}", lambda a: ac.XComApi(a).update_xcom_entry(
            dag_id, task_id, run_id, key, body))
        return out.value

    def asset_events(self, *, source_dag_id: str, source_run_id: str) -> list[dict[str, Any]]:
        """The asset events a run emitted."""
        out = self._call(f"GET asset events of {source_run_id}", lambda a: ac.AssetApi(a).get_asset_events(
            source_dag_id=source_dag_id, source_run_id=source_run_id, limit=_PAGE))
        return [_plain(e) for e in out.asset_events]

    # -- backfills (Airflow 3's own: POST /api/v2/backfills, as the UI and `airflow backfill create`) --
    def backfill(self, dag_id: str, from_date: datetime, to_date: datetime, *, reprocess_behavior: str = "none",
                 max_active_runs: int = 10) -> dict[str, Any]:
        """Create a backfill of ``dag_id`` over the logical dates ``from_date``..``to_date``; the
        backfill as JSON (``id``, ``completed_at``...). ``reprocess_behavior``: ``none`` (dates with
        a run are left alone), ``failed`` or ``completed`` (their runs are run again). Not retried:
        a lost answer may have created it (see :meth:`backfills`)."""
        body = ac.BackfillPostBody(dag_id=dag_id, from_date=from_date, to_date=to_date,
                                   reprocess_behavior=ac.ReprocessBehavior(reprocess_behavior),
                                   max_active_runs=max_active_runs)
        return self._call(f"backfill {dag_id} {from_date:%Y-%m-%d}..{to_date:%Y-%m-%d}",
                          lambda a: _plain(ac.BackfillApi(a).create_backfill(body)))

    def backfills(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's backfills (first page)."""
        out = self._call(f"GET backfills of {dag_id}",
                         lambda a: ac.BackfillApi(a).list_backfills(dag_id, limit=_PAGE))
        return [_plain(b) for b in out.backfills]

    def wait_for_backfill(self, backfill_id: int, timeout: float = 900) -> dict[str, Any]:
        """Poll the backfill until the scheduler marks it completed (every run of it finished)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                out = self._call(f"GET backfill {backfill_id}",
                                 lambda a: _plain(ac.BackfillApi(a).get_backfill(backfill_id)))
            except AirflowAPIError as exc:
                if not _transient(exc) or time.monotonic() > deadline:
                    raise
                out = {}
            if out.get("completed_at"):
                return out
            if time.monotonic() > deadline:
                raise AirflowAPIError(f"backfill {backfill_id} not completed after {timeout:.0f}s")
            time.sleep(3)

    def queued_asset_events(self, dag_id: str) -> int:
        """How many asset events wait in Airflow's queue to start the next run of an asset-scheduled DAG
        (one per asset: events that land before the run starts are collapsed into it)."""
        out = self._call(f"GET queued asset events of {dag_id}",
                         lambda a: ac.AssetApi(a).get_dag_asset_queued_events(dag_id))
        return int(out.total_entries)
