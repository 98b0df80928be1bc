"""The per-cluster poller: many triggers in one event loop share one connection and one query per
interval. A fake command runner answers in the real poll-output format; the triggers are real."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from aifactory.hpc.slurm import parse_poll_output
from operators.cluster_poller import ClusterPoller
from operators.triggers import SlurmJobTrigger

SACCT = "{id}|{name}|demo|debug|{state}|{exit}|00:00:02|cpu=1,mem=512M,node=1|vm|2026-01-01T00:00:00|" \
        "2026-01-01T00:00:00|2026-01-01T00:00:02|None"


class FakeCluster:
    """Answers poll commands like a cluster where job i finishes after ``finish_after[i]`` polls."""

    def __init__(self, finish_after: dict[str, int], fail_polls: int = 0):
        self.finish_after = finish_after
        self.names: dict[str, str] = {}
        self.commands: list[str] = []
        self.connections = 0
        self.fail_polls = fail_polls

    async def connect(self) -> object:
        self.connections += 1
        return object()

    async def run(self, conn: Any, command: str) -> tuple[int, str, str]:
        self.commands.append(command)
        await asyncio.sleep(0)
        if self.fail_polls:
            self.fail_polls -= 1
            raise OSError("Error reading SSH protocol banner")
        ids = re.search(r"--jobs=([0-9,]+)", command).group(1).split(",")
        squeue, sacct = [], []
        for job_id in ids:
            self.finish_after[job_id] -= 1
            name = self.names[job_id]
            if self.finish_after[job_id] > 0:
                squeue.append(f"{job_id}|{name}|RUNNING|None|0:01|N/A")
            else:
                state, code = ("FAILED", "3:0") if job_id.endswith("7") else ("COMPLETED", "0:0")
                sacct.append(SACCT.format(id=job_id, name=name, state=state, exit=code))
        out = "@@AIFP squeue rc=0\n" + "\n".join(squeue) + "\n"
        if sacct:
            out += "@@AIFP sacct rc=0\n" + "\n".join(sacct) + "\n"
        return 0, out + "@@AIFP end\n", ""


def make_triggers(cluster: FakeCluster, n: int, interval: float) -> list[SlurmJobTrigger]:
    triggers = []
    for i in range(n):
        job_id = str(100 + i)
        name = f"aifp-demo-{i:012x}"
        cluster.names[job_id] = name
        cluster.finish_after[job_id] = 2 + i % 3

        class T(SlurmJobTrigger):
            async def _refresh_certificate(self) -> None:
                return None  # plain-key logins (the certificate path: test_trigger.py)

            def _poller(self) -> ClusterPoller:
                return ClusterPoller.shared(
                    self.ssh_conn_id,
                    interval=self.interval,
                    factory=lambda: ClusterPoller(
                        key=self.ssh_conn_id, connect=cluster.connect, run=cluster.run,
                        parse=lambda out, ids, names: parse_poll_output(out, ids, names=names),
                        interval=self.interval, record_ticks=True,
                    ),
                )

        triggers.append(T(ssh_conn_id="hpc", job_id=job_id, job_name=name, log_path=f"/srv/x/slurm-{job_id}.out",
                          poll_interval=interval, poll_interval_floor=0.0, sacct_grace_polls=0))
    return triggers


async def _watch_all(triggers: list[SlurmJobTrigger]) -> list[dict]:
    async def first(t: SlurmJobTrigger) -> dict:
        async for event in t.run():
            return event.payload
        raise AssertionError("no event")

    return await asyncio.gather(*(first(t) for t in triggers))


def test_fifty_jobs_one_connection_one_query_per_interval():
    cluster = FakeCluster({})
    triggers = make_triggers(cluster, 50, interval=0.02)
    events = asyncio.run(_watch_all(triggers))
    by_id = {e["job_id"]: e for e in events}
    assert len(by_id) == 50
    assert by_id["107"]["status"] == "failed" and "exited with code 3" in by_id["107"]["message"]
    assert by_id["100"]["status"] == "succeeded" and by_id["100"]["accounting"]["elapsed_s"] == 2
    assert cluster.connections == 1
    # every job needs 2-4 polls; batched, the whole fleet needs as many commands as the slowest job
    assert len(cluster.commands) == 4
    assert all(c.count("$(squeue ") == 1 and c.count("$(sacct ") <= 1 for c in cluster.commands)
    assert not ClusterPoller.active()  # the poller went away with its last job


def test_poller_backs_off_for_everyone_and_reconnects():
    cluster = FakeCluster({}, fail_polls=2)
    triggers = make_triggers(cluster, 5, interval=0.01)
    events = asyncio.run(_watch_all(triggers))
    assert {e["status"] for e in events} <= {"succeeded", "failed"}
    assert cluster.connections == 3  # dropped twice, reopened
    assert len(cluster.commands) == 2 + 4


def test_cancelled_trigger_stops_asking_without_disturbing_others():
    cluster = FakeCluster({})
    triggers = make_triggers(cluster, 3, interval=0.01)
    cluster.finish_after["100"] = 10_000  # this one never finishes

    async def scenario() -> list[Any]:
        tasks = [asyncio.ensure_future(_watch_all([t])) for t in triggers]
        await asyncio.wait(tasks[1:], timeout=5)
        tasks[0].cancel()  # a triggerer shutting down or the task being cleared
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(scenario())
    assert isinstance(results[0], asyncio.CancelledError)
    assert [r[0]["status"] for r in results[1:]] == ["succeeded", "succeeded"]
    assert not any("scancel" in c for c in cluster.commands)


@pytest.mark.parametrize("interval", [0.02])
def test_poller_interval_is_the_smallest_asked_for(interval):
    async def scenario() -> float:
        cluster = FakeCluster({})
        p = ClusterPoller.shared("k", interval=5.0, factory=lambda: ClusterPoller(
            key="k", connect=cluster.connect, run=cluster.run, parse=lambda o, i, n: parse_poll_output(o, i, names=n),
            interval=5.0))
        p._ensure_running()
        q = ClusterPoller.shared("k", interval=interval, factory=lambda: pytest.fail("must reuse"))
        assert q is p
        p._task.cancel()
        return p.interval

    assert asyncio.run(scenario()) == interval
