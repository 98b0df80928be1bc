"""One poller per cluster per triggerer process: every watched job, one SSH connection, one query.

HPC sites ban tight ``squeue`` loops (docs/failure-modes.md, 6) and sshd drops connections under fan-out
(item 10). So the triggers of one triggerer process do not poll on their own: each asks the
:class:`ClusterPoller` of its cluster for the next observation of its job, and the poller answers
all of them from ONE command per interval (``squeue`` for every job, ``sacct`` only for those that
left the queue, plus each job's new log bytes) over ONE long-lived SSH connection.

A poller lives in the triggerer's event loop; it is created by the first trigger that needs it,
and closes its connection and goes away once no trigger has asked for a whole interval. Triggers
keep their own state machine (:class:`operators.triggers.SlurmJobTrigger`); the poller only
observes, never submits or cancels.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aifactory.hpc.slurm import PollResult, poll_command

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[Any]]
Run = Callable[[Any, str], Awaitable[tuple[int, str, str]]]
Parse = Callable[[str, list[str], dict[str, str]], PollResult]


@dataclass
class _Request:
    job_name: str
    log_path: str | None
    log_offset: int
    future: asyncio.Future[PollResult]


@dataclass
class PollerStats:
    """Counters a bench or an operator can read (per poller)."""

    polls: int = 0
    jobs_polled_max: int = 0
    connections: int = 0
    squeue_calls: int = 0
    sacct_calls: int = 0
    failures: int = 0
    ticks: list[dict[str, Any]] = field(default_factory=list)


class ClusterPoller:
    """Batch the observations of every watched job of one cluster.

    :param key: the cluster's identity (its SSH connection id).
    :param connect: opens the SSH connection (pinned host key; see ``FactorySSHHook.aconnect``).
    :param run: runs one command on that connection: ``(exit status, stdout, stderr)``.
    :param parse: turns the command's output into a :class:`PollResult` for the requested jobs.
    :param interval: seconds between polls; the smallest interval any trigger asked for, never
        below the cluster's floor (the triggers enforce the floor before asking).
    :param max_log_bytes: log bytes read per job and poll.
    :param close: closes a connection (best effort).
    """

    #: live pollers of this process, by (event loop, cluster key)
    _registry: ClassVar[dict[tuple[int, str], ClusterPoller]] = {}

    def __init__(
        self,
        *,
        key: str,
        connect: Connect,
        run: Run,
        parse: Parse,
        interval: float,
        max_log_bytes: int = 65536,
        close: Callable[[Any], Awaitable[None]] | None = None,
        record_ticks: bool = False,
    ) -> None:
        self.key = key
        self._connect = connect
        self._run = run
        self._parse = parse
        self._close = close
        self.interval = float(interval)
        self.max_log_bytes = int(max_log_bytes)
        self.record_ticks = record_ticks
        self.stats = PollerStats()
        self._pending: dict[str, _Request] = {}
        self._wakeup = asyncio.Event()
        self._conn: Any = None
        self._command_started = 0.0
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------------------
    @classmethod
    def shared(cls, key: str, *, interval: float, factory: Callable[[], ClusterPoller]) -> ClusterPoller:
        """The poller of ``key`` in the running event loop; created by ``factory`` when missing."""
        loop_id = id(asyncio.get_running_loop())
        poller = cls._registry.get((loop_id, key))
        if poller is None or poller._task is None or poller._task.done():
            poller = factory()
            cls._registry[(loop_id, key)] = poller
        poller.interval = min(poller.interval, float(interval))
        return poller

    @classmethod
    def active(cls) -> list[ClusterPoller]:
        return list(cls._registry.values())

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            # A fresh context: the poller serves every trigger, so its log lines belong in the
            # triggerer's own log, not in the task log of whichever trigger happened to start it.
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"slurm-poller[{self.key}]", context=contextvars.Context()
            )

    async def observe(self, job_id: str, job_name: str, log_path: str | None, log_offset: int) -> PollResult:
        """Wait for the next poll and return what it saw of ``job_id`` (errors are shared)."""
        loop = asyncio.get_running_loop()
        request = _Request(job_name, log_path, int(log_offset), loop.create_future())
        self._pending[job_id] = request
        self._ensure_running()
        self._wakeup.set()
        try:
            return await request.future
        finally:
            # a cancelled trigger (triggerer shutdown, task cleared) simply stops asking
            if self._pending.get(job_id) is request:
                del self._pending[job_id]

    # ------------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        failures = 0
        try:
            while True:
                if not self._pending:
                    # Nobody is waiting: linger one interval for the next request, then go away.
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), timeout=max(self.interval, 1.0))
                    except TimeoutError:
                        return
                    continue
                batch = dict(self._pending)
                try:
                    results = await self._poll(batch)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # noqa: BLE001 - delivered to each waiting trigger
                    failures += 1
                    self.stats.failures += 1
                    await self._drop_connection()
                    for job_id, req in batch.items():
                        if not req.future.done():
                            req.future.set_exception(exc)
                        self._pending.pop(job_id, None)
                    # back off for everyone at once: the cluster is the one in trouble
                    await asyncio.sleep(min(self.interval * (2 ** min(failures, 6)), max(self.interval, 300.0)))
                    continue
                failures = 0
                for job_id, req in batch.items():
                    if self._pending.get(job_id) is req:
                        del self._pending[job_id]
                    if not req.future.done():
                        req.future.set_result(results[job_id])
                # the next command starts one interval after this one started (connecting excluded)
                spent = time.monotonic() - self._command_started
                await asyncio.sleep(max(self.interval - spent, 0.0))
        finally:
            await self._drop_connection()
            for key, poller in list(self._registry.items()):
                if poller is self:
                    del self._registry[key]
            for req in self._pending.values():
                if not req.future.done():
                    req.future.set_exception(ConnectionError(f"the poller of {self.key} stopped"))

    async def _poll(self, batch: dict[str, _Request]) -> dict[str, PollResult]:
        if self._conn is None:
            self._conn = await self._connect()
            self.stats.connections += 1
        started = self._command_started = time.monotonic()
        names = {job_id: req.job_name for job_id, req in batch.items()}
        logs = {job_id: (req.log_path, req.log_offset) for job_id, req in batch.items() if req.log_path}
        command = poll_command(list(batch), logs, max_log_bytes=self.max_log_bytes)
        rc, out, err = await self._run(self._conn, command)
        result = self._parse(out, list(batch), names)
        if rc != 0 and not result.errors:
            result.errors.append(f"poll command exited {rc}: {err.strip()[:300]}")
        squeue, sacct = out.count("@@AIFP squeue rc="), out.count("@@AIFP sacct rc=")
        self.stats.polls += 1
        self.stats.squeue_calls += squeue
        self.stats.sacct_calls += sacct
        self.stats.jobs_polled_max = max(self.stats.jobs_polled_max, len(batch))
        if self.record_ticks:
            self.stats.ticks.append(
                {"t": time.time(), "jobs": len(batch), "squeue": squeue, "sacct": sacct,
                 "connections": self.stats.connections}
            )
        log.info(
            "polled %d job(s) on %s in one command in %.2fs (squeue %d, sacct %d, connection #%d)",
            len(batch), self.key, time.monotonic() - started, squeue, sacct, self.stats.connections,
        )
        return {
            job_id: PollResult(
                jobs={job_id: result.jobs[job_id]} if job_id in result.jobs else {},
                errors=list(result.errors),
                logs={job_id: result.logs[job_id]} if job_id in result.logs else {},
                complete=result.complete,
            )
            for job_id in batch
        }

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._close is not None:
            await self._close(conn)
