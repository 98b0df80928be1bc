"""Shared helpers of the benches: the stack's settings, the generated dataset, child-process timing.

The benches run against the running local stack (``.stack/stack.env``: the S3 endpoint, sshd).
The input is a synthetic tabular CSV (an integer id, a string label, 15 float features), about
170 bytes a row, so 5 million rows make ~850 MB. It is generated once per row count and cached
under ``bench/.data/`` (git-ignored).

Peak RSS is measured per child process (``os.wait4``), so every contender runs in its own process
and is measured the same way. Every Python child ends as Airflow's task runner ends a task process
(flush, then ``os._exit``: see ``airflow.sdk.execution_time.supervisor``), so no contender is timed
tearing down its interpreter, which no task in production does (for a process that imported Great
Expectations, that teardown alone is ~0.7 s on this machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / "bench" / ".data"
DEFAULT_ROWS = 5_000_000
FEATURES = 15
BUCKET = "aifactory"
TENANT = "benchmark"


def stack_env() -> dict[str, str]:
    """The local stack's environment (also put into ``os.environ``)."""
    sys.path.insert(0, str(REPO / "include"))
    from aifactory.local.localstack import read_env_file

    env = read_env_file()
    os.environ.update(env)
    return env


def s3_client(env: dict[str, str]) -> Any:
    from aifactory.data.s3 import make_client

    return make_client(
        endpoint_url=env["AIFP_S3_ENDPOINT"],
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
        region=env.get("AWS_DEFAULT_REGION", "us-east-1"),
    )


def csv_path(rows: int) -> Path:
    return DATA_DIR / f"synthetic-{rows}.csv"


def ensure_csv(rows: int, log: Any = print) -> Path:
    """Generate (once) the synthetic CSV with ``rows`` rows; return its path."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    path = csv_path(rows)
    if path.exists():
        return path
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    rng = np.random.default_rng(42)
    labels = np.array(["cat_a", "cat_b", "cat_c", "cat_d"])
    started = time.monotonic()
    chunk = 500_000
    with pcsv.CSVWriter(str(tmp), _schema()) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            cols: dict[str, Any] = {
                "id": pa.array(np.arange(start, start + n, dtype=np.int64)),
                "label": pa.array(labels[rng.integers(0, 4, n)]),
            }
            for i in range(FEATURES):
                cols[f"f{i:02d}"] = pa.array(np.round(rng.uniform(-100, 100, n), 6))
            writer.write_table(pa.table(cols, schema=_schema()))
    tmp.rename(path)
    log(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB, {rows} rows) in {time.monotonic() - started:.1f}s")
    return path


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [("id", pa.int64()), ("label", pa.string())] + [(f"f{i:02d}", pa.float64()) for i in range(FEATURES)]
    )


def feature_columns() -> list[str]:
    return [f"f{i:02d}" for i in range(FEATURES)]


@dataclass
class ChildRun:
    wall_s: float
    peak_mib: float
    output: str


#: Appended to every child's code: the end of an Airflow task process (flush, ``os._exit``).
_TASK_PROCESS_EXIT = "\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_sys.stderr.flush()\n_os._exit(0)\n"


def run_child(code: str, *args: str, env: dict[str, str] | None = None) -> ChildRun:
    """Run ``python -c code args`` in a fresh process; wall time and that child's peak RSS.

    The child ends like an Airflow task process (:data:`_TASK_PROCESS_EXIT`); an exception still
    fails it with Python's exit status 1 before that line."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO / "include"), str(REPO), full_env.get("PYTHONPATH", "")])
    if env:
        full_env.update(env)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", code + _TASK_PROCESS_EXIT, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env
    )
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child failed (exit {proc.returncode}):\n{out[-4000:]}")
    return ChildRun(wall_s=wall, peak_mib=usage.ru_maxrss / 1024.0, output=out)


def median_run(runs: list[ChildRun]) -> ChildRun:
    """The run with the median wall time (its own peak RSS and output)."""
    ordered = sorted(runs, key=lambda r: r.wall_s)
    return ordered[(len(ordered) - 1) // 2]


def scratch_dir() -> Path:
    """Working space of the benches, beside the cached data (git-ignored)."""
    path = DATA_DIR / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def ingested_dataset(s3: Any, rows: int) -> Any:
    """The synthetic CSV of ``rows`` rows in the bench tenant's raw area, ingested (content-addressed:
    a second call finds the version and converts nothing). Returns its DatasetManifest."""
    import tempfile

    from aifactory.data.ingest import ingest_dataset
    from aifactory.data.s3 import head, upload_file

    path = ensure_csv(rows)
    key = f"{TENANT}/raw/synthetic-{rows}.csv"
    info = head(s3, BUCKET, key)
    if info is None or info.size != path.stat().st_size:
        upload_file(s3, path, BUCKET, key)
    with tempfile.TemporaryDirectory(dir=scratch_dir()) as tmp:
        return ingest_dataset(s3, source_uri=f"s3://{BUCKET}/{key}", bucket=BUCKET, tenant=TENANT,
                              dataset_name=f"synthetic-{rows}", workdir=Path(tmp), log=lambda s: None)


def delete_prefix(s3: Any, prefix: str) -> None:
    """Remove the bench's objects (moto keeps everything in memory)."""
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", []) or []]
    for i in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]})


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)), flush=True)


def emit(figures: dict[str, Any]) -> None:
    """The last line: one JSON object with every figure."""
    print(json.dumps(figures, sort_keys=True), flush=True)


def machine_note() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (shared machine: figures are noisy)"
