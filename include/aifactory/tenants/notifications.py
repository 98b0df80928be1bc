"""Where a tenant's pipeline failures are announced (``notifications:`` in the tenant spec).

A platform engineer declares the targets; a startup cannot change them. Each target names an
Airflow connection that holds the address and any secret (an SMTP server, a webhook URL), so the
spec carries no secret and no host. The DAG factory turns the targets into Airflow notifiers
(``on_failure_callback``), see :mod:`operators.notify`.

    notifications:
      on_failure:
        - kind: email            # SMTP through the connection; to: who gets the mail
          conn_id: aifactory_smtp
          to: [ops@demo.example]
        - kind: webhook          # an HTTP POST of a JSON summary to the connection's URL
          conn_id: aifactory_webhook_demo
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aifactory import layout
from aifactory.errors import InputError
from aifactory.text import shown

#: the kinds of notification target the factory knows
NOTIFICATION_KINDS = ("email", "webhook")
#: the events a target can be declared for
NOTIFICATION_EVENTS = ("on_failure",)


@dataclass(frozen=True)
class NotificationTarget:
    """One place a tenant's failures are announced."""

    kind: str
    conn_id: str
    #: mail recipients (kind ``email`` only)
    to: tuple[str, ...] = ()


def parse_notifications(raw: Any, where: str) -> tuple[NotificationTarget, ...]:
    """The ``on_failure`` targets of a spec's ``notifications:`` block (none when it is absent)."""
    if raw is None:
        return ()
    where = f"{where}: notifications"
    if not isinstance(raw, Mapping):
        raise InputError(f"{where} must be a mapping like {{on_failure: [{{kind: webhook, conn_id: ...}}]}}")
    unknown = sorted(set(raw) - set(NOTIFICATION_EVENTS))
    if unknown:
        raise InputError(f"{where}: unknown event(s) {[shown(k) for k in unknown]}; known: {list(NOTIFICATION_EVENTS)}")
    targets = raw.get("on_failure") or []
    if not isinstance(targets, list):
        raise InputError(f"{where}.on_failure must be a list of targets")
    return tuple(_target(t, f"{where}.on_failure[{i}]") for i, t in enumerate(targets))


def _target(raw: Any, where: str) -> NotificationTarget:
    if not isinstance(raw, Mapping):
        raise InputError(f"{where} must be a mapping like {{kind: webhook, conn_id: ...}}")
    kind = raw.get("kind")
    if kind not in NOTIFICATION_KINDS:
        raise InputError(f"{where}: kind {shown(kind)} must be one of {', '.join(NOTIFICATION_KINDS)}")
    conn_id = str(raw.get("conn_id") or "")
    if not layout.CONN_ID_RE.match(conn_id):
        raise InputError(f"{where}: conn_id {shown(conn_id)} must match {layout.CONN_ID_RE.pattern}")
    to = raw.get("to") or []
    if kind == "email" and (not to or isinstance(to, str) or not all(isinstance(a, str) and "@" in a for a in to)):
        raise InputError(f"{where}: an email target needs to: a list of mail addresses")
    if kind == "webhook" and to:
        raise InputError(f"{where}: a webhook target takes no to: (the connection holds the URL)")
    return NotificationTarget(kind=kind, conn_id=conn_id, to=tuple(to))


# ---------------------------------------------------------------------------------------------
# What a failure notification says (operators.notify sends it)
# ---------------------------------------------------------------------------------------------

#: at most this much of the error goes into a notification (the task log holds the rest)
ERROR_SUMMARY_CHARS = 1500


@dataclass(frozen=True)
class FailureSummary:
    """One failed task instance, as its tenant's targets are told about it.

    It names the DAG, the run, the task and its try, the error's first ``ERROR_SUMMARY_CHARS``
    characters (secrets already masked by the caller) and where the log is; never a parameter
    value, a connection or a path beyond what the error itself says.
    """

    tenant: str
    dag_id: str
    run_id: str
    task_id: str
    try_number: int | None
    error: str
    log_url: str

    @property
    def subject(self) -> str:
        return f"[AI Factory] {self.dag_id}: task {self.task_id} failed in run {self.run_id}"

    def text(self) -> str:
        return "\n".join([
            f"Tenant:  {self.tenant}",
            f"DAG:     {self.dag_id}",
            f"Run:     {self.run_id}",
            f"Task:    {self.task_id} (try {self.try_number if self.try_number is not None else '?'})",
            f"Log:     {self.log_url}",
            "",
            "Error:",
            self.error,
            "",
            "Clear the failed task in Airflow to resume the run from it (docs/observability.md).",
        ])

    def html(self) -> str:
        """The text as HTML (mail bodies of Airflow's SMTP notifier are HTML): every character escaped."""
        import html

        return f"<pre>{html.escape(self.text())}</pre>"

    def payload(self) -> dict[str, Any]:
        """The JSON body of a webhook."""
        return {"event": "task_failed", "tenant": self.tenant, "dag_id": self.dag_id, "run_id": self.run_id,
                "task_id": self.task_id, "try_number": self.try_number, "error": self.error,
                "log_url": self.log_url, "summary": self.subject}


def error_summary(error: object, redact: Any = None) -> str:
    """The error of a failed task as one bounded, printable text; ``redact`` (Airflow's secrets
    masker) masks every secret the task process has seen before the text is cut."""
    from aifactory.text import printable

    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}"
    else:
        text = str(error) if error else "(no error recorded: the task was failed from outside, e.g. marked failed)"
    if redact is not None:
        text = str(redact(text))
    text = "\n".join(printable(line, max_chars=ERROR_SUMMARY_CHARS) for line in text.splitlines())
    return text if len(text) <= ERROR_SUMMARY_CHARS else text[:ERROR_SUMMARY_CHARS] + " [...]"


# ---------------------------------------------------------------------------------------------
# The local stack's receivers (onboarding writes the targets' connections when they are missing)
# ---------------------------------------------------------------------------------------------

#: the local stack's mail receiver (tests/e2e/test_operator_view.py starts one there)
LOCAL_RECEIVER_HOST = "127.0.0.1"
LOCAL_SMTP_PORT = 8025
LOCAL_MAIL_FROM = "aifactory@localhost"
#: the local stack's webhook receiver: ``http://127.0.0.1:8026/hooks/<conn_id>``
LOCAL_WEBHOOK_PORT = 8026


def local_connection(target: NotificationTarget) -> dict[str, Any]:
    """The connection of ``target`` on the local stack (ConnectionStore format): plain SMTP or HTTP
    on 127.0.0.1, no credential. A site's own connection (its relay, its webhook URL) replaces it."""
    if target.kind == "email":
        return {"conn_type": "smtp", "host": LOCAL_RECEIVER_HOST, "port": LOCAL_SMTP_PORT, "login": None,
                "password": None, "extra_dejson": {"from_email": LOCAL_MAIL_FROM, "disable_tls": True,
                                                   "disable_ssl": True, "timeout": 10, "retry_limit": 1}}
    return {"conn_type": "http", "host": f"http://{LOCAL_RECEIVER_HOST}:{LOCAL_WEBHOOK_PORT}/hooks/{target.conn_id}",
            "port": None, "login": None, "password": None, "extra_dejson": {}}


def onboard_notifications(ctx: Any, spec: Any, cluster: Any) -> list[Any]:
    """Onboarding step: each notification target's connection exists. A missing one is written for
    the local stack's receiver (:func:`local_connection`); an existing one is the platform's and
    is left as it is (so a site's relay and webhook URLs are never overwritten)."""
    from aifactory.platform.onboard import Change

    changes = []
    for target in spec.notifications:
        if ctx.connections.get(target.conn_id) is None:
            changes.append(Change(spec.tenant, "notifications",
                                  f"set connection {target.conn_id} (the local {target.kind} receiver)"))
            if not ctx.dry_run:
                ctx.connections.put(target.conn_id, local_connection(target))
    return changes
