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
