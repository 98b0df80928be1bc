"""SlurmJobTrigger (fake poll function, patched sleep), the SSH endpoint, and the operator's
validation-before-side-effects. No network."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from aifactory.errors import InputError
from aifactory.hpc.slurm import SACCT_FIELDS, JobObservation, JobState, PollResult, parse_sacct
from operators.hooks import SSHEndpoint, SSHPermanentError, backoff_delay
from operators.triggers import CLASSPATH, SlurmJobTrigger

NAME = "aifp-demo-0123456789ab"
LOG = "/srv/aifactory/demo/runs/r1/slurm-42.out"


def _trigger(**over) -> SlurmJobTrigger:
    kwargs: dict[str, Any] = dict(
        ssh_conn_id="aifactory_hpc_local", job_id="42", job_name=NAME, log_path=LOG,
        poll_interval=5, poll_interval_floor=2, not_found_limit=3, sacct_grace_polls=2, error_deadline_s=100,
        # the state machine alone; the shared poller has its own tests (test_cluster_poller.py)
        batched=False,
    )
    kwargs.update(over)
    return SlurmJobTrigger(**kwargs)


def _record(state="COMPLETED", exit_code="0:0"):
    row = {"JobID": "42", "JobName": NAME, "Account": "demo", "Partition": "debug", "State": state,
           "ExitCode": exit_code, "Elapsed": "00:00:10", "AllocTRES": "cpu=1,mem=1G,node=1", "NodeList": "n1",
           "Submit": "2026-01-01T00:00:00", "Start": "2026-01-01T00:00:01", "End": "2026-01-01T00:00:11",
           "Reason": "None"}
    return parse_sacct("|".join(row[f] for f in SACCT_FIELDS))[0]


def _obs(state, source="squeue", reason="", record=None) -> PollResult:
    st = JobState(state)
    ob = JobObservation(job_id="42", state=st, raw_state=state, source=source, reason=reason, record=record,
                        exit_code=record.exit_code if record else None, signal=record.signal if record else None)
    return PollResult(jobs={"42": ob}, complete=True)


def _nowhere(errors=()) -> PollResult:
    return PollResult(jobs={"42": JobObservation(job_id="42", state=JobState.UNKNOWN)}, errors=list(errors),
                      complete=True)


class Scripted(SlurmJobTrigger):
    """The trigger with its SSH seams replaced by a script of poll results."""

    def __init__(self, script, **kw):
        super().__init__(**kw)
        self.script = list(script)
        self.queries: list[tuple[dict, dict]] = []
        self.connects = 0
        #: what each certificate check does in turn: None (nothing due) or an exception to raise
        self.credentials: list[BaseException | None] = []

    async def _connect(self):
        self.connects += 1
        return object()

    async def _refresh_certificate(self):
        item = self.credentials.pop(0) if self.credentials else None
        if isinstance(item, BaseException):
            raise item

    async def _query(self, conn, jobs, logs):
        self.queries.append((dict(jobs), dict(logs)))
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


@pytest.fixture
def sleeps(monkeypatch):
    calls: list[float] = []

    async def fake_sleep(delay, *a, **k):
        calls.append(delay)

    monkeypatch.setattr("operators.triggers.asyncio.sleep", fake_sleep)
    return calls


def _events(trigger) -> list[dict]:
    async def collect():
        return [e.payload async for e in trigger.run()]

    return asyncio.run(collect())


def _scripted(script, **over):
    base = _trigger(**over).serialize()[1]
    return Scripted(script, **base)


def test_serialize_round_trip():
    t = _trigger(log_offset=17, cancel_on_kill=False)
    classpath, kwargs = t.serialize()
    assert classpath == CLASSPATH == "operators.triggers.SlurmJobTrigger"
    again = SlurmJobTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    import importlib
    import json

    module, _, cls = classpath.rpartition(".")
    assert getattr(importlib.import_module(module), cls) is SlurmJobTrigger
    json.dumps(kwargs)  # the triggerer stores kwargs; they must be plain JSON


def test_constructor_rejects_unsafe_values():
    with pytest.raises(InputError):
        _trigger(job_id="42;scancel -u x")
    with pytest.raises(InputError):
        _trigger(log_path="/x/$(id)")


def test_success_after_pending_running_completing(sleeps, capsys):
    rec = _record()
    script = [
        _obs("PENDING", reason="Priority"),
        _obs("PENDING", reason="Priority"),
        _obs("RUNNING"),
        _obs("COMPLETING"),
        _obs("COMPLETED", source="sacct", record=rec),
    ]
    script[2].logs["42"] = (b"epoch=1/2 step=1 loss=0.5\n", 26)
    t = _scripted(script)
    (event,) = _events(t)
    logged = capsys.readouterr().out  # Airflow 3 logs through structlog to stdout
    assert event["status"] == "succeeded" and event["state"] == "COMPLETED" and event["exit_code"] == 0
    assert event["accounting"]["elapsed_s"] == 10 and event["accounting"]["cpu_hours"] > 0
    assert event["log_offset"] == 26 and event["polls"] == 5
    assert sleeps == [5, 5, 5, 5]  # COMPLETING is not done
    # the log offset advanced for the next poll, and the log line reached the trigger log
    assert t.queries[3][1] == {"42": (LOG, 26)}
    assert "[slurm 42] epoch=1/2" in logged
    assert logged.count("waiting in the queue") == 1  # PENDING logged once per reason
    assert t.connects == 1  # one connection for the whole watch


def test_interval_respects_floor(sleeps):
    t = _scripted([_obs("RUNNING"), _obs("FAILED", source="sacct", record=_record("FAILED", "2:0"))],
                  poll_interval=0.1, poll_interval_floor=3)
    (event,) = _events(t)
    assert sleeps == [3]
    assert event["status"] == "failed" and event["exit_code"] == 2
    assert "exited with code 2" in event["message"]


@pytest.mark.parametrize(
    "state, words",
    [("TIMEOUT", "time_limit_minutes"), ("OUT_OF_MEMORY", "mem_gb"), ("NODE_FAIL", "node failed"),
     ("CANCELLED", "cancelled"), ("PREEMPTED", "preempted")],
)
def test_failure_states_give_actionable_messages(sleeps, state, words):
    (event,) = _events(_scripted([_obs(state, source="sacct", record=_record(state, "0:9"))]))
    assert event["status"] == "failed" and words in event["message"]


def test_not_found_is_unknown_never_success(sleeps):
    (event,) = _events(_scripted([_nowhere(), _nowhere(), _nowhere()]))
    assert event["status"] == "unknown" and "did NOT succeed" in event["message"]


def test_not_found_counter_resets_when_job_reappears(sleeps):
    rec = _record()
    script = [_nowhere(), _nowhere(), _obs("PENDING"), _nowhere(), _nowhere(),
              _obs("COMPLETED", source="sacct", record=rec)]
    (event,) = _events(_scripted(script))
    assert event["status"] == "succeeded"


def test_controller_outage_is_retried_not_failed(sleeps):
    outage = _nowhere(["squeue failed (rc=1): Unable to contact slurm controller"])
    script = [outage] * 6 + [_obs("COMPLETED", source="sacct", record=_record())]
    (event,) = _events(_scripted(script, not_found_limit=2))
    assert event["status"] == "succeeded"
    assert len(sleeps) == 6 and sleeps[-1] >= sleeps[0]  # backoff


def test_ssh_errors_reconnect_and_give_up_after_deadline(sleeps, monkeypatch):
    clock = iter(range(0, 10_000, 60))
    monkeypatch.setattr("operators.triggers.time.monotonic", lambda: next(clock))
    t = _scripted([OSError("Error reading SSH protocol banner")] * 10, error_deadline_s=100)
    (event,) = _events(t)
    assert event["status"] == "error" and "may" in event["message"] and "reattaches" in event["message"]
    assert t.connects >= 2  # dropped connections are re-opened


def test_permanent_ssh_error_ends_at_once(sleeps):
    t = _scripted([SSHPermanentError("host key mismatch")])
    (event,) = _events(t)
    assert event["status"] == "error" and "host key mismatch" in event["message"] and not sleeps


def test_squeue_final_state_waits_for_sacct_then_reports(sleeps):
    # squeue says COMPLETED but sacct has no record yet: wait sacct_grace_polls, then report anyway.
    script = [_obs("COMPLETED"), _obs("COMPLETED"), _obs("COMPLETED")]
    (event,) = _events(_scripted(script, sacct_grace_polls=2))
    assert event["status"] == "succeeded" and event["accounting"] is None and len(sleeps) == 2


def test_run_never_cancels(sleeps):
    """Cancelling the run() task (triggerer restart) must not send scancel."""
    sent: list[str] = []

    class Spy(Scripted):
        async def _run(self, conn, command):
            sent.append(command)
            return 0, "", ""

    t = Spy([_obs("RUNNING")] * 3 + [asyncio.CancelledError()], **_trigger().serialize()[1])
    with pytest.raises(asyncio.CancelledError):
        _events(t)
    assert not any("scancel" in c for c in sent)


def test_on_kill_scancels_only_when_enabled(monkeypatch):
    commands: list[str] = []

    class FakeHook:
        async def run_async(self, command, timeout=60):
            commands.append(command)
            return 0, "", ""

    t = _trigger()
    monkeypatch.setattr(t, "_hook", lambda: FakeHook())
    asyncio.run(t.on_kill())
    assert commands == ["scancel 42"]
    t2 = _trigger(cancel_on_kill=False)
    monkeypatch.setattr(t2, "_hook", lambda: FakeHook())
    asyncio.run(t2.on_kill())
    assert commands == ["scancel 42"]


def test_real_query_parses_poll_output(sleeps):
    """The default _query with a fake command runner: one command per poll, parsed."""
    rec_line = "|".join(["42", NAME, "demo", "debug", "COMPLETED", "0:0", "00:00:03", "cpu=1,node=1", "n1",
                         "2026-01-01T00:00:00", "2026-01-01T00:00:00", "2026-01-01T00:00:03", "None"])
    outputs = [
        f"@@AIFP squeue rc=0\n42|{NAME}|RUNNING|None|0:01|N/A\n@@AIFP log job=42 offset=0\naGVsbG8K\n@@AIFP end\n",
        "@@AIFP squeue rc=1\nslurm_load_jobs error: Invalid job id specified\n@@AIFP sacct rc=0\n"
        + rec_line + "\n@@AIFP log job=42 offset=6\n\n@@AIFP end\n",
    ]
    commands: list[str] = []

    class Fake(SlurmJobTrigger):
        async def _connect(self):
            return object()

        async def _refresh_certificate(self):
            return None

        async def _run(self, conn, command):
            commands.append(command)
            return 0, outputs.pop(0), ""

    (event,) = _events(Fake(**_trigger().serialize()[1]))
    assert event["status"] == "succeeded" and event["log_offset"] == 6
    assert len(commands) == 2 and "squeue" in commands[0] and "tail -c +7" in commands[1]


# ------------------------------------------------------------------------------------------ hooks


def _conn(**over):
    base = dict(conn_id="aifactory_hpc_local", host="127.0.0.1", port=2222, login="aifactory",
                extra_dejson={"key_file": "/k/id_ed25519", "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA comment",
                              "no_host_key_check": False})
    base.update(over)
    return SimpleNamespace(**base)


def test_endpoint_from_connection():
    ep = SSHEndpoint.from_connection(_conn())
    assert (ep.host, ep.port, ep.username, ep.key_file) == ("127.0.0.1", 2222, "aifactory", "/k/id_ed25519")
    assert ep.host_key == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA"
    # asyncssh and OpenSSH look non-default ports up as [host]:port (docs/failure-modes.md, 9)
    assert ep.known_hosts_line == "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA"
    assert SSHEndpoint.from_connection(_conn(port=None)).known_hosts_pattern == "127.0.0.1"


@pytest.mark.parametrize(
    "extra",
    [
        {"key_file": "/k"},
        {"key_file": "/k", "host_key": "AAAAonlybase64"},
        {"key_file": "/k", "host_key": "ssh-dss AAAA"},
        {"key_file": "/k", "host_key": "ssh-ed25519 AAAA", "no_host_key_check": "true"},
        {"private_key": "-----BEGIN...", "host_key": "ssh-ed25519 AAAA"},
    ],
)
def test_endpoint_refuses_unpinned_or_unsafe(extra):
    with pytest.raises(SSHPermanentError):
        SSHEndpoint.from_connection(_conn(extra_dejson=extra))


def test_bulk_pipe_uses_the_connection_login_and_pinned_key(tmp_path):
    from operators.hooks import FactorySSHHook

    key = tmp_path / "id_ed25519"
    key.write_text("k")
    key.chmod(0o600)
    hook = FactorySSHHook(ssh_conn_id="aifactory_hpc_local")
    hook.__dict__["endpoint"] = SSHEndpoint.from_connection(
        _conn(extra_dejson={"key_file": str(key), "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA"})
    )
    pipe = hook.bulk_pipe()
    assert pipe is not None
    assert (pipe.host, pipe.port, pipe.username, pipe.key_file) == ("127.0.0.1", 2222, "aifactory", str(key))
    assert pipe.known_hosts_line == "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA"
    key.chmod(0o644)  # OpenSSH would refuse it: SFTP instead, with a warning that says how to fix it
    assert hook.bulk_pipe() is None


def test_backoff_grows_and_is_capped():
    assert 1 <= backoff_delay(1) <= 2
    assert 8 <= backoff_delay(4) <= 16
    assert backoff_delay(50) <= 60


def test_no_valid_certificate_makes_the_watch_wait_and_say_why_without_failing_the_job(sleeps, capsys):
    """Renewal broken for longer than the error deadline: the watch waits (the job runs on) and then
    sees the job finish once a certificate is back; the wait is never an error event."""
    from operators.hooks import SSHCredentialPending

    why = "no valid SSH certificate for aifp-demo: ... the renewal command ... exited 3: the local CA is offline"
    pending = SSHCredentialPending(why)
    # the open connection keeps serving a poll; then it drops, and 20 connects cannot log in
    t = _scripted([_obs("RUNNING"), ConnectionResetError("dropped")] + [pending] * 20
                  + [_obs("COMPLETED", source="sacct", record=_record())], error_deadline_s=10)
    t.credentials = [None] + [pending] * 21
    (event,) = _events(t)
    assert event["status"] == "succeeded", event
    # 20 waits of credential_retry_s each: far past the 10 s error deadline, still no error event
    assert sleeps.count(t.credential_retry_s) == 20
    out = capsys.readouterr().out
    waits = [line for line in out.splitlines() if "keeps running" in line]
    assert waits and all("the local CA is offline" in w for w in waits)
    assert "goes on over the open connection" in out
    assert len(waits) < 20  # the same line is not repeated at every try


def test_a_due_certificate_that_cannot_be_renewed_yet_is_reported_and_polling_goes_on(sleeps, capsys, monkeypatch):
    from aifactory.hpc.certificates import Freshness

    t = _scripted([_obs("RUNNING"), _obs("COMPLETED", source="sacct", record=_record())])
    answers = [Freshness(None, False, "SSH certificate of aifp-demo is due for renewal and the renewal "
                                      "command exited 3; logins keep working until it expires"),
               Freshness(None, True, "SSH certificate renewed for aifp-demo: ... now valid until ...")]

    class Hook:
        async def arefresh_certificate(self):
            return answers.pop(0)

    monkeypatch.setattr(t, "_hook", lambda: Hook())
    monkeypatch.delattr(Scripted, "_refresh_certificate")
    (event,) = _events(t)
    assert event["status"] == "succeeded"
    text = capsys.readouterr().out
    assert "logins keep working until it expires" in text and "SSH certificate renewed for aifp-demo" in text


def test_endpoint_reads_a_pinned_bastion_and_a_certificate_renewal():
    extra = {"key_file": "/k/id_ed25519", "host_key": "ssh-ed25519 AAAA",
             "proxy_jump": {"host": "bastion.example", "port": 2223, "host_key": "ssh-ed25519 BBBB c"},
             "cert_renew_command": ["/usr/bin/site-cert", "--key", "{key_file}", "--user", "{login}"],
             "cert_renew_before_s": 120}
    ep = SSHEndpoint.from_connection(_conn(extra_dejson=extra))
    assert ep.jump.known_hosts_line == "[bastion.example]:2223 ssh-ed25519 BBBB"
    assert ep.via == "[127.0.0.1]:2222 via [bastion.example]:2223"
    assert ep.renewal.argv(ep.key_file, ep.username) == [
        "/usr/bin/site-cert", "--key", "/k/id_ed25519", "--user", "aifactory"]
    assert ep.renewal.renew_before_s == 120
    assert ep.for_transfer() == ep  # no transfer_host: bulk data on the login node
    dtn = SSHEndpoint.from_connection(_conn(extra_dejson={
        **extra, "transfer_host": {"host": "dtn.example", "port": 22, "host_key": "ssh-ed25519 CCCC"}})).for_transfer()
    assert (dtn.host, dtn.port, dtn.known_hosts_line) == ("dtn.example", 22, "dtn.example ssh-ed25519 CCCC")
    assert dtn.jump == ep.jump and dtn.username == ep.username and dtn.renewal == ep.renewal
    # the same bastion given as JSON text (a connection edited in the UI)
    import json

    as_text = SSHEndpoint.from_connection(_conn(extra_dejson={**extra, "proxy_jump": json.dumps(extra["proxy_jump"])}))
    assert as_text.jump == ep.jump


@pytest.mark.parametrize("over, says", [
    ({"proxy_jump": {"host": "b", "port": 22}}, "proxy_jump.host_key"),
    ({"proxy_jump": {"host": "b", "host_key": "ssh-ed25519 B", "command": "x"}}, "unknown fields"),
    ({"proxy_jump": "not json"}, "not JSON"),
    ({"cert_renew_command": "site-cert {key_file}"}, "list of non-empty strings"),
    ({"cert_renew_command": ["site-cert", "{keyfile}"]}, "placeholder"),
    ({"cert_renew_command": ["site-cert"], "cert_renew_before_s": 0}, "> 0"),
    ({"cert_renew_command": ["site-cert"], "key_file": None}, "no key_file"),
])
def test_endpoint_refuses_a_bad_bastion_or_renewal(over, says):
    extra = {"key_file": "/k/id_ed25519", "host_key": "ssh-ed25519 AAAA", **over}
    with pytest.raises(SSHPermanentError, match=says):
        SSHEndpoint.from_connection(_conn(extra_dejson=extra))
