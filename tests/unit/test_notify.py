"""Failure notifications: the spec block, what a notification says, the notifiers built from it,
and the onboarding step that writes the targets' connections (the real mail receiver:
tests/e2e/test_operator_view.py)."""

from __future__ import annotations

import logging
from dataclasses import replace
from types import SimpleNamespace

import pytest

from aifactory.errors import InputError
from aifactory.platform.onboard import Context
from aifactory.tenants import load_tenant
from aifactory.tenants.notifications import (
    ERROR_SUMMARY_CHARS,
    FailureSummary,
    NotificationTarget,
    error_summary,
    local_connection,
    onboard_notifications,
    parse_notifications,
)
from operators.notify import FailureNotification, failure_notifiers, failure_summary, provider_notifier

MAIL = NotificationTarget(kind="email", conn_id="aifactory_smtp", to=("ops@demo.example",))
HOOK = NotificationTarget(kind="webhook", conn_id="aifactory_webhook_demo")


def _summary(error: str = "InputError: hyperparameter epochs must be >= 1") -> FailureSummary:
    return FailureSummary(tenant="demo", dag_id="factory_demo", run_id="manual__x", task_id="validate",
                          try_number=1, error=error, log_url="http://127.0.0.1:8080/dags/factory_demo/runs/x")


def test_the_spec_block_parses_and_bad_targets_name_their_key():
    raw = {"on_failure": [{"kind": "email", "conn_id": "aifactory_smtp", "to": ["ops@demo.example"]},
                          {"kind": "webhook", "conn_id": "aifactory_webhook_demo"}]}
    assert parse_notifications(raw, "demo.yaml") == (MAIL, HOOK)
    assert parse_notifications(None, "demo.yaml") == ()
    for bad, said in (({"on_success": []}, "unknown event"), ({"on_failure": [{"kind": "sms", "conn_id": "x1"}]}, "kind"),
                      ({"on_failure": [{"kind": "email", "conn_id": "aifactory_smtp", "to": "ops"}]}, "to:"),
                      ({"on_failure": [{"kind": "webhook", "conn_id": "https://hook"}]}, "conn_id")):
        with pytest.raises(InputError, match=said):
            parse_notifications(bad, "demo.yaml")


def test_the_demo_tenant_mails_its_failures_to_its_own_address():
    assert load_tenant("demo").notifications == (MAIL,)


def test_a_summary_names_dag_run_task_and_error_and_escapes_it_as_html():
    summary = _summary("ValueError: <script>alert(1)</script>")
    text = summary.text()
    for word in ("factory_demo", "manual__x", "validate", "ValueError", summary.log_url):
        assert word in text
    assert "factory_demo" in summary.subject and "validate" in summary.subject
    assert "<script>" not in summary.html() and "&lt;script&gt;" in summary.html()
    assert summary.payload()["task_id"] == "validate" and summary.payload()["error"].startswith("ValueError")


def test_the_error_is_masked_before_it_is_cut_and_stays_bounded():
    masked = error_summary(RuntimeError("token s3cr3t-value here"), lambda text: text.replace("s3cr3t-value", "***"))
    assert masked == "RuntimeError: token *** here"
    long = error_summary("x" * 10 * ERROR_SUMMARY_CHARS)
    assert len(long) <= ERROR_SUMMARY_CHARS + 10 and long.endswith("[...]")
    assert "marked failed" in error_summary(None)
    assert "\x1b" not in error_summary("a\x1b[31mred")  # terminal escapes are shown, not sent


def test_the_summary_comes_from_the_failed_tasks_context():
    ti = SimpleNamespace(dag_id="factory_demo", run_id="manual__x", task_id="train", try_number=3,
                         log_url="http://log")
    summary = failure_summary("demo", {"ti": ti, "dag_run": SimpleNamespace(run_id="manual__x"),
                                       "exception": RuntimeError("Slurm job 7 FAILED")})
    assert (summary.task_id, summary.try_number, summary.error) == ("train", 3, "RuntimeError: Slurm job 7 FAILED")


def test_the_notifiers_carry_the_text_without_rendering_it():
    """An error may contain Jinja; the provider notifier gets it as finished text, and its notify()
    is called without the template rendering (that would evaluate {{ conn... }})."""
    summary = _summary("boom {{ conn.aifactory_s3_demo.password }}")
    mail = provider_notifier(MAIL, summary)
    assert type(mail).__name__ == "SmtpNotifier" and mail.to == ["ops@demo.example"]
    assert mail.smtp_conn_id == "aifactory_smtp" and "{{ conn.aifactory_s3_demo.password }}" in mail.html_content
    hook = provider_notifier(HOOK, summary)
    assert type(hook).__name__ == "HttpNotifier" and hook.http_conn_id == "aifactory_webhook_demo"
    assert hook.json["error"] == summary.error


def test_each_target_of_a_tenant_is_one_callback():
    spec = replace(load_tenant("demo"), notifications=(MAIL, HOOK))
    callbacks = failure_notifiers(spec)
    assert [c.target for c in callbacks] == [MAIL, HOOK] and {c.tenant for c in callbacks} == {"demo"}
    assert failure_notifiers(replace(spec, notifications=())) == []


def test_an_unreachable_mail_server_is_logged_and_the_task_failure_stands(monkeypatch, caplog):
    # a real Airflow connection (environment) to a port nobody listens on
    monkeypatch.setenv("AIRFLOW_CONN_AIFP_UNIT_SMTP",
                       '{"conn_type": "smtp", "host": "127.0.0.1", "port": 9, '
                       '"extra": {"from_email": "a@localhost", "disable_tls": true, "disable_ssl": true, "timeout": 2}}')
    target = replace(MAIL, conn_id="aifp_unit_smtp")
    ti = SimpleNamespace(dag_id="factory_demo", run_id="r", task_id="validate", try_number=1, log_url="")
    with caplog.at_level(logging.ERROR, logger="operators.notify"):
        FailureNotification("demo", target)({"ti": ti, "exception": ValueError("bad")})
    assert "could not send the failure notification of validate" in caplog.text and "aifp_unit_smtp" in caplog.text


def test_onboarding_writes_missing_connections_once_and_keeps_a_sites_own(tmp_path):
    ctx = Context(secrets_dir=tmp_path)
    spec = replace(load_tenant("demo"), notifications=(MAIL, HOOK))
    ctx.connections.put(HOOK.conn_id, {"conn_type": "http", "host": "https://hooks.example/T0"})  # the site's
    changes = onboard_notifications(ctx, spec, None)
    assert [c.action for c in changes] == ["set connection aifactory_smtp (the local email receiver)"]
    assert ctx.connections.get("aifactory_smtp") == local_connection(MAIL)
    assert local_connection(MAIL)["port"] == 8025 and local_connection(MAIL)["password"] is None
    assert ctx.connections.get(HOOK.conn_id)["host"] == "https://hooks.example/T0"
    assert onboard_notifications(ctx, spec, None) == []
    dry = Context(secrets_dir=tmp_path / "dry", dry_run=True)
    assert len(onboard_notifications(dry, spec, None)) == 2 and dry.connections.all() == {}


def test_the_providers_notifiers_deliver_the_summary_to_real_receivers(monkeypatch):
    """SmtpNotifier to a real SMTP server (aiosmtpd) and HttpNotifier to a real HTTP server, both on
    ephemeral local ports, through Airflow connections from the environment."""
    import json
    import socket
    import threading
    from email import message_from_bytes, policy
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        smtp_port = probe.getsockname()[1]
    mails, posts = [], []

    class Mailbox:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            mails.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default)))
            return "250 OK"

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            posts.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    smtp = Controller(Mailbox(), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    web = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_AIFP_UNIT_SMTP", json.dumps(
            {"conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
             "extra": {"from_email": "aifactory@localhost", "disable_tls": True, "disable_ssl": True}}))
        monkeypatch.setenv("AIRFLOW_CONN_AIFP_UNIT_HOOK", json.dumps(
            {"conn_type": "http", "host": f"http://127.0.0.1:{web.server_port}/hooks/demo"}))
        ti = SimpleNamespace(dag_id="factory_demo", run_id="manual__x", task_id="quality", try_number=1,
                             log_url="http://log")
        context = {"ti": ti, "exception": ValueError("quality gate failed {{ var.value.x }}")}
        FailureNotification("demo", replace(MAIL, conn_id="aifp_unit_smtp"))(context)
        FailureNotification("demo", replace(HOOK, conn_id="aifp_unit_hook"))(context)
    finally:
        smtp.stop()
        web.shutdown()
        web.server_close()
    ((rcpt, mail),) = mails
    assert rcpt == ["ops@demo.example"] and "factory_demo" in mail["Subject"] and "quality" in mail["Subject"]
    body = mail.get_body(("html",)).get_content()
    assert "manual__x" in body and "quality gate failed {{ var.value.x }}" in body  # sent as text, not rendered
    ((path, payload),) = posts
    assert path == "/hooks/demo" and payload["task_id"] == "quality" and payload["error"].startswith("ValueError")
