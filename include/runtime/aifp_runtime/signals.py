"""Stop requests (SIGTERM, SIGUSR1, SIGINT) and the job requeueing itself.

SIGTERM is Slurm's preemption, ``scontrol requeue``, ``scancel`` and the time limit; SIGUSR1 is
``sbatch --signal=USR1@<s>``: the time limit is near. Either makes the job stop after its current
step, checkpoint, and (see :func:`requeue_self`) requeue itself; a requeued job resumes from its
checkpoint. ``max_requeues`` bounds how often (``docs/failure-modes.md#requeue``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable
from typing import Any

#: Job states in which the job requeues itself after a SIGTERM: still running (someone killed only
#: our step), its time limit hit, or preempted without Slurm requeueing it. A job being cancelled,
#: or being requeued by Slurm (``scontrol requeue``, PreemptMode=REQUEUE) shows CANCELLED,
#: COMPLETING, REQUEUED or PENDING and is left to Slurm.
SELF_REQUEUE_ON_TERM = ("RUNNING", "TIMEOUT", "PREEMPTED")
_CODES = {None: 0, "SIGUSR1": 1, "SIGINT": 2, "SIGTERM": 3}
_NAMES = {v: k for k, v in _CODES.items()}


def env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def restart_count() -> int:
    return env_int("SLURM_RESTART_COUNT", default=0)


class StopRequest:
    """Set by SIGTERM/SIGUSR1/SIGINT; the training loop looks at it between steps."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def install(self, *, time_limit_warning: bool = True) -> None:
        """Catch the stop signals; with ``time_limit_warning=False`` SIGUSR1 is ignored (the job cannot requeue)."""
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, self._handle)
        if not time_limit_warning:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    def _handle(self, signum: int, frame: Any) -> None:
        self.note(signal.Signals(signum).name)

    def note(self, name: str | None) -> None:
        # SIGTERM outranks USR1: a kill is coming, not only a warning.
        if name and (self.signal is None or name == "SIGTERM"):
            self.signal = name

    @property
    def code(self) -> int:
        return _CODES[self.signal]

    @staticmethod
    def name_of(code: int) -> str | None:
        return _NAMES.get(int(code))

    @property
    def reason(self) -> str:
        return {"SIGUSR1": "time limit near (SIGUSR1)"}.get(self.signal or "", str(self.signal))


def slurm_job_state(job_id: str) -> str:
    """JobState of our own job per ``scontrol show job`` ("" when unknown)."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"\bJobState=(\S+)", out)
    return match.group(1) if match else ""


def can_requeue(max_requeues: int) -> bool:
    """True when this job runs under Slurm and may requeue itself again."""
    return bool(os.environ.get("SLURM_JOB_ID")) and restart_count() < int(max_requeues)


def requeue_self(signal_name: str, reason: str, max_requeues: int, log: Callable[[str], None] = print) -> bool:
    """Requeue this Slurm job if that is what the signal means; return True if a requeue happens.

    SIGUSR1 means the time limit is near, so the job requeues itself. SIGTERM is ambiguous
    (cancel, requeue, preemption, time limit): the job requeues itself only in the states of
    :data:`SELF_REQUEUE_ON_TERM`, never when it is being cancelled. Never past ``max_requeues``.
    """
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        log(f"stop: {reason}; not running under Slurm, so not requeued: rerun to resume from the checkpoint")
        return False
    restarts = restart_count()
    state = slurm_job_state(job_id)
    if signal_name != "SIGUSR1" and state not in SELF_REQUEUE_ON_TERM:
        log(f"stop: {reason}; job {job_id} is {state or 'in an unknown state'}: left to Slurm (a requeued job "
            "resumes from the checkpoint; a cancelled one resumes when the train task is cleared)")
        return False
    if restarts >= max_requeues:
        log(f"stop: {reason}; job {job_id} was already requeued {restarts} times (max_requeues={max_requeues}): "
            "not requeued again. Raise the time limit, or clear the train task to resume from the checkpoint")
        return False
    r = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=30)
    answer = (r.stderr or r.stdout).strip()
    if r.returncode != 0 and "pending" in answer.lower():
        log(f"stop: {reason}; Slurm is already requeueing job {job_id}")
        return True
    if r.returncode != 0:
        log(f"stop: {reason}; scontrol requeue {job_id} failed (state {state or '?'}): {answer[:300]}. "
            "Clear the train task to resume from the checkpoint")
        return False
    log(f"stop: {reason}; requeued job {job_id} (restart {restarts + 1}); it resumes from the checkpoint")
    return True
