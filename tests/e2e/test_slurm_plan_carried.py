"""The plan is fixed at submission: editing the tenant spec while a job runs does not fail it.

A platform engineer lowers the demo tenant's time limit below what a running job was submitted
with. The job's task finishes with the plan it carries (task state store, deferral kwargs); a
finish that re-planned from the edited spec would refuse the job's resources and fail the run.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_slurm_resilience import DAG_ID, start_long_run  # noqa: E402  (tests/e2e is on sys.path under pytest)

pytestmark = pytest.mark.e2e

TENANT_FILE = Path(__file__).resolve().parents[2] / "include" / "tenants" / "demo.yaml"


def test_tenant_limit_lowered_while_the_job_runs(api, s3_client):
    run_id, _ = start_long_run(api, s3_client)  # submitted with time_limit_minutes: 15
    original = TENANT_FILE.read_bytes()
    try:
        lowered = original.replace(b"max_time_limit_minutes: 60", b"max_time_limit_minutes: 5")
        assert lowered != original, "demo.yaml no longer has max_time_limit_minutes: 60; update this test"
        TENANT_FILE.write_bytes(lowered)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            state = {t["task_id"]: t["state"] for t in api.task_instances(DAG_ID, run_id)}.get("train")
            if state in ("success", "failed", "upstream_failed", "up_for_retry"):
                break
            time.sleep(2)
        assert state == "success", f"train ended {state}:\n{api.task_log(DAG_ID, run_id, 'train')[-3000:]}"
    finally:
        TENANT_FILE.write_bytes(original)  # restored as soon as train is done: other runs validate against it
    assert api.wait_for_run(DAG_ID, run_id, timeout=600)["state"] == "success"
