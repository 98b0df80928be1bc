"""Probe entry point: behaves as params.json's hyperparameters say (reads no data, needs no packages).

It runs like every recipe: through the platform's fixed wrapper, with the platform job runtime
(``aifp_runtime``) writing its completion marker; only its behaviour is its own.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the run directory: aifp_runtime

from aifp_runtime import Job, run, write_atomic  # noqa: E402
from aifp_runtime.job import JobFailed, log  # noqa: E402
from aifp_runtime.signals import restart_count  # noqa: E402


def finish(job: Job) -> int:
    job.prepare_outputs()
    metrics = {"test_accuracy": 1.0, "restart_count": restart_count()}
    write_atomic(job.params.output_dir / "metrics.json", json.dumps(metrics).encode())
    job.write_outputs(["metrics.json"], metrics=metrics)
    return 0


def main(job: Job) -> int:
    import os

    hp = job.params.hyperparameters
    mode = hp["mode"]
    log(f"probe: mode={mode} restart_count={restart_count()} node={os.environ.get('SLURMD_NODENAME')}")
    if mode == "fail":
        raise JobFailed("probe: failing on purpose", int(hp.get("exit_code", 3)))
    if mode == "sleep" or (mode == "sleep_then_ok" and restart_count() == 0):
        time.sleep(float(hp.get("seconds", 0)))  # sleep_then_ok: a requeued run completes at once
    elif mode == "oom":
        hog = bytearray(3 * 1024**3)  # 3 GiB against --mem=1G
        hog[:: 4096] = b"1" * len(hog[:: 4096])
        time.sleep(float(hp.get("seconds", 30)))
    return finish(job)


if __name__ == "__main__":
    raise SystemExit(run(main, stop_signals=False))  # nothing to checkpoint: a signal ends it at once
