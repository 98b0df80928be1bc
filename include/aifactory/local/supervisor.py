"""The local stack's supervisor of Airflow's components: what compose's ``restart: always`` (plus
a healthcheck) or a systemd unit with ``Restart=always`` and a watchdog do for a deployed Airflow.

``stack.sh up`` starts it (``python -m aifactory.local.supervisor run``); ``stack.sh down`` stops it
first. Every few seconds it judges each Airflow component (api-server, scheduler, dag-processor,
triggerer, and the Celery workers on a Celery stack) and restarts, through ``stack.sh restart
<component>`` (which ends everything the old one left behind first), one that

- died (its pid file's process is gone), or
- hangs: alive, past its start-up grace, without a heartbeat in Airflow's health endpoint
  (``/api/v2/monitor/health``: scheduler, triggerer, dag-processor) for ``HUNG_AFTER_S``, while the
  metadata database answers; an api-server that stopped answering that endpoint for as long.
  CI saw Airflow 3.3's scheduler alive but hung in ``LocalExecutor.end`` after an internal error,
  scheduling nothing; only its process was alive.

It never touches sshd, Slurm, moto, Postgres or Redis: other tests stop those on purpose and
bring them back with ``stack.sh up``. A component that keeps dying soon after each start is
restarted with an exponential back-off (``Backoff``). Everything it does, and why, goes to its
log (``.stack/log/supervisor.log``). ``check`` prints the same judgement for ``stack.sh status``.
Celery workers have no heartbeat in that endpoint: they are judged by their process only.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CORE_PARTS = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
CELERY_PARTS = ("airflow-celery-worker-1", "airflow-celery-worker-2")
#: component -> (section of the health answer, its heartbeat field)
HEARTBEATS = {
    "airflow-scheduler": ("scheduler", "latest_scheduler_heartbeat"),
    "airflow-triggerer": ("triggerer", "latest_triggerer_heartbeat"),
    "airflow-dag-processor": ("dag_processor", "latest_dag_processor_heartbeat"),
}
#: no heartbeat (or no answer from the api-server) for this long: hung. The scheduler heartbeats
#: every 2 s (airflow.cfg); a restart of a LocalExecutor scheduler ends its running tasks, so this
#: stays well above a slow loop on a loaded 2-core machine.
HUNG_AFTER_S = 60.0
#: a component just (re)started is not judged hung before this (imports, DB connect, first loop)
START_GRACE_S = 90.0
INTERVAL_S = 5.0


@dataclass(frozen=True)
class Verdict:
    component: str
    state: str  # running | starting | dead | hung
    reason: str

    @property
    def needs_restart(self) -> bool:
        return self.state in ("dead", "hung")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    out = datetime.fromisoformat(value)
    return out if out.tzinfo else out.replace(tzinfo=UTC)


def heartbeat_age(health: Mapping[str, Any] | None, component: str, now: datetime) -> float | None:
    """Seconds since the component's latest heartbeat in a health answer; None without one."""
    if health is None or component not in HEARTBEATS:
        return None
    section, key = HEARTBEATS[component]
    beat = parse_time((health.get(section) or {}).get(key))
    return None if beat is None else max(0.0, (now - beat).total_seconds())


def judge(component: str, *, pid: int | None, alive: bool, started: float | None, now: float,
          health: Mapping[str, Any] | None, api_silent_since: float | None,
          hung_after: float = HUNG_AFTER_S, grace: float = START_GRACE_S) -> Verdict:
    """One component's state from what was observed; pure, so each rule is unit-tested.

    ``started``: when its pid file was written (epoch s); ``health``: the last health answer, None
    when the api-server did not answer; ``api_silent_since``: since when it has not answered."""
    if not alive:
        return Verdict(component, "dead", "no process" if pid is None else f"process {pid} is gone")
    up_for = now - started if started is not None else grace
    if up_for < grace:
        return Verdict(component, "starting", f"pid {pid}, started {up_for:.0f}s ago")
    if component == "airflow-api-server":
        if api_silent_since is not None and now - api_silent_since >= hung_after:
            return Verdict(component, "hung", f"pid {pid} alive, /api/v2/monitor/health unanswered for "
                                              f"{now - api_silent_since:.0f}s")
        return Verdict(component, "running", f"pid {pid}")
    if component in HEARTBEATS:
        if health is None or (health.get("metadatabase") or {}).get("status") != "healthy":
            # no way to tell (api-server or database away): nothing is restarted on a guess
            return Verdict(component, "running", f"pid {pid} (heartbeat unknown: health endpoint or database away)")
        age = heartbeat_age(health, component, datetime.fromtimestamp(now, UTC))
        if age is None or age >= hung_after:
            # a heartbeat from before this process started is not its own
            seen = "never" if age is None else f"{age:.0f}s ago"
            return Verdict(component, "hung", f"pid {pid} alive, last heartbeat {seen} (limit {hung_after:.0f}s)")
        return Verdict(component, "running", f"pid {pid}, heartbeat {age:.0f}s ago")
    return Verdict(component, "running", f"pid {pid}")


@dataclass
class Backoff:
    """Restart delays of one component: the first restart at once; after each death within
    ``quick`` seconds of a start, the next waits twice as long (``base`` .. ``cap``); a component
    that ran ``quick`` seconds is forgiven."""

    base: float = 10.0
    cap: float = 300.0
    quick: float = 120.0
    failures: int = 0
    last_start: float | None = None

    def delay(self, now: float) -> float:
        """Seconds to wait before the next restart, counting this death."""
        if self.last_start is not None and now - self.last_start < self.quick:
            self.failures += 1
        else:
            self.failures = 0
        return 0.0 if self.failures == 0 else min(self.cap, self.base * 2 ** (self.failures - 1))

    def started(self, now: float) -> None:
        self.last_start = now


# -- observation --------------------------------------------------------------------------------
def parts(state: Path) -> tuple[str, ...]:
    executor = (state / "executor").read_text().strip() if (state / "executor").is_file() else "local"
    return CORE_PARTS + (CELERY_PARTS if executor == "celery" else ())


def process(state: Path, component: str) -> tuple[int | None, bool, float | None]:
    """(pid, alive and not a zombie, when the pid file was written)."""
    f = state / "run" / f"{component}.pid"
    try:
        pid, started = int(f.read_text().strip()), f.stat().st_mtime
    except (OSError, ValueError):
        return None, False, None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return pid, False, started
    return pid, stat.rsplit(")", 1)[1].split()[0] != "Z", started


def fetch_health(url: str, timeout: float = 10.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v2/monitor/health", timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


@dataclass
class Supervisor:
    state: Path
    url: str
    stack: Path
    log: Any = field(default=sys.stdout)
    backoff: dict[str, Backoff] = field(default_factory=dict)
    not_before: dict[str, float] = field(default_factory=dict)
    api_silent_since: float | None = None

    def say(self, msg: str) -> None:
        print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {msg}", file=self.log, flush=True)

    def verdicts(self, now: float) -> list[Verdict]:
        health = fetch_health(self.url)
        if health is None:
            self.api_silent_since = now if self.api_silent_since is None else self.api_silent_since
        else:
            self.api_silent_since = None
        out = []
        for c in parts(self.state):
            pid, alive, started = process(self.state, c)
            out.append(judge(c, pid=pid, alive=alive, started=started, now=now, health=health,
                             api_silent_since=self.api_silent_since))
        return out

    def step(self, now: float) -> None:
        for v in self.verdicts(now):
            if not v.needs_restart:
                continue
            b = self.backoff.setdefault(v.component, Backoff())
            if v.component not in self.not_before:
                wait = b.delay(now)
                self.not_before[v.component] = now + wait
                if wait:
                    self.say(f"{v.component} {v.state} ({v.reason}): it died {b.failures} time(s) within "
                             f"{b.quick:.0f}s of a start; backing off, next restart in {wait:.0f}s "
                             f"(see {self.state / 'log' / (v.component + '.log')})")
            if now < self.not_before[v.component]:
                continue
            self.restart(v)
            del self.not_before[v.component]
            b.started(time.time())

    def restart(self, v: Verdict) -> None:
        """``stack.sh restart``, holding ``run/supervisor.lock``: ``stack.sh up`` and ``down`` wait
        for it before they stop the supervisor, so no restart is cut off half way."""
        self.say(f"restarting {v.component}: {v.state} ({v.reason})")
        with (self.state / "run" / "supervisor.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            done = subprocess.run(["bash", str(self.stack), "restart", v.component], capture_output=True,
                                  text=True, timeout=300)
            # logged before the lock is released: stack.sh up/down stop the supervisor as soon as
            # they hold it, and what the restart said (the leftovers it ended) must not be lost
            for line in (done.stdout + done.stderr).splitlines():
                self.say(f"  {line}")
            if done.returncode:
                self.say(f"restart of {v.component} failed (exit {done.returncode}); tried again next round")

    def run(self, interval: float = INTERVAL_S) -> None:
        self.say(f"supervising {', '.join(parts(self.state))} (hung: no heartbeat for {HUNG_AFTER_S:.0f}s "
                 f"after a {START_GRACE_S:.0f}s start-up grace); pid {os.getpid()}")
        while True:
            self.step(time.time())
            time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aifactory.local.supervisor", description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=["run", "check"])
    ap.add_argument("--state", type=Path, required=True, help="the stack's state dir (.stack)")
    ap.add_argument("--url", required=True, help="the api-server, e.g. http://127.0.0.1:8080")
    ap.add_argument("--stack", type=Path, help="stack.sh (run: what restarts a component)")
    args = ap.parse_args(argv)
    sup = Supervisor(args.state, args.url, args.stack or Path("stack.sh"))
    if args.action == "run":
        sup.run()
        return 0
    rc, now = 0, time.time()
    sup.api_silent_since = now - HUNG_AFTER_S  # one look: an api-server that does not answer now is judged at once
    for v in sup.verdicts(now):
        state = {"running": "running", "starting": "starting"}.get(v.state, v.state.upper())
        print(f"  {v.component:<22} {state} ({v.reason})")
        rc |= v.state in ("dead", "hung")
    return rc


if __name__ == "__main__":
    sys.exit(main())
