"""Unit tests of the pure Slurm engine (aifactory.hpc.slurm): identity, validation, commands, parsing."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from aifactory.errors import InputError
from aifactory.hpc.slurm import (
    ACTIVE_STATES,
    FAILED_STATES,
    SACCT_FIELDS,
    JobState,
    Resources,
    SlurmError,
    TenantSlurmPolicy,
    accounting,
    build_sbatch_command,
    classify,
    describe,
    failure_message,
    is_transient_slurm_error,
    job_comment,
    job_name,
    log_path,
    parse_elapsed,
    parse_poll_output,
    parse_sacct,
    parse_sbatch_output,
    parse_squeue,
    parse_tres,
    poll_command,
    read_log_command,
    sacct_by_name_command,
    sacct_command,
    sbatch_argv,
    scancel_command,
    select_record,
    squeue_by_name_command,
    squeue_command,
)
from aifactory.hpc.slurm.resources import GpuOffer

POLICY = TenantSlurmPolicy(
    account="demo", partitions=("debug", "gpu"), qos=None, max_nodes=2, max_gpus_per_node=0,
    max_cpus_per_task=2, max_mem_gb=4, max_time_limit_minutes=60,
)
RUN_DIR = "/srv/aifactory/demo/runs/r1"
INJECTIONS = [
    "$(id)",
    "`id`",
    "a;id",
    "debug\n#SBATCH --account=other",
    "-A other",
    "--account=other",
    "x" * 5000,
    "debug && rm -rf /",
    "de bug",
    "'",
    "",
]


# ------------------------------------------------------------------------------------------ identity


def test_job_name_is_deterministic_short_and_safe():
    a = job_name("demo", "factory_demo", "manual__2026-01-01T00:00:00+00:00", "train", -1)
    b = job_name("demo", "factory_demo", "manual__2026-01-01T00:00:00+00:00", "train", -1)
    assert a == b
    assert a.startswith("aifp-demo-") and len(a) == len("aifp-demo-") + 12
    assert all(c.isalnum() or c in "-_" for c in a)


def test_job_name_distinguishes_every_input():
    base = ("demo", "d", "r", "t", -1)
    names = {job_name(*base)}
    for i, alt in enumerate(["demo2", "d2", "r2", "t2", 0]):
        args = list(base)
        args[i] = alt
        names.add(job_name(*args))
    assert len(names) == 6
    # the separator prevents ("a","bc") == ("ab","c")
    assert job_name("demo", "a", "bc", "t") != job_name("demo", "ab", "c", "t")


@pytest.mark.parametrize("tenant", ["Demo", "../x", "a b", "", "$(id)", "x" * 40, "-demo"])
def test_job_name_rejects_bad_tenant(tenant):
    with pytest.raises(InputError):
        job_name(tenant, "d", "r", "t")


def test_job_comment_is_sanitised_and_capped():
    c = job_comment("demo", "dag", "manual__2026$(id)`x`;\n#SBATCH", "t", 3, try_number=2)
    assert "$" not in c and "`" not in c and ";" not in c and "\n" not in c and " " not in c
    assert "try=2" in c and "map=3" in c
    assert len(job_comment("demo", "d" * 1000, "r" * 1000, "t" * 1000)) <= 500


def test_log_path():
    assert log_path(RUN_DIR, "42") == f"{RUN_DIR}/slurm-42.out"
    with pytest.raises(InputError):
        log_path(RUN_DIR, "42; rm -rf /")
    with pytest.raises(InputError):
        log_path("/srv/../etc", "42")


# ------------------------------------------------------------------------------------------ resources


def test_resources_defaults_and_platform_fields():
    r = Resources.from_request({}, policy=POLICY, defaults={"cpus_per_task": 1, "mem_gb": 1, "time_limit_minutes": 10})
    assert r.account == "demo" and r.partition == "debug" and r.qos is None
    assert (r.nodes, r.cpus_per_task, r.mem_gb, r.time_limit_minutes) == (1, 1, 1, 10)


def test_resources_accepts_digit_strings_from_templates():
    r = Resources.from_request({"cpus_per_task": "2", "mem_gb": 4.0, "partition": "gpu"}, policy=POLICY)
    assert r.cpus_per_task == 2 and r.mem_gb == 4 and r.partition == "gpu"


@pytest.mark.parametrize(
    "request_, fragment",
    [
        ({"cpus_per_task": 3}, "cpus_per_task=3 is outside 1..2"),
        ({"mem_gb": 0}, "mem_gb=0 is outside 1..4"),
        ({"nodes": 3}, "nodes=3"),
        ({"gpus_per_node": 1}, "gpus_per_node=1 is outside 0..0"),
        ({"time_limit_minutes": 61}, "time_limit_minutes"),
        ({"cpus_per_task": True}, "boolean"),
        ({"cpus_per_task": "1; id"}, "expected an integer"),
        ({"cpus_per_task": "-1"}, "expected an integer"),
        ({"cpus_per_task": 1.5}, "expected an integer"),
        ({"partition": "other"}, "not allowed for this tenant"),
        ({"account": "other"}, "set by the platform"),
        ({"qos": "high"}, "set by the platform"),
        ({"exclusive": True}, "unknown field"),
    ],
)
def test_resources_rejects(request_, fragment):
    with pytest.raises(InputError, match=None) as exc:
        Resources.from_request(request_, policy=POLICY)
    assert fragment in str(exc.value)


@pytest.mark.parametrize("bad", INJECTIONS)
def test_resources_rejects_injection_in_partition(bad):
    with pytest.raises(InputError):
        Resources.from_request({"partition": bad}, policy=POLICY) if bad else Resources.from_request(
            {"partition": 7}, policy=POLICY
        )


@pytest.mark.parametrize("bad", ["$(id)", "de mo", "-A", "a\nb", ""])
def test_policy_rejects_bad_account(bad):
    with pytest.raises(InputError):
        TenantSlurmPolicy(account=bad, partitions=("debug",))


def test_policy_requires_partitions():
    with pytest.raises(InputError):
        TenantSlurmPolicy(account="demo", partitions=())


# ------------------------------------------------------------------------------------------ sbatch


def _argv(**over):
    kwargs = dict(
        job_name=job_name("demo", "d", "r", "t"),
        comment=job_comment("demo", "d", "r", "t"),
        chdir=RUN_DIR,
        output_path=f"{RUN_DIR}/slurm-%j.out",
        export_vars={"PATH": "/usr/bin:/bin", "AIFP_PYTHON": "/srv/aifactory/venv/bin/python"},
    )
    kwargs.update(over)
    res = Resources.from_request({"cpus_per_task": 2, "mem_gb": 2}, policy=POLICY)
    return sbatch_argv(res, **kwargs)


def test_sbatch_argv_shape():
    argv = _argv()
    assert all(a.startswith("--") and "=" in a for a in argv)
    assert "--account=demo" in argv and "--partition=debug" in argv
    assert "--cpus-per-task=2" in argv and "--mem=2G" in argv and "--time=30" in argv
    assert f"--chdir={RUN_DIR}" in argv
    assert "--export=NONE,PATH=/usr/bin:/bin,AIFP_PYTHON=/srv/aifactory/venv/bin/python" in argv
    assert not any(a.startswith("--gpus") for a in argv)
    assert not any(a.startswith("--qos") for a in argv)


GPU_POLICY = TenantSlurmPolicy(account="acme", partitions=("gpu", "cpu"), qos="normal", max_nodes=2,
                               max_gpus_per_node=4, gpu_offers=(GpuOffer(partition="gpu", gpu_type="a100",
                                                                         gpus_per_node=4),))


def _gpu_argv(res: Resources) -> list[str]:
    return sbatch_argv(res, job_name=job_name("acme", "d", "r", "t"), comment="c", chdir="/srv/x/acme/runs/r",
                       output_path="/srv/x/acme/runs/r/slurm-%j.out", export_vars={})


def test_sbatch_argv_gpu_and_qos():
    res = Resources.from_request({"gpus_per_node": 2, "nodes": 2}, policy=GPU_POLICY)
    argv = _gpu_argv(res)
    assert res.gpu_type == "a100" and res.tasks_per_node == 2
    # typed, per node, one rank per GPU: 2 nodes x 2 GPUs = 4 ranks
    assert "--gres=gpu:a100:2" in argv and "--ntasks-per-node=2" in argv and "--nodes=2" in argv
    assert "--qos=normal" in argv and "--export=NONE" in argv
    assert not any(a.startswith("--gpus") for a in argv)


def test_without_gpus_one_rank_per_node_and_no_gres():
    argv = _gpu_argv(Resources.from_request({"partition": "cpu", "nodes": 2}, policy=GPU_POLICY))
    assert "--ntasks-per-node=1" in argv and not any(a.startswith("--gres") for a in argv)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"partition": "cpu", "gpus_per_node": 1}, "partition 'cpu' has no GPUs this tenant may use; choose partition 'gpu'"),
        ({"gpus_per_node": 5}, r"outside 0\.\.4"),
        ({"gpus_per_node": 1, "gpu_type": "h100"}, "gpu_type is set by the platform"),
    ],
)
def test_gpu_requests_outside_the_offer_are_refused(request_, message):
    with pytest.raises(InputError, match=message):
        Resources.from_request(request_, policy=GPU_POLICY)


def test_more_gpus_than_a_node_has_is_refused_naming_the_node_size():
    policy = TenantSlurmPolicy(account="acme", partitions=("gpu",), max_gpus_per_node=8,
                               gpu_offers=(GpuOffer(partition="gpu", gpu_type="h100", gpus_per_node=4),))
    with pytest.raises(InputError, match="have 4 h100 GPU\\(s\\) each; ask for at most 4 per node, or for more nodes"):
        Resources.from_request({"gpus_per_node": 6}, policy=policy)


def test_resources_asking_for_gpus_without_a_type_never_reach_sbatch():
    with pytest.raises(InputError, match="without a GPU type"):
        _gpu_argv(Resources(account="acme", partition="gpu", gpus_per_node=2))


@pytest.mark.parametrize(
    "over",
    [
        {"chdir": "/srv/aifactory/demo/runs/r1;id"},
        {"chdir": "/srv/aifactory/demo/runs/$(id)"},
        {"chdir": "relative/dir"},
        {"chdir": "/srv/aifactory/demo/runs/../../etc"},
        {"chdir": "/srv/aifactory/demo/runs/r1\n#SBATCH --account=x"},
        {"output_path": "/tmp/elsewhere/slurm-%j.out"},
        {"output_path": f"{RUN_DIR}/slurm-%u.out"},
        {"job_name": "my-own-name"},
        {"job_name": "--account=other"},
        {"export_vars": {"AIFP_PYTHON": "/usr/bin/python,LD_PRELOAD=/tmp/x.so"}},
        {"export_vars": {"AIFP_PYTHON": "$(id)"}},
        {"export_vars": {"lower": "x"}},
        {"export_vars": {"A": "x y"}},
        {"comment": "-x"},
        {"comment": "a\n#SBATCH --account=other"},
        {"comment": "x" * 5000},
    ],
)
def test_sbatch_argv_rejects(over):
    with pytest.raises(InputError):
        _argv(**over)


def test_build_sbatch_command_quotes_everything():
    cmd = build_sbatch_command(_argv(), f"{RUN_DIR}/job.sh")
    parts = shlex.split(cmd)
    assert parts[:2] == ["sbatch", "--parsable"]
    assert parts[-1] == f"{RUN_DIR}/job.sh"
    assert parts[2:-1] == _argv()
    assert "|" not in cmd.replace("'--format", "")  # nothing un-quoted that a shell would interpret


@pytest.mark.parametrize("bad", ["--ok=1\n#SBATCH -A x", "-A", "positional", "--noequals"])
def test_build_sbatch_command_rejects_non_options(bad):
    with pytest.raises(InputError):
        build_sbatch_command([bad], f"{RUN_DIR}/job.sh")


def test_build_sbatch_command_rejects_bad_script():
    with pytest.raises(InputError):
        build_sbatch_command(_argv(), "job.sh; id")


def test_quoted_command_really_is_inert(tmp_path):
    """Run the built command through a real shell with a fake sbatch that records its argv."""
    fake = tmp_path / "sbatch"
    record = tmp_path / "argv"
    fake.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {record}\necho 4242\n')
    fake.chmod(0o755)
    pwned = tmp_path / "pwned"
    comment = job_comment("demo", "d", f"$(touch {pwned})`touch {pwned}`", "t")
    cmd = build_sbatch_command(_argv(comment=comment), f"{RUN_DIR}/job.sh")
    out = subprocess.run(
        ["bash", "-c", cmd], env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
        capture_output=True, text=True, check=True,
    )
    assert parse_sbatch_output(out.stdout).job_id == "4242"
    assert not pwned.exists()
    assert record.read_text().splitlines()[0] == "--parsable"


# ------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "text, job, cluster",
    [("12345\n", "12345", None), ("12345;local\n", "12345", "local"), ("notice: hi\n77\n", "77", None)],
)
def test_parse_sbatch_output(text, job, cluster):
    r = parse_sbatch_output(text)
    assert (r.job_id, r.cluster) == (job, cluster)


@pytest.mark.parametrize("text", ["", "Submitted batch job 12\n", "12;bad cluster", "abc"])
def test_parse_sbatch_output_rejects(text):
    with pytest.raises(SlurmError):
        parse_sbatch_output(text)


SQUEUE_OUT = textwrap.dedent(
    """\
    101|aifp-demo-0123456789ab|PENDING|Resources|0:00|2026-11-27T06:10:00
    102|aifp-demo-aaaaaaaaaaaa|RUNNING|None|1:02:03|2026-11-27T05:00:00
    103|weird|name|COMPLETING|None|0:07|2026-11-27T05:00:00
    104_3|arr|CANCELLED|None|0:01|N/A
    slurm_load_jobs error: something
    """
)


def test_parse_squeue():
    recs = {r.job_id: r for r in parse_squeue(SQUEUE_OUT)}
    assert set(recs) == {"101", "102", "103", "104_3"}
    assert recs["101"].state is JobState.PENDING and recs["101"].reason == "Resources"
    assert recs["102"].time_used == "1:02:03"
    assert recs["103"].name == "weird|name" and recs["103"].state is JobState.COMPLETING
    assert recs["104_3"].state is JobState.CANCELLED
    assert recs["101"].expected_start == "2026-11-27T06:10:00"


def test_over_memory_kill_is_reported_as_out_of_memory():
    tail = "slurmstepd-n1: error: Exceeded job memory limit\nsrun: error: n1: task 0: Killed"
    text = failure_message("FAILED", job_id="52", log_tail=tail, exit_code=9, resources={"mem_gb": 1})
    assert "ran out of memory (1 GB per node)" in text and "mem_gb" in text
    plain = failure_message("FAILED", job_id="53", log_tail="Traceback ...", exit_code=3)
    assert "exited with code 3" in plain


def test_pending_message_carries_reason_and_start_estimate():
    text = describe("PENDING", job_id="101", reason="Resources", expected_start="2026-11-27T06:10:00")
    assert "reason: Resources" in text and "expected start: 2026-11-27T06:10:00" in text
    assert "expected start" not in describe("PENDING", job_id="101", expected_start="N/A")


def _sacct_line(**kw):
    row = {
        "JobID": "200",
        "JobName": "aifp-demo-0123456789ab",
        "Account": "demo",
        "Partition": "debug",
        "State": "COMPLETED",
        "ExitCode": "0:0",
        "Elapsed": "00:01:40",
        "AllocTRES": "billing=2,cpu=2,mem=2G,node=1",
        "NodeList": "n1",
        "Submit": "2026-01-01T10:00:00",
        "Start": "2026-01-01T10:00:01",
        "End": "2026-01-01T10:01:41",
        "Reason": "None",
    }
    row.update(kw)
    return "|".join(row[f] for f in SACCT_FIELDS)


def test_parse_sacct_states_and_exit_codes():
    text = "\n".join(
        [
            _sacct_line(),
            _sacct_line(JobID="201", State="CANCELLED by 0", ExitCode="0:15"),
            _sacct_line(JobID="202", State="FAILED", ExitCode="2:0"),
            _sacct_line(JobID="203", State="OUT_OF_MEMORY", ExitCode="0:125"),
            _sacct_line(JobID="204", State="TIMEOUT", ExitCode="0:0"),
            "sacct: error: junk",
            "too|few|fields",
        ]
    )
    recs = {r.job_id: r for r in parse_sacct(text)}
    assert set(recs) == {"200", "201", "202", "203", "204"}
    assert recs["201"].state is JobState.CANCELLED and recs["201"].raw_state == "CANCELLED by 0"
    assert (recs["201"].exit_code, recs["201"].signal) == (0, 15)
    assert recs["202"].exit_code == 2 and recs["202"].state is JobState.FAILED
    assert recs["203"].state is JobState.OUT_OF_MEMORY


def test_select_record_prefers_our_name_and_latest_submit():
    text = "\n".join(
        [
            _sacct_line(JobID="300", JobName="someone-else", Submit="2026-02-01T00:00:00"),
            _sacct_line(JobID="300", Submit="2025-01-01T00:00:00", State="FAILED"),
            _sacct_line(JobID="300", Submit="2026-01-05T00:00:00", State="COMPLETED"),
        ]
    )
    rec = select_record(parse_sacct(text), job_id="300", name="aifp-demo-0123456789ab")
    assert rec.state is JobState.COMPLETED and rec.submit == "2026-01-05T00:00:00"
    assert select_record(parse_sacct(text), job_id="999") is None


@pytest.mark.parametrize(
    "text, seconds",
    [("00:01:40", 100), ("1-02:03:04", 93784), ("05:06", 306), ("00:00:01.123", 1), ("INVALID", None), ("", None)],
)
def test_parse_elapsed(text, seconds):
    assert parse_elapsed(text) == seconds


def test_parse_tres_and_accounting():
    tres = parse_tres("billing=4,cpu=4,gres/gpu=2,mem=1.5T,node=2")
    assert tres["cpu"] == 4 and tres["gres/gpu"] == 2 and tres["node"] == 2
    assert tres["mem_mb"] == 1.5 * 1024 * 1024
    assert parse_tres("mem=512M")["mem_mb"] == 512
    rec = parse_sacct(_sacct_line(Elapsed="01:00:00", AllocTRES="cpu=4,gres/gpu=2,mem=8G,node=1"))[0]
    acc = accounting(rec)
    assert acc["elapsed_s"] == 3600 and acc["cpu_hours"] == 4.0 and acc["gpu_hours"] == 2.0
    assert acc["alloc_tres"]["mem_mb"] == 8192 and acc["account"] == "demo"
    assert accounting(rec.as_dict()) == acc


# ------------------------------------------------------------------------------------------ states


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("PENDING", "active"),
        ("RUNNING", "active"),
        ("COMPLETING", "active"),
        ("CONFIGURING", "active"),
        ("REQUEUED", "active"),
        ("SUSPENDED", "active"),
        ("COMPLETED", "succeeded"),
        ("FAILED", "failed"),
        ("CANCELLED by 0", "failed"),
        ("CANCELLED+", "failed"),
        ("OUT_OF_MEMORY", "failed"),
        ("TIMEOUT", "failed"),
        ("NODE_FAIL", "failed"),
        ("PREEMPTED", "failed"),
        ("BOOT_FAIL", "failed"),
        ("DEADLINE", "failed"),
        ("CD", "succeeded"),
        ("PD", "active"),
        ("", "unknown"),
        ("SOMETHING_NEW", "unknown"),
    ],
)
def test_classify(raw, expected):
    assert classify(raw) == expected


def test_every_state_is_classified_and_described():
    for state in JobState:
        outcome = classify(state)
        assert outcome in {"active", "succeeded", "failed", "unknown"}
        text = describe(state, job_id="7", reason="Priority", exit_code=3, resources={"mem_gb": 2, "time_limit_minutes": 9})
        assert text.startswith("Slurm job 7 ") and len(text) > 20
    assert ACTIVE_STATES.isdisjoint(FAILED_STATES)


def test_describe_is_actionable():
    assert "time_limit_minutes" in describe("TIMEOUT", job_id="1", resources={"time_limit_minutes": 9})
    assert "of 9 min" in describe("TIMEOUT", job_id="1", resources={"time_limit_minutes": 9})
    assert "mem_gb" in describe("OUT_OF_MEMORY", job_id="1")
    assert "uid 0" in describe("CANCELLED by 0", job_id="1")
    assert "exited with code 2" in describe("FAILED", job_id="1", exit_code=2)
    assert "reason: Resources" in describe("PENDING", job_id="1", reason="Resources")
    assert "retry" in describe("NODE_FAIL", job_id="1").lower()
    assert "did NOT succeed" in describe("UNKNOWN", job_id="1")
    assert "signal 9" in describe("FAILED", job_id="1", exit_code=0, signal=9)


def test_transient_errors():
    assert is_transient_slurm_error("squeue: error: Unable to contact slurm controller (connect failure)")
    assert is_transient_slurm_error("sacct: error: Problem talking to the database: Connection refused")
    assert not is_transient_slurm_error("slurm_load_jobs error: Invalid job id specified")


# ------------------------------------------------------------------------------------------ commands


def test_query_commands_take_lists_and_quote():
    assert shlex.split(squeue_command(["1", "2", "1"])) == [
        "squeue", "--noheader", "--states=all", "--jobs=1,2", "--format=%i|%j|%T|%r|%M|%S",
    ]
    sacct = shlex.split(sacct_command(["5", "6_2"]))
    assert sacct[:4] == ["sacct", "--parsable2", "-X", "--noheader"] and "--jobs=5,6_2" in sacct
    name = job_name("demo", "d", "r", "t")
    by_name = shlex.split(sacct_by_name_command([name], "now-7days"))
    assert f"--name={name}" in by_name and "--starttime=now-7days" in by_name
    assert f"--name={name}" in shlex.split(squeue_by_name_command([name]))
    assert shlex.split(scancel_command(["9", "10"])) == ["scancel", "9", "10"]


@pytest.mark.parametrize("bad", ["1;id", "$(id)", "-1", "1 2", "", "1\n2", "x" * 20])
def test_query_commands_reject_bad_ids(bad):
    for fn in (squeue_command, sacct_command, scancel_command):
        with pytest.raises(InputError):
            fn([bad])


@pytest.mark.parametrize("since", ["now; id", "$(id)", "-S", "2026-01-01 00:00", "yesterday"])
def test_sacct_by_name_rejects_bad_since(since):
    with pytest.raises(InputError):
        sacct_by_name_command([job_name("demo", "d", "r", "t")], since)


def test_sacct_by_name_rejects_foreign_names():
    with pytest.raises(InputError):
        sacct_by_name_command(["someone-else"], "now-1days")


def test_read_log_command(tmp_path):
    log = tmp_path / "slurm-1.out"
    log.write_bytes("héllo\nworld\n".encode())
    cmd = read_log_command(str(log), 3, 4)
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True).stdout
    import base64

    assert base64.b64decode(out.strip()) == "héllo\nworld\n".encode()[3:7]
    missing = subprocess.run(
        ["bash", "-c", read_log_command(str(tmp_path / "nope"), 0)], capture_output=True, text=True
    )
    assert missing.stdout.strip() == ""
    with pytest.raises(InputError):
        read_log_command("/tmp/x; id", 0)
    with pytest.raises(ValueError):
        read_log_command("/tmp/x", -1)


# ------------------------------------------------------------------------------------------ poll command


def _fake_slurm(tmp_path: Path, squeue: str, squeue_rc: int, sacct: str, sacct_rc: int = 0) -> dict[str, str]:
    """Fake squeue/sacct binaries that print canned output (and log their argv)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, text, rc in (("squeue", squeue, squeue_rc), ("sacct", sacct, sacct_rc)):
        (tmp_path / f"{name}.out").write_text(text)
        script = bindir / name
        script.write_text(
            f'#!/bin/bash\nprintf "%s\\n" "$*" >> {tmp_path}/{name}.argv\ncat {tmp_path}/{name}.out\nexit {rc}\n'
        )
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}


def _run_poll(env, ids, logs=None, names=None):
    cmd = poll_command(ids, logs)
    out = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, check=True).stdout
    return parse_poll_output(out, ids, names=names)


def test_poll_running_job_does_not_ask_sacct(tmp_path):
    env = _fake_slurm(tmp_path, "101|aifp-demo-0123456789ab|RUNNING|None|0:05|N/A\n", 0, "")
    log = tmp_path / "slurm-101.out"
    log.write_text("epoch=1/3 step=2 loss=0.9\n")
    res = _run_poll(env, ["101"], logs={"101": (str(log), 0)})
    assert res.complete and not res.errors
    assert res.jobs["101"].state is JobState.RUNNING and res.jobs["101"].source == "squeue"
    assert not (tmp_path / "sacct.argv").exists()
    data, offset = res.logs["101"]
    assert data == log.read_bytes() and offset == len(data)


def test_poll_falls_back_to_sacct_for_finished_jobs(tmp_path):
    sacct = "\n".join([_sacct_line(JobID="102", State="FAILED", ExitCode="2:0"), _sacct_line(JobID="103")]) + "\n"
    env = _fake_slurm(
        tmp_path, "101|aifp-demo-0123456789ab|PENDING|Priority|0:00|N/A\n102|aifp-demo-0123456789ab|FAILED|None|0:01|N/A\n",
        0, sacct,
    )
    res = _run_poll(env, ["101", "102", "103"])
    assert res.jobs["101"].state is JobState.PENDING and res.jobs["101"].reason == "Priority"
    assert res.jobs["102"].state is JobState.FAILED and res.jobs["102"].exit_code == 2
    assert res.jobs["103"].state is JobState.COMPLETED and res.jobs["103"].source == "sacct"
    # only the jobs squeue did not show as active went to sacct
    assert "--jobs=102,103" in (tmp_path / "sacct.argv").read_text()


def test_poll_all_gone_from_squeue_is_not_an_error(tmp_path):
    env = _fake_slurm(tmp_path, "slurm_load_jobs error: Invalid job id specified\n", 1, _sacct_line(JobID="7") + "\n")
    res = _run_poll(env, ["7"])
    assert not res.errors and res.jobs["7"].state is JobState.COMPLETED


def test_poll_controller_down_is_transient_and_not_found(tmp_path):
    env = _fake_slurm(
        tmp_path, "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n", 1,
        "sacct: error: Problem talking to the database: Connection refused\n", 1,
    )
    res = _run_poll(env, ["7"])
    assert res.errors and not res.jobs["7"].found and res.jobs["7"].state is JobState.UNKNOWN


def test_poll_found_nowhere_is_unknown_without_errors(tmp_path):
    env = _fake_slurm(tmp_path, "slurm_load_jobs error: Invalid job id specified\n", 1, "")
    res = _run_poll(env, ["8"])
    assert not res.errors and not res.jobs["8"].found


def test_poll_ignores_recycled_ids_of_other_jobs(tmp_path):
    env = _fake_slurm(tmp_path, "", 0, _sacct_line(JobID="9", JobName="someone-else") + "\n")
    res = _run_poll(env, ["9"], names={"9": "aifp-demo-0123456789ab"})
    assert not res.jobs["9"].found


def test_poll_output_cut_short_is_an_error():
    res = parse_poll_output("@@AIFP squeue rc=0\n1|x|RUNNING|None|0:01|N/A\n", ["1"])
    assert not res.complete and res.errors
    assert res.jobs["1"].state is JobState.RUNNING


def test_poll_command_rejects_bad_log_path():
    with pytest.raises(InputError):
        poll_command(["1"], {"1": ("/x/$(id)", 0)})


def test_the_tenants_constraint_and_reservation_reach_sbatch_and_only_from_the_policy():
    policy = TenantSlurmPolicy(account="acme", partitions=("cpu",), constraint="x86_64&ib", reservation="acme-week")
    argv = _gpu_argv(Resources.from_request({}, policy=policy))
    assert "--constraint=x86_64&ib" in argv and "--reservation=acme-week" in argv
    assert not any(a.startswith(("--constraint", "--reservation")) for a in _gpu_argv(
        Resources.from_request({"partition": "cpu"}, policy=GPU_POLICY)))
    for key in ("constraint", "reservation"):
        with pytest.raises(InputError, match=f"resources.{key} is set by the platform"):
            Resources.from_request({key: "x"}, policy=policy)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"constraint": "a100;id"}, "slurm.constraint"),
        ({"constraint": "-a100"}, "slurm.constraint"),
        ({"constraint": "a100 & ib"}, "slurm.constraint"),
        ({"reservation": "--all"}, "must match"),
    ],
)
def test_a_bad_constraint_or_reservation_in_a_policy_is_refused(over, message):
    with pytest.raises(InputError, match=message):
        TenantSlurmPolicy(account="acme", partitions=("cpu",), **over)
