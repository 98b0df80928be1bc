"""Planning a job (pure), the plan carried with the job, and the operator acting on the decision.

The operator tests use a fake SSH hook (a unit test of the adapter's logic); the real sshd and
Slurm are exercised in tests/integration/test_slurm_engine.py and tests/e2e.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from aifactory import layout
from aifactory.errors import InputError
from aifactory.hpc.slurm import JobPlan, TaskIds, plan_job
from aifactory.models.recipes import load_recipes
from aifactory.tenants import load_cluster, parse_tenant

TENANT = {
    "tenant": "demo", "cluster": "local", "recipes": ["tabular_classifier"], "bucket": "aifactory",
    "quality_suite": "tabular_default",
    "slurm": {"account": "demo", "partitions": ["debug"], "qos": None},
    "limits": {"max_nodes": 1, "max_gpus_per_node": 0, "max_cpus_per_task": 2, "max_mem_gb": 4,
               "max_time_limit_minutes": 60},
    "identity": {"unix_user": "aifp-demo", "ssh_conn_id": "aifactory_hpc_local_demo", "s3_conn_id": "aifactory_s3_demo"},
    "allocation": {"cpu_hours": 10, "gpu_hours": 0, "contact": "support@example.eu"},
}
TI = SimpleNamespace(dag_id="factory_demo", run_id="manual__2026-01-01T00:00:00+00:00", task_id="train",
                     map_index=-1, try_number=1)
CTX = {"ti": TI}
HP = {"label_column": "species", "feature_columns": ["a", "b"]}
#: the local cluster's areas of this tenant (include/clusters/local.yaml: project per account, scratch per user)
PROJECT, SCRATCH = "/srv/aifactory/project/demo", "/srv/aifactory/scratch/aifp-demo"
DATASET = f"{SCRATCH}/datasets/iris/v1"


def _plan(**over: Any) -> JobPlan:
    args: dict[str, Any] = dict(hyperparameters=HP, resources={"cpus_per_task": 1}, dataset_dir=DATASET,
                                task=TaskIds(dag_id=TI.dag_id, run_id=TI.run_id, task_id="train", try_number=1))
    args.update(over)
    return plan_job(parse_tenant(TENANT, "t"), load_cluster("local"), load_recipes()["tabular_classifier"], **args)


def test_plan_is_pure_and_complete():
    plan = _plan()
    assert plan.job_name.startswith("aifp-demo-") and layout.JOB_NAME_RE.fullmatch(plan.job_name)
    assert plan.areas == parse_tenant(TENANT, "t").areas(load_cluster("local")) == layout.TenantAreas(PROJECT, SCRATCH)
    assert plan.run_dir == f"{PROJECT}/runs/{plan.job_name}" == layout.run_dir(plan.areas, plan.job_name)
    assert plan.output_dir == layout.run_output_dir(plan.run_dir)
    assert plan.marker_path == f"{plan.output_dir}/{layout.COMPLETION_MARKER}"
    assert plan.resources["account"] == "demo" and plan.hyperparameters["seed"] == 42
    assert "--account=demo" in plan.sbatch_command and "AIFP_PYTHON=/srv/aifactory/venv/bin/python" in plan.sbatch_command
    assert plan.script_path.startswith(plan.run_dir + "/")
    doc = json.loads(plan.params_json)
    assert doc["hyperparameters"]["label_column"] == "species" and doc["job"]["job_name"] == plan.job_name
    assert len(plan.params_sha256) == 64


def test_params_digest_is_the_same_for_every_try_and_changes_with_the_hyperparameters():
    first = _plan()
    retry = _plan(task=TaskIds(dag_id=TI.dag_id, run_id=TI.run_id, task_id="train", try_number=3))
    assert retry.params_sha256 == first.params_sha256 and retry.comment != first.comment
    other = _plan(hyperparameters={**HP, "epochs": 7})
    assert other.params_sha256 != first.params_sha256 and other.job_name == first.job_name


def test_plan_round_trips_through_json_and_rechecks_what_it_carries():
    plan = _plan()
    assert JobPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    with pytest.raises(InputError, match="version"):
        JobPlan.from_json({**plan.to_json(), "version": 99})
    with pytest.raises(InputError, match="inside"):
        JobPlan.from_json({**plan.to_json(), "run_dir": "/srv/aifactory/project/other/runs/x"})
    with pytest.raises(InputError):
        JobPlan.from_json({**plan.to_json(), "sbatch_argv": ["--account=demo\n#SBATCH"]})


def test_a_gpu_plan_asks_for_typed_gpus_with_one_rank_each_and_carries_the_type():
    gpu_tenant = {**TENANT, "slurm": {**TENANT["slurm"], "gpu_types": ["a100"]},
                  "limits": {**TENANT["limits"], "max_nodes": 2, "max_gpus_per_node": 2}}
    plan = plan_job(parse_tenant(gpu_tenant, "t"), load_cluster("local"), load_recipes()["tabular_classifier"],
                    hyperparameters=HP, resources={"nodes": 2, "gpus_per_node": 2}, dataset_dir=DATASET,
                    task=TaskIds(dag_id=TI.dag_id, run_id=TI.run_id, task_id="train", try_number=1))
    assert {"--nodes=2", "--ntasks-per-node=2", "--gres=gpu:a100:2"} <= set(plan.sbatch_argv)
    assert plan.job_resources.gpu_type == "a100" and json.loads(plan.params_json)["job"]["resources"]["gpu_type"] == "a100"
    assert JobPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"run_dir": "/srv/aifactory/project/other/runs/r1"}, f"inside {PROJECT}/runs/"),
        ({"run_dir": f"{PROJECT}/runs/../../other/runs/x"}, "normalised"),
        ({"run_dir": f"{PROJECT}/runs"}, "inside"),
        ({"run_dir": f"{SCRATCH}/runs/r1"}, f"inside {PROJECT}/runs/"),  # runs live in the project area
        ({"dataset_dir": "/etc"}, f"inside {SCRATCH}/datasets/"),
        ({"dataset_dir": f"{SCRATCH}/datasets/../runs/x"}, "inside"),
        ({"dataset_dir": f"{PROJECT}/datasets/iris/v1"}, f"inside {SCRATCH}/datasets/"),  # datasets: scratch
        ({"resources": {"account": "other"}}, "set by the platform"),
        ({"resources": {"partition": "debug\n#SBATCH -A x"}}, "partition"),
        ({"resources": {"cpus_per_task": "$(id)"}}, "expected an integer"),
        ({"resources": {"time_limit_minutes": 61}}, "outside 1..60"),
        ({"hyperparameters": {"label_column": "y", "feature_columns": "a;id"}}, "feature_columns"),
    ],
)
def test_plan_refuses(over, fragment):
    with pytest.raises(InputError) as exc:
        _plan(**over)
    assert fragment in str(exc.value)


# ------------------------------------------------------------------------------------------ operator


def _op(**over: Any):
    from operators.slurm import SlurmJobOperator

    kwargs: dict[str, Any] = dict(
        task_id="train", tenant="demo", recipe="tabular_classifier", tenant_spec=TENANT,
        dataset_dir=DATASET, hyperparameters=HP, slurm_resources={"cpus_per_task": 1},
    )
    kwargs.update(over)
    return SlurmJobOperator(**kwargs)


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"recipe": "not_enabled"}, "not a recipe enabled"),
        ({"recipe": "../../tenants/demo"}, "not a recipe enabled"),
        ({"hyperparameters": "__import__('os').system('id')"}, "not a JSON object"),
        ({"slurm_resources": "{'cpus_per_task': 2}"}, "not a JSON object"),  # no Python literals any more
        ({"tenant": "Demo"}, "tenant"),
        ({"cluster": "../etc"}, "cluster"),
    ],
)
def test_operator_validates_before_side_effects(over, fragment, monkeypatch):
    from operators import slurm as op_mod

    def boom(*a, **k):
        raise AssertionError("no SSH before validation")

    monkeypatch.setattr(op_mod, "FactorySSHHook", boom)
    with pytest.raises(InputError) as exc:
        _op(**over).execute(CTX)
    assert fragment in str(exc.value)


class FakeHook:
    """Answers squeue/sacct like a cluster whose controller is down; records every command."""

    def __init__(self, rc: int = 1, err: str = "slurm_load_jobs error: Unable to contact slurm controller"):
        self.commands: list[str] = []
        self.rc, self.err = rc, err

    def run(self, command: str, timeout: float = 0) -> tuple[int, str, str]:
        self.commands.append(command)
        return self.rc, "", self.err

    @contextmanager
    def sftp(self):
        def missing(*a, **k):
            raise FileNotFoundError(a[0] if a else "")

        yield SimpleNamespace(open=missing, stat=missing, lstat=missing)

    def close(self) -> None:
        pass


def test_slurm_that_cannot_answer_means_refuse_never_submit(monkeypatch):
    from airflow.providers.common.compat.sdk import AirflowException

    from operators import slurm as op_mod

    hook = FakeHook()
    monkeypatch.setattr(op_mod, "FactorySSHHook", lambda **k: hook)
    with pytest.raises(AirflowException, match="Not submitting: squeue did not answer"):
        _op().execute({"ti": TI, "task_state_store": None})
    assert hook.commands and not any(c.startswith("sbatch") for c in hook.commands)


def test_execute_complete_finishes_with_the_carried_plan_not_the_edited_spec(monkeypatch):
    """The tenant's limit is lowered below what the job uses after submission: the finish still works
    with the plan the job was submitted with (here: a failed job's message names its own limits)."""
    from airflow.providers.common.compat.sdk import AirflowException

    from operators import slurm as op_mod

    monkeypatch.setattr(op_mod, "FactorySSHHook", lambda **k: FakeHook(rc=0, err=""))
    plan = _op(slurm_resources={"time_limit_minutes": 45, "mem_gb": 3}).plan(CTX)
    lowered = {**TENANT, "limits": {**TENANT["limits"], "max_time_limit_minutes": 10, "max_mem_gb": 1}}
    op = _op(tenant_spec=lowered, slurm_resources={"time_limit_minutes": 45, "mem_gb": 3})
    with pytest.raises(InputError):
        op.plan(CTX)  # today's spec would refuse the job...
    event = {"status": "failed", "job_id": "7", "state": "TIMEOUT", "raw_state": "TIMEOUT", "log_offset": None}
    with pytest.raises(AirflowException, match="hit its time limit of 45 min"):
        op.execute_complete(CTX, event, plan=plan.to_json())  # ...the carried plan finishes it
    store = SimpleNamespace(get=lambda key, default=None: {"job_id": "7", "plan": plan.to_json()})
    with pytest.raises(AirflowException, match="of 45 min"):
        op.execute_complete({"ti": TI, "task_state_store": store}, event)  # or the plan saved with the job id
    with pytest.raises(AirflowException, match="not carried"):
        op.execute_complete(CTX, event)


# ------------------------------------------------------------------------------------------ facts


class FakeCluster(FakeHook):
    """squeue/sacct answers chosen per test; files by path."""

    def __init__(self, squeue=(0, ""), sacct_name=(0, ""), sacct_id=(0, ""), files=None):
        super().__init__()
        self.answers = {"squeue": squeue, "sacct --parsable2 -X --noheader --name": sacct_name,
                        "sacct --parsable2 -X --noheader --jobs": sacct_id}
        self.files = dict(files or {})

    def run(self, command: str, timeout: float = 0) -> tuple[int, str, str]:
        self.commands.append(command)
        for prefix, (rc, out) in self.answers.items():
            if command.replace("'", "").startswith(prefix):
                return rc, out, "" if rc == 0 else "slurm_load_jobs error: Unable to contact slurm controller"
        raise AssertionError(f"unexpected command {command}")

    @contextmanager
    def sftp(self):
        import io

        def open_(path, mode="r"):
            if path not in self.files:
                raise FileNotFoundError(path)
            return io.BytesIO(self.files[path])

        yield SimpleNamespace(open=open_)


def _sacct_line(job_id: str, name: str, state: str) -> str:
    from aifactory.hpc.slurm import SACCT_FIELDS

    row = dict.fromkeys(SACCT_FIELDS, "")
    row.update(JobID=job_id, JobName=name, State=state, ExitCode="0:0", Submit="2026-01-01T00:00:00")
    return "|".join(row[f] for f in SACCT_FIELDS)


def test_facts_slurm_failures_are_no_answer_never_not_found():
    from aifactory.hpc.slurm.decision import SacctFact, SqueueFact
    from operators.slurm_facts import gather_facts

    plan = _plan()
    facts = gather_facts(FakeCluster(squeue=(1, "")), plan, None, "now-7days")
    assert facts.squeue is SqueueFact.NO_ANSWER
    facts = gather_facts(FakeCluster(sacct_name=(1, "")), plan, None, "now-7days")
    assert facts.squeue is SqueueFact.NOT_LISTED and facts.sacct is SacctFact.NO_ANSWER
    facts = gather_facts(FakeCluster(sacct_id=(1, "")), plan, "41", "now-7days")  # the saved id is asked too
    assert facts.sacct is SacctFact.NO_ANSWER


def test_facts_of_an_active_job_carry_its_params_digest():
    import hashlib

    from aifactory.hpc.slurm.decision import SqueueFact
    from operators.slurm_facts import gather_facts

    plan = _plan()
    squeue = (0, f"42|{plan.job_name}|RUNNING|None|0:05|N/A\n")
    files = {plan.params_path: plan.params_json.encode()}
    facts = gather_facts(FakeCluster(squeue=squeue, files=files), plan, None, "now-7days")
    assert facts.squeue is SqueueFact.ACTIVE and facts.active_job_id == "42"
    assert facts.active_params_sha256 == hashlib.sha256(plan.params_json.encode()).hexdigest()
    facts = gather_facts(FakeCluster(squeue=squeue), plan, None, "now-7days")
    assert facts.active_params_sha256 is None  # unreadable: the decision refuses


def test_facts_of_a_finished_job_sacct_has_not_recorded_are_unsettled():
    from aifactory.hpc.slurm.decision import SacctFact
    from operators.slurm_facts import gather_facts

    plan = _plan()
    squeue = (0, f"42|{plan.job_name}|COMPLETED|None|0:05|N/A\n")
    assert gather_facts(FakeCluster(squeue=squeue), plan, None, "now-7days").sacct is SacctFact.UNSETTLED
    done = (0, _sacct_line("42", plan.job_name, "COMPLETED") + "\n" + _sacct_line("40", plan.job_name, "FAILED"))
    facts = gather_facts(FakeCluster(squeue=squeue, sacct_name=done), plan, None, "now-7days")
    assert facts.sacct is SacctFact.COMPLETED and facts.finished_job_id == "42"
    other = (0, _sacct_line("43", "aifp-demo-000000000000", "COMPLETED"))  # someone else's job
    assert gather_facts(FakeCluster(sacct_name=other), plan, None, "now-7days").sacct is SacctFact.NOT_FOUND


def test_resources_validated_by_the_validate_task_are_not_bounded_again():
    """Train plans with the resources validate bounded; a limit lowered since does not refuse them."""
    from aifactory.hpc.slurm import Resources

    validated = Resources(account="demo", partition="debug", time_limit_minutes=45, mem_gb=3)
    lowered = {**TENANT, "limits": {**TENANT["limits"], "max_time_limit_minutes": 10, "max_mem_gb": 1}}
    recipe = load_recipes()["tabular_classifier"]
    task = TaskIds(dag_id=TI.dag_id, run_id=TI.run_id, task_id="train")
    plan = plan_job(parse_tenant(lowered, "t"), load_cluster("local"), recipe, hyperparameters=HP,
                    resources=validated, task=task, dataset_dir=DATASET)
    assert plan.resources["time_limit_minutes"] == 45 and "--time=45" in plan.sbatch_command
    with pytest.raises(InputError, match="account"):
        plan_job(parse_tenant(lowered, "t"), load_cluster("local"), recipe, hyperparameters=HP,
                 resources=Resources(account="other", partition="debug"), task=task, dataset_dir=DATASET)


def test_a_tenant_job_reaches_the_cluster_through_the_tenant_connection_never_the_service_one():
    from dataclasses import replace

    assert _plan().ssh_conn_id == "aifactory_hpc_local_demo" != load_cluster("local").ssh_conn_id
    spec = parse_tenant(TENANT, "t")
    for identity in (None, replace(spec.identity, ssh_conn_id=load_cluster("local").ssh_conn_id)):
        with pytest.raises(InputError, match="service connection|has no identity.unix_user"):
            plan_job(replace(spec, identity=identity), load_cluster("local"), load_recipes()["tabular_classifier"],
                     hyperparameters=HP, resources={"cpus_per_task": 1}, dataset_dir=DATASET,
                     task=TaskIds(dag_id=TI.dag_id, run_id=TI.run_id, task_id="train"))
