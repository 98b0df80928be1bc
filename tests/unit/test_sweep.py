"""The orphan sweep's rules: which active jobs are provably ours, and which of those to cancel."""

from __future__ import annotations

import pytest

from aifactory.hpc.slurm import job_comment, job_name
from aifactory.hpc.sweep import ActiveJob, judge, owner_of, parse_active_jobs, sweep_command

RUN = "manual__2026-11-27T08:17:11.035069+00:00"


def _job(job_id: str, run: str = RUN, task: str = "train", map_index: int = -1, **over: str) -> ActiveJob:
    fields = {
        "job_id": job_id,
        "name": job_name("demo", "factory_demo", run, task, map_index),
        "state": "RUNNING",
        "comment": job_comment("demo", "factory_demo", run, task, map_index, try_number=1),
    }
    fields.update(over)
    return ActiveJob(**fields)


def test_command_lists_only_the_service_accounts_jobs_with_comments():
    assert sweep_command() == "squeue --me --noheader '--format=%i|%j|%T|%k'"


def test_parse_active_jobs():
    out = "12|aifp-demo-0123456789ab|RUNNING|aifp:tenant=demo,dag=d,run=r,task=t,map=-1\n13|bash|PENDING|(null)\n\n"
    jobs = parse_active_jobs(out)
    assert [(j.job_id, j.name, j.state) for j in jobs] == [("12", "aifp-demo-0123456789ab", "RUNNING"), ("13", "bash", "PENDING")]
    assert jobs[0].comment.startswith("aifp:")


def test_owner_is_proven_by_the_name():
    owner = owner_of(_job("1"))
    assert owner is not None and (owner.dag_id, owner.run_id, owner.state_key) == ("factory_demo", RUN, "train")
    assert owner_of(_job("2", map_index=3)).state_key == "train_3"
    # a comment pointing at another run than the name encodes, a foreign job, a broken comment
    assert owner_of(_job("3", comment=job_comment("demo", "factory_demo", "other", "train"))) is None
    assert owner_of(ActiveJob("4", "my-own-job", "RUNNING", job_comment("demo", "factory_demo", RUN, "train"))) is None
    assert owner_of(_job("5", comment="aifp:tenant=demo,dag=factory_demo")) is None
    assert owner_of(_job("6", comment="(null)")) is None
    # a run id the comment had to mangle cannot be proven, so it is never touched
    assert owner_of(_job("7", run="manual run with spaces")) is None


@pytest.mark.parametrize(
    "state, cancel",
    [("failed", True), ("upstream_failed", True), ("success", True), ("skipped", True), ("removed", True),
     ("running", False), ("deferred", False), ("queued", False), ("scheduled", False), ("up_for_retry", False),
     (None, False)],
)
def test_only_ended_tasks_lose_their_jobs(state, cancel):
    [verdict] = judge([_job("9")], {"factory_demo": {RUN: {"train": state}}})
    assert verdict.cancel is cancel and verdict.task_state == state


def test_runs_unknown_to_this_airflow_and_foreign_jobs_are_left_alone():
    jobs = [_job("10"), _job("11", run="scheduled__2026-11-01T00:00:00+00:00"), ActiveJob("12", "x", "RUNNING", "")]
    verdicts = judge(jobs, {"factory_demo": {RUN: {"ingest": "success"}}})
    assert [v.cancel for v in verdicts] == [False, False, False]
    assert "does not know" in verdicts[0].why and "not a factory job" in verdicts[2].why


def test_mapped_tasks_are_looked_up_by_index():
    jobs = [_job("20", task="probe", map_index=0), _job("21", task="probe", map_index=1)]
    verdicts = judge(jobs, {"factory_demo": {RUN: {"probe_0": "failed", "probe_1": "deferred"}}})
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
            return 0, "".join(f"{j.job_id}|{j.name}|{j.state}|{j.comment}\n" for j in jobs), ""
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
    if dry_run:
        assert result["cancelled"] == [] and len(_FakeHook.commands) == 1
    else:
        assert result["cancelled"] == ["31"] and _FakeHook.commands[-1] == "scancel 31"
