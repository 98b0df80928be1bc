"""A site purges the tenant's scratch area while a run waits between stage and train: the cleared
train task stages the dataset again before sbatch, the job trains on it, and the run still ends with
one Slurm job, one dataset version and one model (``docs/layout.md#hpc-storage``).

The wait is real: the tenant's Slurm allocation is too small for the job, so the train task stops
before submitting anything; the purge is real too (the staged copy's whole folder is removed on the
cluster's file system, as a site's scratch cleaner does); then the allocation is restored and the
``operator`` login clears the train task through the REST API.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from faults import (
    DAG_ID,
    SPEC,
    allocation,
    assert_one_of_each,
    clear_from,
    set_allocation,
    slurm_jobs,
    task_instances,
    train_job_name,
    trigger,
    wait_failed,
)

from aifactory import layout
from aifactory.tenants import load_cluster

pytestmark = pytest.mark.e2e


def test_a_purged_scratch_area_is_staged_again_before_sbatch(api, api_as, s3_client):
    operator = api_as("operator")
    areas = SPEC.areas(load_cluster(SPEC.cluster))
    budget = allocation()
    set_allocation("cpu=1")  # the train task stops before sbatch: the window in which the site purges
    try:
        run_id, key = trigger(api, s3_client, "purge")
        log = wait_failed(api, run_id, "train")
        assert "Not submitting: account" in log, log[-2000:]
    finally:
        set_allocation(budget)
    assert slurm_jobs(train_job_name(run_id)) == []
    staged = api.xcom(DAG_ID, run_id, "stage")["remote_dir"]
    assert layout.path_inside(staged, layout.hpc_datasets_dir(areas)), staged  # on scratch
    files = sorted(p.name for p in Path(staged).glob(layout.SHARD_GLOB))
    assert files, staged
    shutil.rmtree(Path(staged).parent)  # the purge: every version of the dataset on scratch, gone

    clear_from(operator, run_id, "train")
    run = api.wait_for_run(DAG_ID, run_id, timeout=420)
    assert run["state"] == "success", run
    tries = task_instances(api, run_id)["train"]["try_number"]
    assert tries == 2, tries
    log = api.task_log(DAG_ID, run_id, "train", try_number=tries)  # the cleared task's own try
    assert f"stage: push {len(files)} file(s)" in log and staged in log, log[-3000:]  # all sent again
    assert (Path(staged) / layout.STAGING_MARKER).is_file()
    assert sorted(p.name for p in Path(staged).glob(layout.SHARD_GLOB)) == files
    # the run's directory, in the project area, was never touched by the purge
    assert layout.path_inside(api.xcom(DAG_ID, run_id, "train")["output_dir"], layout.runs_dir(areas))
    export = assert_one_of_each(api, s3_client, run_id, key)
    assert export["published"] is True
