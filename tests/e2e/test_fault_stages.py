"""One run of the demo pipeline fails at each stage in turn; the ``operator`` login clears it each
time through the REST API, and the run ends with one Slurm job, one dataset version and one model
version (``docs/fault-suite.md``, "each stage in turn").

Every fault is real and outside the code under test, and each is undone before its clear:

* ingest: the raw object is not there yet (uploaded before the clear);
* quality: the object store refuses the tenant's credential the quality report's key (an inline
  IAM Deny on the tenant's user, removed before the clear);
* stage: a symlink in the tenant's HPC datasets folder where the version goes (removed);
* train: the tenant's Slurm allocation (GrpTRESMins) is too small for the job (restored); while the
  run is failed there, one byte of the staged copy is flipped: the cleared train task finds it
  against the manifest before sbatch and sends that file again ("one byte flipped");
* export: the object store refuses the model's ``manifest.json`` (every other file is written: a
  half-written version that nothing treats as published), removed before the clear.

A refusal of the object store fails its task at once (no retry: only a policy change helps), naming
the operation and what to run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from faults import (
    DAG_ID,
    SPEC,
    allocation,
    assert_one_of_each,
    clear_from,
    dataset_name,
    dataset_path,
    model_name,
    set_allocation,
    slurm_jobs,
    train_job_name,
    trigger,
    upload_raw,
    versions,
    wait_failed,
)

from aifactory import layout
from aifactory.platform.objectstore import iam_user

pytestmark = pytest.mark.e2e


def iam(stack_env):
    """An IAM client with the platform's credential, as onboarding uses it."""
    import boto3

    return boto3.client("iam", endpoint_url=stack_env["AIFP_S3_ENDPOINT"],
                        aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"],
                        region_name=stack_env.get("AWS_DEFAULT_REGION", "us-east-1"))


def deny_put(iam_client, name: str, key_pattern: str) -> None:
    """An inline Deny of PutObject on ``key_pattern`` for the tenant's IAM user (its own policy,
    which onboarding leaves alone otherwise, stays as it is)."""
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "s3:PutObject",
                                                   "Resource": f"arn:aws:s3:::{SPEC.bucket}/{key_pattern}"}]}
    iam_client.put_user_policy(UserName=iam_user(SPEC), PolicyName=name, PolicyDocument=json.dumps(doc))


def allow_again(iam_client, name: str) -> None:
    iam_client.delete_user_policy(UserName=iam_user(SPEC), PolicyName=name)


def test_each_stage_fails_in_turn_then_clears_to_one_job_dataset_and_model(api, api_as, s3_client, stack_env):
    operator = api_as("operator")
    iam_client = iam(stack_env)
    budget = allocation()
    run_id, key = trigger(api, s3_client, "stages", upload=False)
    name, model = dataset_name(key), model_name(key)
    link = dataset_path(name)
    # the faults of quality, stage and export are in place from the start: none of them touches an
    # earlier stage (each is removed just before its stage is cleared); train's comes just before it
    deny_put(iam_client, "fault-quality", f"{layout.datasets_prefix(SPEC.tenant)}{name}/*/quality/*")
    deny_put(iam_client, "fault-export", f"{layout.models_prefix(SPEC.tenant)}{model}/*/{layout.MANIFEST_NAME}")
    link.symlink_to("/nonexistent/fault-suite")
    try:
        log = wait_failed(api, run_id, "ingest")
        assert "no object at" in log and "upload the dataset first" in log, log[-2000:]
        upload_raw(s3_client, key)
        clear_from(operator, run_id, "ingest")

        log = wait_failed(api, run_id, "quality")
        assert "the object store refused PutObject" in log and "make onboard" in log, log[-2000:]
        allow_again(iam_client, "fault-quality")
        clear_from(operator, run_id, "quality")

        log = wait_failed(api, run_id, "stage")
        assert "is a symlink" in log and "then clear the stage task" in log, log[-2000:]
        link.unlink()
        set_allocation("cpu=1")  # only now: the allocation is the tenant's, for every run of its
        clear_from(operator, run_id, "stage")

        log = wait_failed(api, run_id, "train")
        set_allocation(budget)
        assert "Not submitting: account" in log and "allocation left" in log, log[-2000:]
        assert slurm_jobs(train_job_name(run_id)) == []  # refused before anything was submitted
        # one byte of the staged copy flips while the run waits (a disk, or a job of the tenant)
        staged = Path(api.xcom(DAG_ID, run_id, "stage")["remote_dir"])  # the cluster's filesystem is this one
        victim = json.loads((staged / layout.MANIFEST_NAME).read_text())["files"][0]
        path = staged / victim["path"]
        with open(path, "r+b") as fh:
            fh.seek(victim["bytes"] // 2)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 0x01]))
        assert hashlib.sha256(path.read_bytes()).hexdigest() != victim["sha256"]
        clear_from(operator, run_id, "train")

        log = wait_failed(api, run_id, "export", timeout=420)
        assert "the object store refused PutObject" in log and "AccessDenied" in log, log[-2000:]
        half = versions(s3_client, f"{layout.models_prefix(SPEC.tenant)}{model}/")
        assert len(half) == 1 and layout.MANIFEST_NAME not in next(iter(half.values())), half  # not published
        allow_again(iam_client, "fault-export")
        clear_from(operator, run_id, "export")
        run = api.wait_for_run(DAG_ID, run_id, timeout=300)
        assert run["state"] == "success", run
    finally:
        for policy in ("fault-quality", "fault-export"):
            try:
                allow_again(iam_client, policy)
            except iam_client.exceptions.NoSuchEntityException:
                pass
        if link.is_symlink():
            link.unlink()
        set_allocation(budget)

    export = assert_one_of_each(api, s3_client, run_id, key)
    assert export["published"] is True
    # the flipped byte: found by the train task before sbatch, that one file sent again, verified
    tis = {t["task_id"]: t for t in api.task_instances(DAG_ID, run_id)}
    train_log = api.task_log(DAG_ID, run_id, "train", int(tis["train"]["try_number"]))
    assert "no longer matched the dataset's manifest: 1 file(s) re-staged" in train_log, train_log[-3000:]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == victim["sha256"]
