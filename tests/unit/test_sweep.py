"""The orphan sweep's rules: which active jobs are provably ours, and which of those to cancel."""

from __future__ import annotations

import pytest

from aifactory.errors import InputError
from aifactory.hpc.slurm import job_comment, job_name
from aifactory.hpc.sweep import ActiveJob, TenantIdentity, judge, owner_of, parse_active_jobs, sweep_command

RUN = "manual__2026-11-27T08:17:11.035069+00:00"
TENANTS = {"demo": TenantIdentity(account="demo", user="aifp-demo"),
           "acme": TenantIdentity(account="acme", user="aifp-acme")}


def _job(job_id: str, run: str = RUN, task: str = "train", map_index: int = -1, **over: str) -> ActiveJob:
    fields = {
        "job_id": job_id,
        "name": job_name("demo", "factory_demo", run, task, map_index),
        "state": "RUNNING",
        "account": "demo",
        "user": "aifp-demo",
        "comment": job_comment("demo", "factory_demo", run, task, map_index, try_number=1),
    }
    fields.update(over)
    return ActiveJob(**fields)


def test_command_lists_the_tenant_accounts_jobs_with_account_user_and_comment():
    assert sweep_command(["demo", "acme", "demo"]) == "squeue --accounts=acme,demo --noheader '--format=%i|%j|%T|%a|%u|%k'"
    with pytest.raises(InputError, match="at least one tenant account"):
        sweep_command([])
    with pytest.raises(InputError, match="must match"):
        sweep_command(["demo;rm"])


def test_parse_active_jobs():
    out = ("12|aifp-demo-0123456789ab|RUNNING|demo|aifp-demo|aifp:tenant=demo,dag=d,run=r,task=t,map=-1\n"
           "13|bash|PENDING|acme|aifp-acme|(null)\n\n")
    jobs = parse_active_jobs(out)
    assert [(j.job_id, j.name, j.state, j.account, j.user) for j in jobs] == [
        ("12", "aifp-demo-0123456789ab", "RUNNING", "demo", "aifp-demo"), ("13", "bash", "PENDING", "acme", "aifp-acme")]
    assert jobs[0].comment.startswith("aifp:")


def test_a_job_is_the_tenants_only_under_its_account_and_user():
    assert owner_of(_job("1"), TENANTS) is not None
    # another tenant's user named and commented a job after demo's task: not demo's job
    assert owner_of(_job("2", user="aifp-acme"), TENANTS) is None
    assert owner_of(_job("3", account="acme"), TENANTS) is None
    assert owner_of(_job("4"), {"acme": TENANTS["acme"]}) is None  # a tenant this cluster does not have


def test_owner_is_proven_by_the_name():
    owner = owner_of(_job("1"), TENANTS)
    assert owner is not None and (owner.dag_id, owner.run_id, owner.state_key) == ("factory_demo", RUN, "train")
    assert owner_of(_job("2", map_index=3), TENANTS).state_key == "train_3"
    # a comment pointing at another run than the name encodes, a foreign job, a broken comment
    assert owner_of(_job("3", comment=job_comment("demo", "factory_demo", "other", "train")), TENANTS) is None
    assert owner_of(ActiveJob("4", "my-own-job", "RUNNING", "demo", "aifp-demo",
                              job_comment("demo", "factory_demo", RUN, "train")), TENANTS) is None
    assert owner_of(_job("5", comment="aifp:tenant=demo,dag=factory_demo"), TENANTS) is None
    assert owner_of(_job("6", comment="(null)"), TENANTS) is None
    # a run id the comment had to mangle cannot be proven, so it is never touched
    assert owner_of(_job("7", run="manual run with spaces"), TENANTS) is None


@pytest.mark.parametrize(
    "state, cancel",
    [("failed", True), ("upstream_failed", True), ("success", True), ("skipped", True), ("removed", True),
     ("running", False), ("deferred", False), ("queued", False), ("scheduled", False), ("up_for_retry", False),
     (None, False)],
)
def test_only_ended_tasks_lose_their_jobs(state, cancel):
    [verdict] = judge([_job("9")], {"factory_demo": {RUN: {"train": state}}}, TENANTS)
    assert verdict.cancel is cancel and verdict.task_state == state


def test_runs_unknown_to_this_airflow_and_foreign_jobs_are_left_alone():
    jobs = [_job("10"), _job("11", run="scheduled__2026-11-01T00:00:00+00:00"), ActiveJob("12", "x", "RUNNING", "demo", "aifp-demo", "")]
    verdicts = judge(jobs, {"factory_demo": {RUN: {"ingest": "success"}}}, TENANTS)
    assert [v.cancel for v in verdicts] == [False, False, False]
    assert "does not know" in verdicts[0].why and "not a factory job" in verdicts[2].why


def test_mapped_tasks_are_looked_up_by_index():
    jobs = [_job("20", task="probe", map_index=0), _job("21", task="probe", map_index=1)]
    verdicts = judge(jobs, {"factory_demo": {RUN: {"probe_0": "failed", "probe_1": "deferred"}}}, TENANTS)
    assert [v.cancel for v in verdicts] == [True, False]


class _FakeHook:
    """Stands in for the SSH hook: canned squeue output, records every command."""

    commands: list[str] = []

    def __init__(self, *, ssh_conn_id: str) -> None:
        self.ssh_conn_id = ssh_conn_id

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
        self.commands.append(command)
        if command.startswith("squeue"):
            jobs = [_job("31"), _job("32", run="manual__other")]
            return 0, "".join(f"{j.job_id}|{j.name}|{j.state}|{j.account}|{j.user}|{j.comment}\n" for j in jobs), ""
        return 0, "", ""

    def close(self) -> None:
        pass


class _FakeTI:
    def __init__(self) -> None:
        self.asked: list[tuple[str, list[str]]] = []

    def get_task_states(self, *, dag_id: str, run_ids: list[str]) -> dict:
        self.asked.append((dag_id, run_ids))
        return {RUN: {"train": "failed"}, "manual__other": {"train": "deferred"}}


@pytest.mark.parametrize("dry_run", [False, True])
def test_operator_asks_airflow_once_per_dag_and_cancels_in_one_command(monkeypatch, dry_run):
    import operators.hooks
    from operators.sweep import SlurmSweepOperator

    _FakeHook.commands = []
    monkeypatch.setattr(operators.hooks, "FactorySSHHook", _FakeHook)
    ti = _FakeTI()
    result = SlurmSweepOperator(task_id="sweep", cluster="local").execute({"ti": ti, "params": {"dry_run": dry_run}})
    assert ti.asked == [("factory_demo", sorted([RUN, "manual__other"]))]
    assert result["active"] == 2 and result["factory"] == 2
    assert _FakeHook.commands[0].startswith("squeue --accounts=acme,demo ")  # every tenant of the cluster
    if dry_run:
        assert result["cancelled"] == [] and len(_FakeHook.commands) == 1
    else:
        assert result["cancelled"] == ["31"] and _FakeHook.commands[-1] == "scancel 31"
