"""The trigger that watches one Slurm job from the triggerer.

It only observes (docs/failure-modes.md, 7): it never submits, and it never cancels from ``run()`` or
``cleanup()`` - both also run when a triggerer restarts or hands the trigger to another triggerer.
The one exception is :meth:`SlurmJobTrigger.on_kill`, which Airflow 3.3 calls only when a user
marks the deferred task failed/succeeded or clears it (never on restart, redistribution or
timeout); it runs ``scancel`` so that a killed task does not leave its job burning the tenant's
allocation (docs/failure-modes.md, 8). Set ``cancel_on_kill=False`` to keep even that from happening.

One poll is ONE SSH command (:func:`aifactory.hpc.slurm.poll_command`): squeue for the job, sacct
only once it has left squeue's active states, and the new bytes of the job's log from an offset.
Batched (the default), every trigger of one triggerer process watching the same cluster shares
one :class:`~operators.cluster_poller.ClusterPoller`: one SSH connection and one such command per
interval for all of their jobs (``docs/failure-modes.md``, section 6). :meth:`SlurmJobTrigger._query`
is the seam; the state machine in :meth:`run` is the same either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from aifactory.errors import FactoryError
from aifactory.hpc.slurm import (
    JobObservation,
    PollResult,
    accounting,
    classify,
    describe,
    parse_poll_output,
    poll_command,
    scancel_command,
)
from operators.cluster_poller import ClusterPoller
from operators.hooks import FactorySSHHook, SSHCredentialPending, SSHPermanentError, backoff_delay

if TYPE_CHECKING:
    import asyncssh

__all__ = ["SlurmJobTrigger", "CLASSPATH"]

CLASSPATH = "operators.triggers.SlurmJobTrigger"


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "the cluster is unreachable right now" (retried until the deadline).

    asyncssh is imported here, not at module level: DAG files import this module and must parse
    without loading an SSH stack.
    """
    try:
        import asyncssh as _asyncssh
    except ImportError:  # pragma: no cover
        return (OSError, asyncio.TimeoutError)
    return (OSError, _asyncssh.Error, asyncio.TimeoutError)


class SlurmJobTrigger(BaseTrigger):
    """Poll one Slurm job until it finishes, streaming its log; yield exactly one event.

    The event payload (a dict) carries: ``status`` (``succeeded`` | ``failed`` | ``unknown`` |
    ``error``), ``job_id``, ``job_name``, ``state`` (Slurm's state name), ``raw_state``,
    ``exit_code``, ``signal``, ``reason``, ``message`` (from :func:`aifactory.hpc.slurm.describe`),
    ``accounting`` (dict or None), ``log_path``, ``log_offset`` (bytes already streamed), ``polls``.

    ``error`` means the trigger lost Slurm or SSH for longer than ``error_deadline_s``: the job
    may still be running, and a retry of the task reattaches to it.

    :param ssh_conn_id: the cluster's Airflow SSH connection.
    :param job_id: the Slurm job id.
    :param job_name: the job's deterministic name; sacct records of other jobs that reuse the id
        are ignored.
    :param log_path: the job's batch log (``--output``), streamed from ``log_offset``.
    :param log_offset: bytes of the log already shown.
    :param poll_interval: seconds between polls (raised to ``poll_interval_floor``).
    :param poll_interval_floor: the site's minimum interval (cluster spec).
    :param not_found_limit: consecutive clean polls in which neither squeue nor sacct knows the
        job before the trigger reports ``unknown``.
    :param sacct_grace_polls: polls to wait for sacct's record after squeue shows a final state
        (sacct lags the controller); after that the event is sent without accounting.
    :param error_deadline_s: how long SSH failures and "Unable to contact slurm controller" are
        retried before an ``error`` event.
    :param max_log_bytes: log bytes read per poll.
    :param command_timeout: seconds one poll command may take.
    :param cancel_on_kill: run ``scancel`` from :meth:`on_kill` (user action only).
    :param batched: watch through the process-wide :class:`~operators.cluster_poller.ClusterPoller`
        of this cluster (one SSH connection and one query per interval for every job the
        triggerer watches there). ``False`` polls alone (the worker-side inline watcher).
    """

    def __init__(
        self,
        *,
        ssh_conn_id: str,
        job_id: str,
        job_name: str,
        log_path: str,
        log_offset: int = 0,
        poll_interval: float = 30.0,
        poll_interval_floor: float = 2.0,
        not_found_limit: int = 5,
        sacct_grace_polls: int = 3,
        error_deadline_s: float = 1800.0,
        max_log_bytes: int = 65536,
        command_timeout: float = 60.0,
        cancel_on_kill: bool = True,
        batched: bool = True,
    ) -> None:
        super().__init__()
        self.batched = bool(batched)
        self.ssh_conn_id = ssh_conn_id
        self.job_id = str(job_id)
        self.job_name = job_name
        self.log_path = log_path
        self.log_offset = int(log_offset)
        self.poll_interval = float(poll_interval)
        self.poll_interval_floor = float(poll_interval_floor)
        self.not_found_limit = int(not_found_limit)
        self.sacct_grace_polls = int(sacct_grace_polls)
        self.error_deadline_s = float(error_deadline_s)
        self.max_log_bytes = int(max_log_bytes)
        self.command_timeout = float(command_timeout)
        self.cancel_on_kill = bool(cancel_on_kill)
        # Fail at defer() time, in the worker, rather than later in the triggerer.
        poll_command([self.job_id], {self.job_id: (self.log_path, self.log_offset)})

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            CLASSPATH,
            {
                "ssh_conn_id": self.ssh_conn_id,
                "job_id": self.job_id,
                "job_name": self.job_name,
                "log_path": self.log_path,
                "log_offset": self.log_offset,
                "poll_interval": self.poll_interval,
                "poll_interval_floor": self.poll_interval_floor,
                "not_found_limit": self.not_found_limit,
                "sacct_grace_polls": self.sacct_grace_polls,
                "error_deadline_s": self.error_deadline_s,
                "max_log_bytes": self.max_log_bytes,
                "command_timeout": self.command_timeout,
                "cancel_on_kill": self.cancel_on_kill,
                "batched": self.batched,
            },
        )

    @property
    def interval(self) -> float:
        return max(self.poll_interval, self.poll_interval_floor)

    # ---------------------------------------------------------------------------------------------
    # Seams (tests replace these; batched, _query goes through the cluster's shared poller)
    # ---------------------------------------------------------------------------------------------

    def _hook(self) -> FactorySSHHook:
        # Few connect attempts per call: the loop in run() owns the longer backoff and deadline.
        return FactorySSHHook(ssh_conn_id=self.ssh_conn_id, connect_attempts=2)

    async def _connect(self) -> asyncssh.SSHClientConnection | None:
        if self.batched:
            return None  # the cluster's poller owns the one shared connection
        return await self._hook().aconnect()

    async def _run(self, conn: Any, command: str) -> tuple[int, str, str]:
        return await FactorySSHHook.run_on(conn, command, timeout=self.command_timeout)

    async def _pause(self, delay: float) -> None:
        """Wait between polls. Batched: the poller's next tick is the wait, so none here."""
        if not self.batched:
            await asyncio.sleep(delay)

    def _poller(self) -> ClusterPoller:
        hook = self._hook()

        def factory() -> ClusterPoller:
            return ClusterPoller(
                key=self.ssh_conn_id,
                connect=hook.aconnect,
                run=self._run,
                parse=lambda out, ids, names: parse_poll_output(out, ids, names=names),
                interval=self.interval,
                max_log_bytes=self.max_log_bytes,
                close=self._close,
            )

        return ClusterPoller.shared(self.ssh_conn_id, interval=self.interval, factory=factory)

    async def _query(
        self, conn: Any, jobs: Mapping[str, str], logs: Mapping[str, tuple[str, int]]
    ) -> PollResult:
        """Observe several jobs (``{job_id: job_name}``) and read their logs in ONE command."""
        if self.batched:
            (job_id, name), = jobs.items()
            path, offset = logs.get(job_id, (None, 0))
            return await self._poller().observe(job_id, name, path, offset)
        command = poll_command(list(jobs), logs, max_log_bytes=self.max_log_bytes)
        rc, out, err = await self._run(conn, command)
        result = parse_poll_output(out, list(jobs), names=jobs)
        if rc != 0 and not result.errors:
            result.errors.append(f"poll command exited {rc}: {err.strip()[:300]}")
        return result

    @staticmethod
    async def _close(conn: Any) -> None:
        if conn is None:
            return
        try:
            conn.close()
            await conn.wait_closed()
        except Exception:  # teardown is best effort
            pass

    # ---------------------------------------------------------------------------------------------
    # Certificates (docs/ssh-logins.md): renewed while watching, waited for when renewal fails
    # ---------------------------------------------------------------------------------------------

    #: seconds between tries while no valid login certificate can be had
    credential_retry_s = 15.0
    #: the same "waiting" message is repeated in the log at most this often
    credential_log_every_s = 60.0

    async def _refresh_certificate(self) -> None:
        """Renew the login certificate when due (every poll: a watch outlives short certificates,
        and the shared connection's next login needs a valid one). A failed renewal while the
        certificate is still valid is logged; with none valid, :class:`SSHCredentialPending`."""
        hook = self.__dict__.get("_cert_hook")
        if hook is None:
            hook = self.__dict__["_cert_hook"] = self._hook()  # its endpoint is read once
        fresh = await hook.arefresh_certificate()
        if fresh is not None and fresh.message:
            if fresh.renewed:
                self.log.info("%s", fresh.message)
            else:
                self._say(fresh.message)

    def _say_waiting(self, why: str) -> None:
        self._say(f"Slurm job {self.job_id} keeps running; its watch cannot log in yet and waits "
                  f"{self.credential_retry_s:.0f}s between tries: {why}")

    def _say(self, message: str) -> None:
        """Warn, without repeating the same line more often than every ``credential_log_every_s``."""
        now = time.monotonic()
        said: dict[str, float] = self.__dict__.setdefault("_said", {})
        if message not in said or now - said[message] >= self.credential_log_every_s:
            self.log.warning("%s", message)
            said[message] = now

    async def _pause_always(self, delay: float) -> None:
        """Wait even when batched (the poller is not ticking for a trigger that cannot log in)."""
        await asyncio.sleep(delay)

    # ---------------------------------------------------------------------------------------------
    # The poll loop
    # ---------------------------------------------------------------------------------------------

    def _event(self, status: str, obs: JobObservation | None, message: str, polls: int) -> TriggerEvent:
        record = obs.record if obs is not None else None
        return TriggerEvent(
            {
                "status": status,
                "job_id": self.job_id,
                "job_name": self.job_name,
                "state": str(obs.state) if obs else "UNKNOWN",
                "raw_state": obs.raw_state if obs else "",
                "exit_code": obs.exit_code if obs else None,
                "signal": obs.signal if obs else None,
                "reason": obs.reason if obs else "",
                "message": message,
                "accounting": accounting(record) if record is not None else None,
                "log_path": self.log_path,
                "log_offset": self.log_offset,
                "polls": polls,
            }
        )

    def _emit_log(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            self.log.info("[slurm %s] %s", self.job_id, line)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        conn: Any = None
        polls = 0
        not_found = 0
        sacct_wait = 0
        trouble_since: float | None = None
        failures = 0
        last_status: tuple[str, str] | None = None
        try:
            while True:
                try:
                    await self._refresh_certificate()
                except SSHCredentialPending as exc:
                    # An open connection outlives its login's certificate: keep polling over it;
                    # a connect that needs a new login waits below.
                    self._say(f"{exc}. Polling Slurm job {self.job_id} goes on over the open connection "
                              "while it lasts")
                except (AirflowException, FactoryError, OSError) as exc:
                    # the connection could not be read, or ssh-keygen failed: the connect below
                    # meets the same problem and handles it (retried until the deadline)
                    self._say(f"checking the login certificate of job {self.job_id}'s watch failed: {exc}")
                try:
                    if conn is None:
                        conn = await self._connect()
                    result = await self._query(
                        conn, {self.job_id: self.job_name}, {self.job_id: (self.log_path, self.log_offset)}
                    )
                except SSHCredentialPending as exc:
                    # No valid certificate and its renewal failed: the job is not affected, so the
                    # watch waits (not counted against the error deadline) and says why.
                    await self._close(conn)
                    conn = None
                    self._say_waiting(str(exc))
                    await self._pause_always(self.credential_retry_s)
                    continue
                except SSHPermanentError as exc:
                    # Wrong host key or refused login: waiting for the deadline would only hide it.
                    yield self._event("error", None, f"Cannot watch Slurm job {self.job_id}: {exc}", polls)
                    return
                except (*_connection_errors(), AirflowException) as exc:
                    # Dropped connections, throttled handshakes, timeouts: retried until the deadline.
                    await self._close(conn)
                    conn = None
                    result = PollResult(errors=[f"{type(exc).__name__}: {exc}"])
                polls += 1

                data, new_offset = result.logs.get(self.job_id, (b"", self.log_offset))
                if data:
                    self._emit_log(data)
                    self.log_offset = new_offset

                obs = result.jobs.get(self.job_id)
                if result.errors and (obs is None or not obs.found):
                    # Slurm or SSH did not answer: transient until the deadline (docs/failure-modes.md, 4 and 10).
                    now = time.monotonic()
                    trouble_since = trouble_since or now
                    failures += 1
                    if now - trouble_since > self.error_deadline_s:
                        yield self._event(
                            "error",
                            obs,
                            f"Lost contact with Slurm for job {self.job_id} for more than "
                            f"{self.error_deadline_s:.0f}s ({'; '.join(result.errors)}). The job may "
                            "still be running: check the cluster; a retry of this task reattaches to it",
                            polls,
                        )
                        return
                    delay = min(backoff_delay(failures, base=self.interval), max(self.interval, 300.0))
                    self.log.warning(
                        "Slurm poll for job %s failed (%d in a row): %s; retrying in %.0fs",
                        self.job_id, failures, "; ".join(result.errors), delay,
                    )
                    await self._pause(delay)
                    continue
                trouble_since, failures = None, 0

                if obs is None or not obs.found:
                    # Neither squeue nor sacct knows the job, and both answered. Never success
                    # (docs/failure-modes.md, 2); give sacct a few polls to catch up first.
                    not_found += 1
                    if not_found >= self.not_found_limit:
                        yield self._event(
                            "unknown",
                            obs,
                            describe("UNKNOWN", job_id=self.job_id)
                            + f" (not found in {not_found} consecutive polls)",
                            polls,
                        )
                        return
                    await self._pause(self.interval)
                    continue
                not_found = 0

                outcome = classify(obs.state)
                if outcome == "active":
                    status = (str(obs.state), obs.reason, obs.expected_start)
                    if status != last_status:
                        # Log transitions only, so a job pending for hours does not flood the log.
                        self.log.info(
                            "%s",
                            describe(obs.state, job_id=self.job_id, reason=obs.reason,
                                     expected_start=obs.expected_start),
                        )
                        last_status = status
                    await self._pause(self.interval)
                    continue

                if obs.record is None and sacct_wait < self.sacct_grace_polls:
                    # Final per squeue, but sacct has no record yet: wait for exit code and usage.
                    sacct_wait += 1
                    await self._pause(self.interval)
                    continue

                message = describe(
                    obs.raw_state or obs.state,
                    job_id=self.job_id,
                    reason=obs.reason,
                    exit_code=obs.exit_code,
                    signal=obs.signal,
                )
                yield self._event(outcome, obs, message, polls)
                return
        finally:
            await self._close(conn)

    async def on_kill(self) -> None:
        """Cancel the job when a USER kills the deferred task (never on triggerer restarts)."""
        if not self.cancel_on_kill:
            return
        self.log.info("Task killed by user action: cancelling Slurm job %s", self.job_id)
        rc, out, err = await self._hook().run_async(scancel_command([self.job_id]), timeout=20)
        if rc != 0:
            self.log.warning("scancel %s exited %d: %s", self.job_id, rc, (err or out).strip()[:300])
