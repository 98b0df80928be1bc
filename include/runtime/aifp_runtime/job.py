"""The job: its parameters, its stop/requeue life cycle and the entry point every recipe calls.

``params.json`` (written by the Slurm engine, never by a shell)::

    {"dataset_dir": "...", "output_dir": "<run dir>/output", "checkpoint_dir": "..." (optional),
     "hyperparameters": {...}, "job": {"tenant": ..., "recipe": ..., "job_name": ..., ...}}

Exit status of :func:`run`: 0 success (or stopped and requeued); 2 bad input, with one
``ERROR: ...`` line on stderr that says what to fix (:class:`BadInput`); a recipe's own status for
a :class:`JobFailed`; 143 stopped by SIGTERM without a requeue (cancelled); 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifp_runtime import contract, layout, outputs
from aifp_runtime.checkpoints import Checkpoints
from aifp_runtime.distributed import Dist, setup_distributed, teardown
from aifp_runtime.signals import StopRequest, can_requeue, requeue_self

EXIT_BAD_INPUT = 2
EXIT_TERMINATED = 143
#: the test-only pause after each step is capped: it exists to make jobs slow enough to preempt
MAX_TEST_STEP_PAUSE_S = 10.0


class JobFailed(Exception):
    """The job cannot finish; ``exit_code`` is its exit status, the message says what to do."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class BadInput(JobFailed):
    """The data or the parameters cannot be trained on; the message says what to fix."""

    exit_code = EXIT_BAD_INPUT


def log(message: str) -> None:
    # One unbuffered line per event: the trigger streams the Slurm log to Airflow from a byte offset.
    print(message, flush=True)


@dataclass(frozen=True)
class JobParams:
    """``params.json`` as the job received it; ``sha256`` is the digest the engine recorded."""

    path: Path
    raw: bytes
    sha256: str
    output_dir: Path
    dataset_dir: Path | None
    checkpoint_dir: Path
    hyperparameters: dict[str, Any]
    job: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @classmethod
    def load(cls, path: Path, defaults: Mapping[str, Any] | None = None) -> JobParams:
        """Read ``params.json``, applying ``defaults`` to the hyperparameters; BadInput naming the field."""
        path = Path(path).absolute()
        try:
            raw = path.read_bytes()
            params = json.loads(raw)
        except (OSError, ValueError) as exc:
            raise BadInput(f"cannot read params file {path}: {exc}") from exc
        if not isinstance(params, dict):
            raise BadInput(f"params file {path} is not a JSON object")
        for key in ("output_dir", "hyperparameters"):
            if key not in params:
                raise BadInput(f"params file {path} lacks the key {key!r}")
        if not isinstance(params["hyperparameters"], dict):
            raise BadInput("params file: hyperparameters must be an object")
        output_dir = Path(params["output_dir"])
        run_dir = str(output_dir.parent)
        return cls(
            path=path,
            raw=raw,
            sha256=contract.params_digest(raw),
            output_dir=output_dir,
            dataset_dir=Path(params["dataset_dir"]) if params.get("dataset_dir") else None,
            checkpoint_dir=Path(params.get("checkpoint_dir") or layout.run_checkpoint_dir(run_dir)),
            hyperparameters={**dict(defaults or {}), **params["hyperparameters"]},
            job=dict(params.get("job") or {}),
        )


class Job:
    """One run of a recipe: parameters, stop requests, checkpoints, requeue and outputs."""

    def __init__(self, params: JobParams, stop: StopRequest | None = None) -> None:
        hp = params.hyperparameters
        self.params = params
        self.stop = stop or StopRequest()
        self.max_requeues = int(hp.get("max_requeues", 0))
        self.checkpoints = Checkpoints(
            params.checkpoint_dir,
            every_steps=int(hp.get("checkpoint_every_steps", 0)),
            every_s=float(hp.get("checkpoint_every_minutes", 0)) * 60,
        )
        self.stopped = False
        self._dist: Dist | None = None
        self._pause: float | None = None
        self.started = time.time()

    # ---- distribution and stopping ----

    def distributed(self) -> Dist:
        if self._dist is None:
            self._dist = setup_distributed()
        return self._dist

    def stop_agreed(self, dist: Dist | None = None) -> bool:
        """True when any rank was asked to stop; every rank calls it at the same step and stops alike."""
        dist = dist or self.distributed()
        code = dist.agree_max(self.stop.code)
        if code:
            self.stop.note(StopRequest.name_of(code))
            self.stopped = True
        return self.stopped

    def stop_and_requeue(self, step: int, state: Callable[[], dict[str, Any]]) -> int:
        """Checkpoint (rank 0) and requeue the job if the signal means so; return the exit status."""
        dist = self.distributed()
        if dist.main:
            path = self.checkpoints.save(step, state())
            log(f"checkpoint: step={step} reason=stop-{self.stop.signal} file={path}")
            requeued = requeue_self(self.stop.signal or "", f"{self.stop.reason} at step={step}", self.max_requeues,
                                    log=log)
            return 0 if requeued else EXIT_TERMINATED
        return 0

    def checkpoint(self, step: int, state: Callable[[], dict[str, Any]], *, reason: str = "periodic",
                   force: bool = False) -> None:
        """Rank 0 saves a checkpoint when one is due (or ``force``); other ranks do nothing."""
        if not self.distributed().main or not (force or self.checkpoints.due(step)):
            return
        path = self.checkpoints.save(step, state())
        log(f"checkpoint: step={step} reason={reason} file={path}")

    def test_step_pause(self) -> None:
        """Tests only: pause after each step for as long as ``layout.slow_steps_switch_path`` says.

        The platform's tests write that file (beside the run directory, where only the platform
        writes) before the job starts, to make it slow enough to preempt; it is in no form.
        """
        if self._pause is None:
            self._pause = 0.0
            try:
                value = float(Path(layout.slow_steps_switch_path(str(self.params.run_dir))).read_text().strip())
                self._pause = min(max(value, 0.0), MAX_TEST_STEP_PAUSE_S) if math.isfinite(value) else 0.0
            except (OSError, ValueError):
                pass
            if self._pause:
                log(f"test: pausing {self._pause}s after each step (a test-only switch of the platform)")
        if self._pause:
            time.sleep(self._pause)

    # ---- outputs ----

    def prepare_outputs(self) -> None:
        """Rank 0: create the output directory and drop a stale marker before any output is written."""
        if self.distributed().main:
            self.params.output_dir.mkdir(parents=True, exist_ok=True)
            outputs.remove_stale_marker(self.params.output_dir)

    def write_outputs(self, files: Iterable[str], *, formats: Mapping[str, str] | None = None,
                      metrics: Mapping[str, Any] | None = None,
                      details: Mapping[str, Any] | None = None) -> contract.CompletionMarker:
        """Write the completion marker last (rank 0), recording this job's params digest."""
        marker = outputs.write_marker(
            self.params.output_dir, files, params_sha256=self.params.sha256, formats=formats, metrics=metrics,
            details=details, recipe=str(self.params.job.get("recipe") or ""),
            world_size=self._dist.world if self._dist else 1,
        )
        log(f"done: completion marker written with {len(marker.files)} files in {self.params.output_dir}")
        return marker


def run(main: Callable[[Job], int], *, defaults: Mapping[str, Any] | None = None,
        argv: list[str] | None = None, description: str = "", stop_signals: bool = True) -> int:
    """The entry point of every recipe: ``raise SystemExit(run(main))``.

    :param stop_signals: catch SIGTERM/SIGUSR1/SIGINT as stop requests (a job that checkpoints);
        False leaves their default action (the job ends at once), for jobs with nothing to save.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", required=True, type=Path, help="path of params.json")
    args = parser.parse_args(argv)
    stop = StopRequest()
    if stop_signals:
        stop.install()
    try:
        params = JobParams.load(args.params, defaults)
        job = Job(params, stop)
        if stop_signals:
            # The time-limit warning is only useful when the job can requeue itself: otherwise keep
            # training and hope to finish (every rank decides alike).
            stop.install(time_limit_warning=can_requeue(job.max_requeues))
        return int(main(job))
    except JobFailed as exc:
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    finally:
        teardown()
