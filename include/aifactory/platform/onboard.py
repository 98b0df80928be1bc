"""Onboarding: apply every tenant spec, idempotently.

``python -m aifactory.platform.onboard [--tenant NAME] [--check] [--json]`` (``make onboard``, as
root on the login node) runs the platform's own steps (:func:`platform_steps`) once, then, for each
tenant spec, every step of :func:`tenant_steps` in order. A step looks at what exists, changes only
what differs from the spec, and returns the :class:`Change` list it made (with ``--check``: would
make). Onboarding twice therefore changes nothing the second time, and prints so.

Steps (each in its own module, each the one place its rule lives):

1. ``cluster``: the tenant's Unix user, SSH key, SSH connection and directories (0700)
2. ``slurm``: the tenant's Slurm account, the association of its user only, and its allocation
3. ``objectstore``: the tenant's bucket, its own S3 credential limited to it, and its connection
4. ``airflow``: the tenant's Airflow role, DAG permissions and users
5. ``notifications``: the connection of each failure-notification target (written for the local
   stack's receivers when missing; a site's own connection is kept)

A broken spec or a failing step fails that tenant alone (its later steps are skipped, they may
need what the failed one makes): the others are still onboarded, the table names each failure and
what to do, and the command exits 1. The runner works with whatever steps are registered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aifactory.errors import FactoryError
from aifactory.layout import REPO_DIR, tenants_dir
from aifactory.platform.secrets import ConnectionStore
from aifactory.tenants.spec import ClusterSpec, SpecError, TenantSpec, load_cluster, load_tenant_specs
from aifactory.text import printable, shown_list


@dataclass(frozen=True)
class Change:
    """One thing onboarding changed (or, with ``--check``, would change)."""

    tenant: str
    step: str
    action: str


@dataclass
class Context:
    """What every step needs besides the specs.

    :param secrets_dir: where generated keys, credentials and the connections file live (0700).
    :param env: the local stack's environment (endpoints; ``.stack/stack.env``).
    :param dry_run: report what would change, change nothing.
    """

    secrets_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def connections(self) -> ConnectionStore:
        return ConnectionStore(self.secrets_dir)


Step = Callable[[Context, TenantSpec, ClusterSpec], list[Change]]


PlatformStep = Callable[[Context, list[TenantSpec], list[ClusterSpec]], list[Change]]


def platform_steps() -> list[tuple[str, PlatformStep]]:
    """The platform's own steps (once, before the tenants'), in order."""
    from aifactory.platform.slurm_accounts import onboard_slurm_platform
    from operators.access import onboard_airflow_platform  # Airflow-side (FAB)

    steps: list[tuple[str, PlatformStep]] = []
    steps.append(("slurm", onboard_slurm_platform))
    steps.append(("airflow", onboard_airflow_platform))
    return steps


def tenant_steps() -> list[tuple[str, Step]]:
    """The steps, in order (imported here so that each module stays the one place of its rule)."""
    from aifactory.platform.cluster_identity import onboard_identity
    from aifactory.platform.objectstore import onboard_objectstore
    from aifactory.platform.slurm_accounts import onboard_slurm
    from aifactory.tenants.notifications import onboard_notifications
    from operators.access import onboard_airflow  # Airflow-side (FAB)

    steps: list[tuple[str, Step]] = []
    steps.append(("cluster", onboard_identity))
    steps.append(("slurm", onboard_slurm))
    steps.append(("objectstore", onboard_objectstore))
    steps.append(("airflow", onboard_airflow))
    steps.append(("notifications", onboard_notifications))  # the targets' connections (local receivers)
    return steps


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------

#: the ``tenant`` column of the platform's own steps
PLATFORM = "platform"


@dataclass(frozen=True)
class Outcome:
    """One step for one tenant (or for the platform): what it changed, or why it failed."""

    tenant: str
    step: str
    changes: tuple[Change, ...] = ()
    #: the failure and what to do; ``None`` when the step succeeded
    error: str | None = None
    #: not run, because an earlier step of the same tenant failed
    skipped: bool = False

    @property
    def failed(self) -> bool:
        return self.error is not None


def _failure(step: str, exc: BaseException) -> str:
    """A step's failure as a table cell: a FactoryError's message already says what to do."""
    if isinstance(exc, FactoryError):
        return printable(str(exc), max_chars=2000)
    return (f"{type(exc).__name__}: {printable(str(exc), max_chars=1000)} (unexpected error in step {step}; the "
            "traceback is on stderr; fix the cause and run make onboard again)")


def _run_step(name: str, who: str, call: Callable[..., list[Change]], *args: object) -> Outcome:
    try:
        return Outcome(who, name, tuple(call(*args) or ()))
    except Exception as exc:  # one tenant's failure must not stop the others
        if not isinstance(exc, FactoryError):
            traceback.print_exc(file=sys.stderr)
        return Outcome(who, name, error=_failure(name, exc))


def onboard(ctx: Context, tenants: Sequence[TenantSpec], clusters: Mapping[str, ClusterSpec], *,
            broken: Sequence[SpecError] = (), steps: Sequence[tuple[str, Step]] | None = None,
            platform: Sequence[tuple[str, PlatformStep]] | None = None,
            every_tenant: Sequence[TenantSpec] | None = None) -> list[Outcome]:
    """Run the platform steps once, then every tenant's steps in order; one outcome per step.

    :param tenants: the tenants to onboard (``--tenant`` may pick a few).
    :param every_tenant: every good spec (default ``tenants``): the platform steps always get all
        of them, since what they set up spans every tenant (the operator role over every tenant's
        DAG); onboarding one tenant must not take the others out of it.
    :param clusters: every cluster a tenant names, by name.
    :param broken: spec files that could not be loaded: each is one failed ``spec`` outcome.
    :param steps: the tenant steps (default :func:`tenant_steps`); ``platform`` likewise.
    """
    steps = tenant_steps() if steps is None else steps
    platform = platform_steps() if platform is None else platform
    outcomes = [Outcome(e.path.stem, "spec", error=f"{e.message} (fix the file and run make onboard again; "
                                                   "the other tenants are onboarded)") for e in broken]
    everyone = list(tenants if every_tenant is None else every_tenant)
    used = [clusters[name] for name in sorted({t.cluster for t in everyone})]
    for name, pstep in platform:
        outcomes.append(_run_step(name, PLATFORM, pstep, ctx, everyone, used))
    for spec in tenants:
        failed = False
        for name, step in steps:
            if failed:
                outcomes.append(Outcome(spec.tenant, name, skipped=True))
                continue
            outcome = _run_step(name, spec.tenant, step, ctx, spec, clusters[spec.cluster])
            failed = outcome.failed
            outcomes.append(outcome)
    return outcomes


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows as an aligned text table (the onboarding and doctor reports); the last column runs free."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    return "\n".join(lines)


def report(outcomes: Sequence[Outcome], *, dry_run: bool) -> str:
    """The table: tenant, step, and each change, "no change", or the error with what to do."""
    rows: list[tuple[str, str, str]] = []
    for o in outcomes:
        if o.failed:
            rows.append((o.tenant, o.step, f"FAILED: {o.error}"))
        elif o.skipped:
            rows.append((o.tenant, o.step, "skipped: an earlier step of this tenant failed"))
        elif not o.changes:
            rows.append((o.tenant, o.step, "no change"))
        else:
            prefix = "would " if dry_run else ""
            rows.extend((o.tenant, o.step, f"{prefix}{printable(c.action, max_chars=500)}") for c in o.changes)
    changed = sum(len(o.changes) for o in outcomes)
    failed = sorted({o.tenant for o in outcomes if o.failed})
    verb = "would change" if dry_run else "changed"
    summary = f"{verb} {changed} thing(s)" + (f"; FAILED: {', '.join(failed)}" if failed else "; every tenant OK")
    return format_table(("tenant", "step", "result"), rows) + "\n" + summary


def secrets_dir(env: Mapping[str, str]) -> Path:
    """``AIFP_SECRETS_DIR`` (stack.env), else ``<AIFP_STATE_DIR or .stack>/secrets``."""
    if env.get("AIFP_SECRETS_DIR"):
        return Path(env["AIFP_SECRETS_DIR"])
    return Path(env.get("AIFP_STATE_DIR") or REPO_DIR / ".stack") / "secrets"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aifactory.platform.onboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    parser.add_argument("--check", action="store_true", help="report what would change, change nothing")
    parser.add_argument("--json", action="store_true", help="one JSON object per step instead of the table")
    parser.add_argument("--tenants-dir", type=Path, default=tenants_dir(),
                        help="the tenant specs (default: $AIFP_TENANTS_DIR, else %(default)s)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    loaded = load_tenant_specs(args.tenants_dir)
    tenants, broken = list(loaded.specs), list(loaded.errors)
    if args.tenant:
        unknown = sorted(set(args.tenant) - {t.tenant for t in tenants} - {e.path.stem for e in broken})
        if unknown:
            raise SystemExit(f"unknown tenant(s) {shown_list(unknown)}: no spec in {args.tenants_dir}")
        tenants = [t for t in tenants if t.tenant in args.tenant]
        broken = [e for e in broken if e.path.stem in args.tenant]
    clusters = {name: load_cluster(name) for name in sorted({t.cluster for t in loaded.specs})}
    ctx = Context(secrets_dir=secrets_dir(env), env=env, dry_run=args.check)
    with contextlib.redirect_stdout(sys.stderr):  # the steps' log lines (Airflow, boto) stay out of the report
        outcomes = onboard(ctx, tenants, clusters, broken=broken, every_tenant=loaded.specs)
    if args.json:
        print(json.dumps([asdict(o) for o in outcomes], indent=1))
    else:
        print(report(outcomes, dry_run=args.check))
    return 1 if any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
