"""The stack's process tracking (include/stack/procs.sh) on real processes, in a state dir of its
own (no stack component is touched): a component that forks a child which renames itself as
Airflow's LocalExecutor workers do (setproctitle) and ignores SIGTERM; the leader is SIGKILLed
(its child is reparented to init), as the scheduler was.

- up's ``reap_leftovers``: after the leader is SIGKILLed, the orphan is found and ended;
- down's check (``survivors``): names every live member with its renamed command line, and
  nothing once ``stop_pid`` has stopped the component;
- both with the cgroup and with the session alone (machines without a writable cgroup2), and a
  session number reused by an unrelated process is never taken for the component's.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROCS = REPO / "include" / "stack" / "procs.sh"
TITLE = "airflow worker -- LocalExecutor: <idle>"
COMPONENT = textwrap.dedent(f"""
    import os, signal, sys, time
    import setproctitle
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:          # the worker: renamed, deaf to SIGTERM (reparented once its leader dies)
        setproctitle.setproctitle({TITLE!r})
        time.sleep(300)
    time.sleep(300)
""")


@pytest.fixture(params=["cgroup", "session"])
def procs(request, tmp_path):
    """``procs(script)``: run bash ``script`` with procs.sh sourced, in a fresh state dir."""
    (tmp_path / "component.py").write_text(COMPONENT)
    cgroup = request.param == "cgroup"

    def run(script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        body = f"""
            set -euo pipefail
            STATE={tmp_path}/state; RUN=$STATE/run; LOG=$STATE/log; mkdir -p "$RUN" "$LOG"
            say() {{ printf '[stack] %s\\n' "$*"; }}; die() {{ printf '[stack] ERROR: %s\\n' "$*" >&2; exit 1; }}
            source {PROCS}
            procs_init
            {'' if cgroup else 'CG_BASE=""'}
            {script}
        """
        return subprocess.run(["bash", "-c", body], capture_output=True, text=True, check=check, timeout=60)

    base = run('echo "$CG_BASE"').stdout.strip()
    if cgroup and not base:
        pytest.skip("no writable cgroup2 hierarchy on this machine: sessions only (the other case)")
    run.mode = request.param  # type: ignore[attr-defined]
    run(f"start_bg fake {os.environ.get('AIFP_VENV', REPO / '.venv')}/bin/python {tmp_path}/component.py")
    yield run
    run("stop_pid fake 1 >/dev/null", check=False)
    cg = f"aifp-{hashlib.sha256(str(tmp_path / 'state').encode()).hexdigest()[:12]}"  # procs_init's name
    for mount in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        for d in (mount / cg / "fake", mount / cg):
            if d.is_dir():
                d.rmdir()


def worker_pid(procs) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = procs("members fake").stdout.split()
        for pid in pids:
            if TITLE in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                return int(pid)
        time.sleep(0.1)
    raise AssertionError("the renamed worker never appeared among the component's members")


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_up_ends_what_a_killed_component_left_behind(procs):
    worker = worker_pid(procs)
    out = procs('kill -KILL "$(pid_of fake)"; sleep 0.3; reap_leftovers fake').stdout
    assert f"{worker}  {TITLE}" in out and "ignored SIGTERM" in out, out
    assert gone(worker)
    assert procs("members fake").stdout.strip() == ""


def test_the_down_check_names_every_survivor_and_nothing_after_stop(procs):
    worker = worker_pid(procs)
    left = procs("survivors fake").stdout
    assert "fake:" in left and f"{worker}  {TITLE}" in left, left
    procs("stop_pid fake 2")
    assert gone(worker)
    assert procs("survivors fake").stdout == ""


def test_a_reused_session_number_is_not_the_component(procs):
    worker = worker_pid(procs)
    # the leader's pid with another start time: what a new, unrelated process of that number shows
    members = procs('read -r sid t <"$RUN/fake.sid"; echo "$sid 1" >"$RUN/fake.sid"; members fake').stdout.split()
    if procs.mode == "session":
        assert str(worker) not in members, members
    else:  # the cgroup still holds it: the number does not matter there
        assert str(worker) in members, members


def test_the_orphan_check_sees_a_dead_leaders_leftovers_only(procs):
    worker = worker_pid(procs)
    assert procs("orphans fake").stdout == ""  # the worker is below its live leader
    out = procs('kill -KILL "$(pid_of fake)"; sleep 0.3; orphans fake').stdout
    assert "fake (leader" in out and f"{worker}  {TITLE}" in out, out


def test_a_dead_leader_is_not_alive_and_stopping_it_names_what_it_left(procs):
    """The supervisor's restart (stack.sh restart: stop_pid, then start_bg) of a SIGKILLed leader.
    Where PID 1 reaps no orphans (this machine and CI's container: measured) the leader stays a
    zombie, which ``kill -0`` takes for alive: up then kept the dead scheduler, and stop_pid ended
    its workers without saying so (CI lost 'airflow-scheduler died and left')."""
    worker = worker_pid(procs)
    out = procs('kill -KILL "$(pid_of fake)"; sleep 0.3; if alive fake; then echo ALIVE; fi; '
                'running "$(pid_of fake)" || echo NOT-RUNNING; stop_pid fake 2').stdout
    assert "ALIVE" not in out and "NOT-RUNNING" in out, out
    assert "fake died and left 1 process(es) behind" in out and f"{worker}  {TITLE}" in out, out
    assert "stopped fake" not in out, out  # nothing was running to stop
    assert gone(worker) and procs("members fake").stdout.strip() == ""
