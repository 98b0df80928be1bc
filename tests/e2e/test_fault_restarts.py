"""The cluster's sshd restarted mid-staging and the S3 endpoint restarted mid-export, in one run of
the demo pipeline (``docs/fault-suite.md``).

* sshd of the data-transfer node (where staging runs: the connections' ``transfer_host``): stopped the moment the stage task has made its private temporary directory on the cluster
  (files not yet sent), with every connection it served but the test's own, and kept down until
  that try has ended: the try fails saying the connection was lost, cannot remove its temporary
  directory over it, and the retry (sshd back) removes it (its own earlier try's) and stages the
  version once.
* S3 endpoint: stopped the moment the training job has written its completion marker, so the
  export runs against an endpoint that does not answer; it is brought back (moto keeps everything
  in memory: it comes back empty and ``stack.sh up`` onboards the tenants again) once that try has
  ended, and the retry publishes the model once, ``manifest.json`` last.
"""

from __future__ import annotations

import pytest
from faults import (
    DAG_ID,
    assert_one_of_each,
    component_down,
    dataset_name,
    dataset_path,
    run_path,
    sshd_down,
    train_job_name,
    trigger,
    versions,
    wait_for,
    wait_task,
)

from aifactory import layout

pytestmark = pytest.mark.e2e

#: a try of the task has ended, whichever way
TRY_ENDED = {"up_for_retry", "failed", "success"}


def test_sshd_restart_mid_staging_and_s3_restart_mid_export(api, s3_client):
    run_id, key = trigger(api, s3_client, "restarts")
    name = train_job_name(run_id)
    datasets = dataset_path(dataset_name(key))
    marker = run_path(name, "output", layout.COMPLETION_MARKER)

    # -- sshd, mid-staging
    wait_for(lambda: datasets.is_dir() and any(p.name.startswith(".staging-") for p in datasets.iterdir()),
             240, f"the stage's temporary directory in {datasets}", interval=0.01)
    with sshd_down("sshd-dtn", "AIFP_DTN_PORT") as sessions:
        assert sessions, "the stage task held no SSH connection"
        first = wait_task(api, run_id, "stage", TRY_ENDED, timeout=120)
    assert first["state"] == "up_for_retry", first
    log = api.task_log(DAG_ID, run_id, "stage", 1)
    assert ("the cluster's sshd did not answer or dropped the connection" in log
            or "ssh could not connect, log in or keep its connection (exit 255)" in log), log[-3000:]
    staged = wait_task(api, run_id, "stage", {"success"}, timeout=120)
    assert staged["try_number"] == 2, staged
    assert [p.name for p in datasets.iterdir()] == [api.xcom(DAG_ID, run_id, "ingest")["version"]]  # no leftovers
    assert len(versions(s3_client, layout.datasets_prefix("demo") + dataset_name(key) + "/")) == 1

    # -- S3 endpoint, mid-export
    wait_for(marker.is_file, 300, f"the job's completion marker {marker}", interval=0.1)
    with component_down("moto"):
        first = wait_task(api, run_id, "export", TRY_ENDED, timeout=180)
    assert first["state"] == "up_for_retry", first
    log = api.task_log(DAG_ID, run_id, "export", 1)
    assert "the object store did not answer" in log, log[-3000:]
    run = api.wait_for_run(DAG_ID, run_id, timeout=180)
    assert run["state"] == "success", run
    # the endpoint came back empty (moto keeps nothing): one model version, the dataset's are gone
    export = assert_one_of_each(api, s3_client, run_id, key, datasets=False)
    assert export["published"] is True
