"""The budget check before sbatch: parse what Slurm reports, decide enough / not enough."""

from __future__ import annotations

import pytest

from aifactory.hpc.slurm.budget import (
    Budget,
    BudgetUnknown,
    TresBudget,
    budget_command,
    decide_budget,
    job_request_minutes,
    parse_assoc_mgr,
)

_TRES = "mem=N(0),energy=N(0),node=N(0),billing=N(0),fs/disk=N(0),vmem=N(0),pages=N(0)"


def _line(account: str, user: str, mins: str, run: str = "cpu=N(0)") -> str:
    """One association as ``scontrol -o show assoc_mgr flags=assoc`` prints it (22.05, shortened)."""
    return (f"ClusterName=aifactory Account={account} UserName={user} Partition= Priority=0 ID=7 "
            f"SharesRaw/Norm/Level/Factor=1/0.25/4/0.00 UsageRaw/Norm/Efctv=0.00/1.00/0.00 "
            f"ParentAccount=root(1) Lft=2 DefAssoc=No GrpJobs=N(0) GrpJobsAccrue=N(1) GrpSubmitJobs=N(1) "
            f"GrpWall=N(0.00) GrpTRES=cpu=N(0),{_TRES},gres/gpu=N(0) GrpTRESMins={mins} "
            f"GrpTRESRunMins={run} MaxJobs= MaxJobsAccrue= MaxSubmitJobs= MaxWallPJ= MaxTRESPJ= MaxTRESPN= "
            f"MaxTRESMinsPJ= MinPrioThresh=")


HEADER = "Current Association Manager state\nAssociation Records\n"


@pytest.mark.parametrize(
    ("mins", "run", "expect"),
    [
        (f"cpu=30000(120),{_TRES},gres/gpu=0(0)", "cpu=N(30),gres/gpu=N(0)",
         {"cpu": (30000, 120.0, 30.0, 29850.0), "gres/gpu": (0, 0.0, 0.0, 0.0)}),
        (f"cpu=N(7),{_TRES},gres/gpu=N(0)", "cpu=N(0)", {"cpu": (None, 7.0, 0.0, None)}),
        # over-used (a job ran past the limit: Slurm only checks at start): remaining is 0, not negative
        ("cpu=60(75.5)", "cpu=N(0)", {"cpu": (60, 75.5, 0.0, 0.0)}),
    ],
)
def test_parse_assoc_mgr(mins: str, run: str, expect: dict) -> None:
    text = HEADER + _line("acme", "", mins, run) + "\n" + _line("acme", "aifp-acme(1002)", "cpu=N(3)") + "\n"
    budget = parse_assoc_mgr(text, "acme")
    for tres, (limit, used, held, remaining) in expect.items():
        got = budget.tres[tres]
        assert (got.limit, got.used, got.held, got.remaining) == (limit, used, held, remaining)


@pytest.mark.parametrize(
    "text",
    [
        "",  # Slurm said nothing
        HEADER,  # no association: the account is not onboarded
        HEADER + _line("acme", "aifp-acme(1002)", "cpu=5(0)"),  # only a user's association
        HEADER + _line("acmex", "", "cpu=5(0)"),  # another account whose name starts the same
        HEADER + _line("acme", "", "").replace("GrpTRESMins= ", "GrpTRESMins=garbage "),
    ],
)
def test_parse_assoc_mgr_unknown(text: str) -> None:
    with pytest.raises(BudgetUnknown, match="acme"):
        parse_assoc_mgr(text, "acme")


def test_budget_command_quotes_the_account() -> None:
    assert budget_command("demo") == "scontrol -o show assoc_mgr accounts=demo flags=assoc"
    assert "'a;b'" in budget_command("a;b")


@pytest.mark.parametrize(
    ("resources", "expect"),
    [
        ({"nodes": 1, "cpus_per_task": 1, "time_limit_minutes": 30}, {"cpu": 30}),
        ({"nodes": 2, "cpus_per_task": 2, "time_limit_minutes": 60}, {"cpu": 240}),
        # one rank per GPU: 2 nodes x 2 ranks x 4 CPUs x 10 min
        ({"nodes": 2, "cpus_per_task": 4, "gpus_per_node": 2, "time_limit_minutes": 10},
         {"cpu": 160, "gres/gpu": 40}),
        ({"nodes": 1, "cpus_per_task": 1, "gpus_per_node": 0, "time_limit_minutes": 5}, {"cpu": 5}),
    ],
)
def test_job_request_minutes(resources: dict, expect: dict) -> None:
    assert job_request_minutes(resources) == expect


def _budget(cpu: tuple[int | None, float, float], gpu: tuple[int | None, float, float] | None = None) -> Budget:
    tres = {"cpu": TresBudget("cpu", *cpu)}
    if gpu is not None:
        tres["gres/gpu"] = TresBudget("gres/gpu", *gpu)
    return Budget("demo", tres)


JOB = {"nodes": 2, "cpus_per_task": 2, "time_limit_minutes": 60}  # 240 CPU-minutes
GPU_JOB = {"nodes": 1, "cpus_per_task": 1, "gpus_per_node": 1, "time_limit_minutes": 30}  # 30 + 30 GPU


@pytest.mark.parametrize(
    ("budget", "resources", "enough", "in_message"),
    [
        (_budget((30000, 0, 0)), JOB, True, ["remaining 30000", "240 CPU-minutes"]),
        (_budget((240, 0, 0)), JOB, True, ["remaining 240"]),  # exactly fits (Slurm: <=)
        (_budget((240, 1, 0)), JOB, False, ["used 1 of 240", "remaining 239", "240 CPU-minutes",
                                            "2 node(s) x 2 CPU(s) x 60 min", "ask@x"]),
        (_budget((300, 0, 100)), JOB, False, ["running jobs hold 100", "remaining 200"]),
        (_budget((60, 75.5, 0)), JOB, False, ["used 75.5 of 60", "remaining 0"]),
        (_budget((None, 9999, 0)), JOB, True, ["no limit"]),
        # a GPU job: the GPU budget (0 GPU-hours) refuses it, the CPU budget alone would not
        (_budget((30000, 0, 0), (0, 0, 0)), GPU_JOB, False, ["GPU", "30 GPU-minutes"]),
        (_budget((30000, 0, 0), (600, 0, 0)), GPU_JOB, True, ["GPU: used 0 of 600"]),
        # the cluster does not account GPUs: a GPU job cannot be checked, so it is refused
        (_budget((30000, 0, 0)), GPU_JOB, False, ["does not account gres/gpu"]),
        # Slurm did not answer: refused, never submitted blind
        (None, JOB, False, ["did not say", "240 CPU-minutes", "ask@x"]),
    ],
)
def test_decide_budget(budget: Budget | None, resources: dict, enough: bool, in_message: list[str]) -> None:
    verdict = decide_budget(budget, resources, account="demo", contact="ask@x")
    assert verdict.enough is enough, verdict.message
    for part in in_message:
        assert part in verdict.message, (part, verdict.message)
    if not enough:
        assert verdict.message.startswith("Not submitting")


# ------------------------------------------------------------ the operator refuses before any side effect


class _Cluster:
    """squeue/sacct know no job of this task; scontrol answers ``assoc``; records every command."""

    def __init__(self, assoc: tuple[int, str]):
        self.assoc = assoc
        self.commands: list[str] = []

    def run(self, command: str, timeout: float = 0) -> tuple[int, str, str]:
        self.commands.append(command)
        if command.startswith("scontrol -o show assoc_mgr"):
            return self.assoc[0], self.assoc[1], "" if self.assoc[0] == 0 else "Unable to contact slurm controller"
        if command.startswith(("squeue", "sacct")):
            return 0, "", ""
        raise AssertionError(f"no side effect may happen before the budget check: {command}")

    def sftp(self):
        from contextlib import contextmanager
        from types import SimpleNamespace

        @contextmanager
        def _sftp():
            def missing(*a, **k):
                raise FileNotFoundError(a[0] if a else "")

            yield SimpleNamespace(open=missing, stat=missing, lstat=missing)

        return _sftp()

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("assoc", "fragments"),
    [
        ((0, HEADER + _line("demo", "", "cpu=30(29)")),
         ["used 29 of 30", "remaining 1", "1 node(s) x 2 CPU(s) x 10 min = 20 CPU-minutes",
          "platform-team@aifactory.example"]),
        ((1, ""), ["did not say", "scontrol exited 1"]),
        ((0, HEADER), ["did not say", "no association for account 'demo'"]),
    ],
)
def test_operator_refuses_before_sbatch(monkeypatch, assoc: tuple[int, str], fragments: list[str]) -> None:
    from types import SimpleNamespace

    from airflow.providers.common.compat.sdk import AirflowException

    from operators import slurm as op_mod

    cluster = _Cluster(assoc)
    monkeypatch.setattr(op_mod, "FactorySSHHook", lambda **k: cluster)
    ti = SimpleNamespace(dag_id="factory_demo", run_id="manual__1", task_id="train", map_index=-1, try_number=1)
    op = op_mod.SlurmJobOperator(task_id="train", tenant="demo", recipe="tabular_classifier",
                                 dataset_dir="/srv/aifactory/scratch/aifp-demo/datasets/iris/v1",
                                 hyperparameters={"label_column": "species", "feature_columns": ["a"]},
                                 slurm_resources={"nodes": 1, "cpus_per_task": 2, "time_limit_minutes": 10})
    with pytest.raises(AirflowException) as exc:
        op.execute({"ti": ti, "task_state_store": None})
    assert str(exc.value).startswith("Not submitting")
    for part in fragments:
        assert part in str(exc.value), (part, str(exc.value))
    assert any(c.startswith("scontrol -o show assoc_mgr accounts=demo") for c in cluster.commands)


# ------------------------------------------------------------------------------ the usage report


def test_usage_report_rows_and_budget() -> None:
    from aifactory.hpc.slurm import SACCT_FIELDS, parse_sacct
    from aifactory.hpc.slurm.usage import sacct_account_command, usage_report

    def row(job_id: str, account: str, elapsed: str, tres: str) -> str:
        values = dict.fromkeys(SACCT_FIELDS, "")
        values.update(JobID=job_id, JobName=f"aifp-demo-{job_id}", Account=account, State="COMPLETED",
                      ExitCode="0:0", Elapsed=elapsed, AllocTRES=tres, Submit=f"2026-01-0{job_id}T00:00:00")
        return "|".join(values[f] for f in SACCT_FIELDS)

    records = parse_sacct("\n".join([row("2", "demo", "00:10:00", "cpu=2,node=1,gres/gpu=1"),
                                     row("1", "demo", "00:01:30", "cpu=4,node=2"),
                                     row("3", "acme", "01:00:00", "cpu=2,node=1")]))
    budget = parse_assoc_mgr(HEADER + _line("demo", "", "cpu=600(26),gres/gpu=60(10)", "cpu=N(4)"), "demo")
    report = usage_report(tenant="demo", account="demo", cpu_hours=10, gpu_hours=1, contact="ask@x",
                          budget=budget, records=records)
    assert [r["job_id"] for r in report["runs"]] == ["1", "2"]  # by submit time; the other account's job is not shown
    assert [r["cpu_minutes"] for r in report["runs"]] == [6.0, 20.0]
    assert report["runs_total"] == {"jobs": 2, "cpu_minutes": 26.0, "gpu_minutes": 10.0}
    assert report["budget"]["cpu"] == {"limit_minutes": 600, "used_minutes": 26.0, "held_by_running_minutes": 4.0,
                                       "remaining_minutes": 570.0}
    assert report["budget"]["gpu"]["remaining_minutes"] == 50.0
    assert report["allocation"]["cpu_minutes"] == 600
    unknown = usage_report(tenant="demo", account="demo", cpu_hours=10, gpu_hours=0, contact="ask@x",
                           budget=None, records=None, errors=["scontrol exited 1: down"])
    assert unknown["budget"] is None and unknown["runs"] is None and unknown["errors"]
    assert "--accounts=demo" in sacct_account_command("demo", "2000-01-01")
    with pytest.raises(Exception, match="account"):
        sacct_account_command("demo;id", "2000-01-01")
