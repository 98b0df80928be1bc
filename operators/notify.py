"""A tenant's failure notifications through Airflow's notifiers (``on_failure_callback``).

:func:`failure_notifiers` turns the spec's ``notifications.on_failure`` targets into callbacks that
send through Airflow's own provider notifiers: an ``email`` target through the SMTP provider's
``SmtpNotifier``, a ``webhook`` target through the HTTP provider's ``HttpNotifier`` (a JSON POST).
The DAG factories put them in ``default_args``, so each task instance that fails for good (no retry
left) sends one notification per target, in the worker, with the task's own error. A run that
fails at one stage therefore sends one notification; the downstream tasks end
``upstream_failed`` and send none.

What is sent is :class:`aifactory.tenants.notifications.FailureSummary`: the DAG, run, task, try,
the error summary after Airflow's secrets masker, and the log URL. The notifier is built when the
failure happens, with that text, and its ``notify`` is called directly: its template rendering
never runs over the text (an error message is text a task or a user may shape; Jinja in it must
not run, ``{{ conn... }}`` would reach a connection's secret). The providers are imported only
then, not when the DAG file is parsed (the HTTP provider's import alone costs ~0.25 s per parse).
The SMTP server or webhook URL and any credential are in the target's Airflow connection.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aifactory.tenants.notifications import FailureSummary, NotificationTarget, error_summary

if TYPE_CHECKING:
    from aifactory.tenants.spec import TenantSpec

__all__ = ["FailureNotification", "failure_notifiers", "failure_summary"]

log = logging.getLogger(__name__)


def failure_summary(tenant: str, context: Any) -> FailureSummary:
    """What the failed task instance of ``context`` is, in the words a notification uses."""
    from airflow.sdk.log import redact

    ti = context["ti"]
    dag_run = context.get("dag_run")
    return FailureSummary(
        tenant=tenant,
        dag_id=ti.dag_id,
        run_id=dag_run.run_id if dag_run is not None else ti.run_id,
        task_id=ti.task_id,
        try_number=getattr(ti, "try_number", None),
        error=error_summary(context.get("exception"), redact),
        log_url=getattr(ti, "log_url", ""),
    )


def provider_notifier(target: NotificationTarget, summary: FailureSummary) -> Any:
    """The provider's notifier of one target, carrying ``summary`` (nothing left to render)."""
    if target.kind == "email":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        return SmtpNotifier(to=list(target.to), smtp_conn_id=target.conn_id, subject=summary.subject,
                            html_content=summary.html())
    from airflow.providers.http.notifications.http import HttpNotifier

    return HttpNotifier(http_conn_id=target.conn_id, method="POST", json=summary.payload(),
                        headers={"Content-Type": "application/json"})


class FailureNotification:
    """The ``on_failure_callback`` of one target of one tenant.

    A plain callable (Airflow calls it with the task's context); a notifier that cannot reach its
    server logs why and lets the task's own failure stand.
    """

    def __init__(self, tenant: str, target: NotificationTarget) -> None:
        self.tenant = tenant
        self.target = target

    def __repr__(self) -> str:
        return f"FailureNotification({self.tenant!r}, {self.target.kind}:{self.target.conn_id})"

    def __call__(self, context: Any) -> None:
        summary = failure_summary(self.tenant, context)
        try:
            provider_notifier(self.target, summary).notify(context)
        except Exception as exc:
            log.error("could not send the failure notification of %s through %s connection %s: %s: %s. "
                      "Check that connection and that its server is up", summary.task_id, self.target.kind,
                      self.target.conn_id, type(exc).__name__, exc)
            return
        log.info("failure of task %s sent through %s connection %s", summary.task_id, self.target.kind,
                 self.target.conn_id)


def failure_notifiers(spec: TenantSpec) -> list[FailureNotification]:
    """The ``on_failure_callback`` list of every task of the tenant's DAGs (empty: no notification)."""
    return [FailureNotification(spec.tenant, t) for t in spec.notifications]
