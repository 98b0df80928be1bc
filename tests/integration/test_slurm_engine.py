"""The Slurm engine against the REAL local stack: sshd with a pinned host key, Slurm + slurmdbd.

Run with the stack up (``include/stack/stack.sh up``)::

    AIFP_SKIP_STACK_UP=1 .venv/bin/python -m pytest tests/integration/test_slurm_engine.py -m integration

What is covered: the hook's sync and async paths against the same pinned key (and refusal of a
wrong key), a tiny job submitted with our command builders that we then see COMPLETED and FAILED
through our parsers, the trigger's async poll loop on a real job, and the whole operator
(``deferrable=False``) running the tabular_classifier recipe end to end, then adopting that
finished job on a second execute instead of submitting again.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from state_store import Store  # noqa: E402  (tests/integration is on sys.path under pytest)

from aifactory.hpc.slurm import (
    JobState,
    Resources,
    TenantSlurmPolicy,
    accounting,
    build_sbatch_command,
    classify,
    job_comment,
    job_name,
    parse_poll_output,
    parse_sacct,
    parse_sbatch_output,
    poll_command,
    sacct_by_name_command,
    sbatch_argv,
    scancel_command,
    select_record,
)
from tests.conftest import tenant_areas

pytestmark = pytest.mark.integration

#: the demo tenant's own connection: tenant jobs run as the tenant's Unix user, in its 0700 area
CONN_ID = "aifactory_hpc_local_demo"
#: the demo tenant's areas on the local cluster (runs in the project area, datasets on scratch)
DEMO = tenant_areas("demo")
POLICY = TenantSlurmPolicy(account="demo", partitions=("debug",), max_cpus_per_task=2, max_mem_gb=4)


@pytest.fixture(scope="module")
def hook(stack_env):
    from operators.hooks import FactorySSHHook

    h = FactorySSHHook(ssh_conn_id=CONN_ID)
    yield h
    h.close()


@pytest.fixture()
def run_dir(hook):
    path = f"{DEMO.project}/runs/itest-{uuid.uuid4().hex[:10]}"
    rc, _, err = hook.run(f"mkdir -p -m 700 {path}")
    assert rc == 0, err
    return path


def _submit(hook, run_dir: str, script: str, tag: str) -> tuple[str, str]:
    with hook.sftp() as sftp:
        sftp.putfo(io.BytesIO(script.encode()), f"{run_dir}/job.sh")
    name = job_name("demo", "itest", run_dir, tag)
    argv = sbatch_argv(
        Resources.from_request({"cpus_per_task": 1, "mem_gb": 1, "time_limit_minutes": 2}, policy=POLICY),
        job_name=name,
        comment=job_comment("demo", "itest", run_dir, tag),
        chdir=run_dir,
        output_path=f"{run_dir}/slurm-%j.out",
        export_vars={"PATH": "/usr/bin:/bin"},
    )
    rc, out, err = hook.run(build_sbatch_command(argv, f"{run_dir}/job.sh"))
    assert rc == 0, err
    return parse_sbatch_output(out).job_id, name


def _wait(hook, job_id: str, name: str, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rc, out, err = hook.run(poll_command([job_id]))
        res = parse_poll_output(out, [job_id], names={job_id: name})
        obs = res.jobs[job_id]
        if obs.found and classify(obs.state) != "active" and obs.record is not None:
            return obs
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


# ------------------------------------------------------------------------------------------ hook


def test_sync_and_async_ssh_use_the_same_pinned_key(hook):
    rc, out, _ = hook.run("echo sync-ok; whoami")
    assert rc == 0 and out.split() == ["sync-ok", "aifp-demo"]
    rc, out, _ = asyncio.run(hook.run_async("echo async-ok"))
    assert rc == 0 and out.strip() == "async-ok"


def test_wrong_host_key_is_refused_sync_and_async(stack_env, monkeypatch):
    from operators.hooks import FactorySSHHook, SSHPermanentError

    conn = json.loads(os.environ["AIRFLOW_CONN_AIFACTORY_HPC_LOCAL"])
    # A valid ed25519 key that is not the server's.
    conn["extra"]["host_key"] = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    monkeypatch.setenv("AIRFLOW_CONN_AIFP_WRONG_KEY", json.dumps(conn))
    with pytest.raises(SSHPermanentError):
        FactorySSHHook(ssh_conn_id="aifp_wrong_key", connect_attempts=1).run("true")
    with pytest.raises(SSHPermanentError):
        asyncio.run(FactorySSHHook(ssh_conn_id="aifp_wrong_key", connect_attempts=1).run_async("true"))


# ------------------------------------------------------------------------------------------ engine


def test_completed_and_failed_jobs_through_our_parsers(hook, run_dir):
    ok_id, ok_name = _submit(hook, run_dir, "#!/bin/bash\necho hello from $SLURM_JOB_ID\n", "ok")
    obs = _wait(hook, ok_id, ok_name)
    assert obs.state is JobState.COMPLETED and obs.exit_code == 0
    acc = accounting(obs.record)
    assert acc["account"] == "demo" and acc["alloc_tres"].get("cpu", 0) >= 1

    bad_id, bad_name = _submit(hook, run_dir, "#!/bin/bash\necho failing >&2\nexit 3\n", "bad")
    obs = _wait(hook, bad_id, bad_name)
    assert obs.state is JobState.FAILED and obs.exit_code == 3 and classify(obs.state) == "failed"

    # The deterministic name finds the job again (what a retry does when the id was lost).
    rc, out, err = hook.run(sacct_by_name_command([bad_name], "now-1days"))
    assert rc == 0, err
    assert select_record(parse_sacct(out), name=bad_name).job_id == bad_id
    rc, out, _ = hook.run(f"cat {run_dir}/slurm-{ok_id}.out")
    assert f"hello from {ok_id}" in out


def test_cancelled_job_is_reported_as_cancelled(hook, run_dir):
    job_id, name = _submit(hook, run_dir, "#!/bin/bash\nsleep 120\n", "cancel")
    rc, _, err = hook.run(scancel_command([job_id]))
    assert rc == 0, err
    obs = _wait(hook, job_id, name)
    assert obs.state is JobState.CANCELLED and classify(obs.state) == "failed"


def test_trigger_watches_a_real_job(hook, run_dir):
    from operators.triggers import SlurmJobTrigger

    job_id, name = _submit(
        hook, run_dir, "#!/bin/bash\nfor i in 1 2 3; do echo line $i; sleep 1; done\nexit 0\n", "trig"
    )
    trigger = SlurmJobTrigger(
        ssh_conn_id=CONN_ID, job_id=job_id, job_name=name, log_path=f"{run_dir}/slurm-{job_id}.out",
        poll_interval=1, poll_interval_floor=1,
    )

    async def first():
        async for event in trigger.run():
            return event.payload

    event = asyncio.run(asyncio.wait_for(first(), timeout=120))
    assert event["status"] == "succeeded" and event["state"] == "COMPLETED" and event["exit_code"] == 0
    assert event["log_offset"] > 0 and event["accounting"]["elapsed_s"] >= 1


# ------------------------------------------------------------------------------------------ operator


def _stage_dataset(hook, dataset_dir: str) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 150)
    x = rng.normal(size=(150, 4)) + y[:, None] * 1.5
    table = pa.table({
        "sepal_length": x[:, 0], "sepal_width": x[:, 1], "petal_length": x[:, 2], "petal_width": x[:, 3],
        "species": np.array(["setosa", "versicolor", "virginica"])[y],
    })
    rc, _, err = hook.run(f"mkdir -p -m 700 {dataset_dir}")
    assert rc == 0, err
    with hook.sftp() as sftp:
        for i, part in enumerate((table.slice(0, 75), table.slice(75))):
            buf = io.BytesIO()
            pq.write_table(part, buf)
            sftp.putfo(io.BytesIO(buf.getvalue()), f"{dataset_dir}/part-{i:05d}.parquet")


def test_operator_trains_recipe_end_to_end_and_adopts_on_retry(hook, stack_env):
    from operators.slurm import STATE_KEY, SlurmJobOperator

    key = uuid.uuid4().hex[:10]
    dataset_dir = f"{DEMO.scratch}/datasets/itest-{key}/v1"
    _stage_dataset(hook, dataset_dir)
    op = SlurmJobOperator(
        task_id="train",
        tenant="demo",
        recipe="tabular_classifier",
        run_dir=f"{DEMO.project}/runs/itest-op-{key}",
        dataset_dir=dataset_dir,
        hyperparameters={
            "label_column": "species",
            "feature_columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
            "epochs": 5,
        },
        slurm_resources={"cpus_per_task": 1, "mem_gb": 2, "time_limit_minutes": 10},
        deferrable=False,
        poll_interval=2,
    )
    store = Store()
    ti = SimpleNamespace(dag_id="itest", run_id=f"manual__{key}", task_id="train", map_index=-1, try_number=1)
    context = {"ti": ti, "task_state_store": store}
    result = op.execute(context)
    assert result["state"] == "COMPLETED" and result["exit_code"] == 0 and not result["adopted"]
    assert store.data[STATE_KEY]["job_id"] == result["job_id"]
    metrics = result["metrics"]
    assert 0 <= metrics["test_accuracy"] <= 1
    assert metrics["n_train"] + metrics["n_test"] == 150 and 0 < metrics["n_test"] < 150  # held-out split
    assert {"model.pt", "model_config.json", "metrics.json"} <= set(result["outputs"])
    assert result["accounting"]["account"] == "demo"
    rc, out, _ = hook.run(f"stat -c %a {op.run_dir}; grep -c '^epoch=' {result['log_path']}")
    assert out.split() == ["700", "5"]
    # the job ran as the tenant's own Unix user, not the platform's service user
    rc, out, _ = hook.run(f"sacct -n -X -P -j {result['job_id']} -o User,Account")
    assert out.split() == ["aifp-demo|demo"]

    # A retry (worker died after the job finished): adopt, do not submit again.
    ti.try_number = 2
    again = SlurmJobOperator(**{**_op_kwargs(op)})
    result2 = again.execute({"ti": ti, "task_state_store": store})
    assert result2["adopted"] and result2["job_id"] == result["job_id"]
    # ...and also when the stored id was lost: found by the deterministic name.
    result3 = SlurmJobOperator(**_op_kwargs(op)).execute({"ti": ti, "task_state_store": Store()})
    assert result3["adopted"] and result3["job_id"] == result["job_id"]

    # The run id reused with new hyperparameters (a deleted run triggered again): never adopted; a new
    # job runs after the old outputs are moved aside, so its marker is the only one in output/.
    changed = SlurmJobOperator(**{**_op_kwargs(op), "hyperparameters": {**op.hyperparameters, "epochs": 2}})
    result4 = changed.execute({"ti": ti, "task_state_store": Store()})
    assert not result4["adopted"] and result4["job_id"] != result["job_id"]
    assert result4["metrics"]["epochs"] == 2 and result4["params_sha256"] != result["params_sha256"]
    rc, out, _ = hook.run(f"ls -d {op.run_dir}/output.superseded-*")
    assert rc == 0 and len(out.split()) == 1


def test_operator_bad_data_fails_with_clear_message(hook, stack_env):
    from airflow.providers.common.compat.sdk import AirflowException

    from operators.slurm import SlurmJobOperator

    key = uuid.uuid4().hex[:10]
    dataset_dir = f"{DEMO.scratch}/datasets/itest-{key}/v1"
    _stage_dataset(hook, dataset_dir)
    op = SlurmJobOperator(
        task_id="train", tenant="demo", recipe="tabular_classifier",
        run_dir=f"{DEMO.project}/runs/itest-bad-{key}", dataset_dir=dataset_dir,
        hyperparameters={"label_column": "species", "feature_columns": ["no_such_column"], "epochs": 1},
        deferrable=False, poll_interval=2,
    )
    ti = SimpleNamespace(dag_id="itest", run_id=f"manual__{key}", task_id="train", map_index=-1, try_number=1)
    with pytest.raises(AirflowException) as exc:
        op.execute({"ti": ti, "task_state_store": Store()})
    text = str(exc.value)
    assert "FAILED" in text or "failed" in text
    assert "exited with code 2" in text and "no_such_column" in text and "not found" in text


def _op_kwargs(op) -> dict[str, Any]:
    return dict(
        task_id=op.task_id, tenant=op.tenant, recipe=op.recipe, run_dir=op.run_dir,
        dataset_dir=op.dataset_dir, hyperparameters=op.hyperparameters,
        slurm_resources=op.slurm_resources, deferrable=False, poll_interval=2,
    )


def test_operator_deferrable_path(hook, stack_env):
    """execute() defers with a serializable trigger; the trigger's event resumes execute_complete()."""
    from airflow.providers.common.compat.sdk import TaskDeferred

    from operators.slurm import SlurmJobOperator
    from operators.triggers import SlurmJobTrigger

    key = uuid.uuid4().hex[:10]
    dataset_dir = f"{DEMO.scratch}/datasets/itest-{key}/v1"
    _stage_dataset(hook, dataset_dir)
    op = SlurmJobOperator(
        task_id="train", tenant="demo", recipe="tabular_classifier",
        run_dir=f"{DEMO.project}/runs/itest-defer-{key}", dataset_dir=dataset_dir,
        hyperparameters={"label_column": "species", "feature_columns": ["sepal_length", "petal_length"],
                         "epochs": 2},
        deferrable=True, poll_interval=2,
    )
    ti = SimpleNamespace(dag_id="itest", run_id=f"manual__{key}", task_id="train", map_index=-1, try_number=1)
    context = {"ti": ti, "task_state_store": Store()}
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    classpath, kwargs = deferred.value.trigger.serialize()
    assert classpath == "operators.triggers.SlurmJobTrigger"
    trigger = SlurmJobTrigger(**json.loads(json.dumps(kwargs)))  # what the triggerer rebuilds

    async def first():
        async for event in trigger.run():
            return event.payload

    event = asyncio.run(asyncio.wait_for(first(), timeout=180))
    # The plan travels with the deferral (and the task state store): finishing never re-plans.
    carried = json.loads(json.dumps(deferred.value.kwargs))
    assert carried["plan"]["job_name"] == trigger.job_name
    result = getattr(op, deferred.value.method_name)(context, event, **carried)
    assert result["state"] == "COMPLETED" and result["metrics"]["epochs"] == 2
    assert result["params_sha256"] == carried["plan"]["params_sha256"]
