"""Onboarding step 2: each tenant's Slurm account, its one association and its allocation.

Slurm enforces tenant isolation and budgets only through its accounting database, so this step
makes the database say exactly what the tenant spec says:

- the tenant's account (``slurm.account``) exists;
- the ONLY user associated with it is the tenant's own Unix user (``identity.unix_user``): any
  other user's association is removed (the local stack used to associate the shared service user
  ``aifactory`` with every tenant account, so anyone holding that login could submit under any);
- the account's ``GrpTRESMins`` is the allocation: ``cpu=<cpu_hours*60>`` and, when the cluster
  tracks ``gres/gpu``, ``gres/gpu=<gpu_hours*60>``. With ``PriorityDecayHalfLife=0`` and
  ``PriorityUsageResetPeriod=NONE`` (slurm.conf) the usage never decays, so it is a budget.

The platform step puts the service user (the cluster's service connection's login) in account
``platform`` with ``AdminLevel=Operator``: it can cancel any job (the sweep) and manage accounts,
but has no association with a tenant account, so Slurm refuses its ``sbatch --account=<tenant>``.

Every change is read first (``sacctmgr -n -P show ...``) and made only when it differs, so a
second run returns no :class:`Change`. sacctmgr runs as root on the login node, with argument
lists (no shell): every name in them has passed the spec's name rules.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence

from aifactory.errors import FactoryError
from aifactory.hpc.slurm.budget import GPU_TRES
from aifactory.platform.onboard import Change, Context
from aifactory.tenants.spec import ClusterSpec, TenantSpec

__all__ = [
    "PLATFORM_ACCOUNT",
    "SlurmAdmin",
    "allocation_tres_mins",
    "onboard_slurm",
    "onboard_slurm_platform",
    "parse_tres_mins",
    "service_user",
]

STEP = "slurm"
#: the platform's own account: the service user's only association (it runs no tenant job)
PLATFORM_ACCOUNT = "platform"

Runner = Callable[[Sequence[str]], tuple[int, str, str]]


class SlurmOnboardingError(FactoryError):
    """sacctmgr refused or could not be reached; the message names the command and its answer."""


def _run_local(argv: Sequence[str]) -> tuple[int, str, str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def service_user(ctx: Context) -> str:
    """The platform's service login on the cluster (``AIFP_SSH_USER`` of the local stack)."""
    return str(ctx.env.get("AIFP_SSH_USER") or "aifactory")


def parse_tres_mins(text: str) -> dict[str, int]:
    """``cpu=30000,gres/gpu=0`` (sacctmgr's GrpTRESMins column) -> ``{"cpu": 30000, "gres/gpu": 0}``.

    Not :func:`aifactory.hpc.slurm.parse_tres` (a job's AllocTRES: memory with units, floats): a
    limit is whole TRES-minutes, written back as read."""
    out: dict[str, int] = {}
    for item in (text or "").strip().split(","):
        key, sep, value = item.partition("=")
        if sep and key and value.strip().lstrip("-").isdigit():
            out[key.strip()] = int(value)
    return out


def allocation_tres_mins(spec: TenantSpec, *, tracks_gpu: bool) -> dict[str, int]:
    """The tenant's allocation as Slurm TRES-minutes (what ``GrpTRESMins`` must be)."""
    if spec.allocation is None:
        raise SlurmOnboardingError(f"tenant {spec.tenant!r} has no allocation in its spec; add "
                                   "allocation: {cpu_hours: N, gpu_hours: N, contact: ...}")
    want = {"cpu": spec.allocation.cpu_hours * 60}
    if tracks_gpu:
        want[GPU_TRES] = spec.allocation.gpu_hours * 60
    return want


def _format_tres(tres: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tres.items()))


class SlurmAdmin:
    """sacctmgr on the local login node: read with ``show -P``, write with ``-i`` (no prompt)."""

    def __init__(self, run: Runner = _run_local, dry_run: bool = False) -> None:
        self._run = run
        self.dry_run = dry_run
        self._conf: dict[str, str] | None = None

    def _call(self, argv: Sequence[str]) -> str:
        try:
            rc, out, err = self._run(list(argv))
        except (OSError, subprocess.SubprocessError) as exc:
            raise SlurmOnboardingError(f"could not run {' '.join(argv)}: {exc}; is slurm-client installed and "
                                       "slurmdbd up (make up)?") from exc
        if rc != 0:
            raise SlurmOnboardingError(f"{' '.join(argv)} failed (exit {rc}): {(err or out).strip()[:500]}")
        return out

    def _show(self, *args: str) -> list[list[str]]:
        out = self._call(["sacctmgr", "-n", "-P", "show", *args])
        return [line.split("|") for line in out.splitlines() if line.strip()]

    def _write(self, *args: str) -> None:
        if not self.dry_run:
            self._call(["sacctmgr", "-i", "-Q", *args])

    def _config(self, key: str) -> str:
        """One value of ``scontrol show config`` (the controller's slurm.conf, as it runs)."""
        if self._conf is None:
            out = self._call(["scontrol", "show", "config"])
            pairs = (line.split("=", 1) for line in out.splitlines() if "=" in line)
            self._conf = {k.strip(): v.strip() for k, v in pairs}
        return self._conf.get(key, "")

    @property
    def cluster(self) -> str:
        """Slurm's ClusterName (the spec's cluster name need not be Slurm's)."""
        name = self._config("ClusterName")
        if not name:
            raise SlurmOnboardingError("scontrol show config reports no ClusterName; is slurmctld up (make up)?")
        return name

    def tracks_gpu(self) -> bool:
        """The controller accounts gres/gpu (``AccountingStorageTRES``), so a GPU budget can be set."""
        return GPU_TRES in self._config("AccountingStorageTRES").split(",")

    # --- reads ----------------------------------------------------------------------------
    def account_exists(self, account: str) -> bool:
        return any(row[0] == account for row in self._show("account", account, "format=account"))

    def users_of(self, account: str) -> list[str]:
        rows = self._show("assoc", f"cluster={self.cluster}", f"account={account}", "format=user")
        return sorted({row[0] for row in rows if row[0]})

    def grp_tres_mins(self, account: str) -> dict[str, int]:
        rows = self._show("assoc", f"cluster={self.cluster}", f"account={account}", "format=user,grptresmins")
        return next((parse_tres_mins(row[1]) for row in rows if len(row) > 1 and not row[0]), {})

    def user(self, user: str) -> tuple[str, str] | None:
        """``(default account, admin level)`` of a Slurm user, None when Slurm does not know it."""
        rows = self._show("user", user, "format=user,defaultaccount,adminlevel")
        return next(((row[1], row[2]) for row in rows if row[0] == user and len(row) > 2), None)

    def qos_names(self) -> set[str]:
        """The QOS the site defined (``sacctmgr show qos``)."""
        return {row[0] for row in self._show("qos", "format=name") if row and row[0]}

    def account_qos(self, account: str) -> set[str]:
        """The QOS the account's own association allows (its users inherit them)."""
        rows = self._show("assoc", f"cluster={self.cluster}", f"account={account}", "format=user,qos")
        return next(({q for q in row[1].split(",") if q} for row in rows if len(row) > 1 and not row[0]), set())

    # --- writes ---------------------------------------------------------------------------
    def set_account_qos(self, account: str, qos: Iterable[str]) -> None:
        self._write("modify", "account", "where", f"name={account}", f"cluster={self.cluster}", "set",
                    f"QOS={','.join(sorted(qos))}")

    def add_account(self, account: str, description: str, organization: str) -> None:
        self._write("add", "account", account, f"Cluster={self.cluster}", f"Description={description}",
                    f"Organization={organization}")

    def add_user(self, user: str, account: str) -> None:
        self._write("add", "user", user, f"Account={account}", f"Cluster={self.cluster}")

    def remove_user(self, user: str, account: str) -> None:
        self._write("remove", "user", "where", f"name={user}", f"account={account}", f"cluster={self.cluster}")

    def set_user(self, user: str, **settings: str) -> None:
        self._write("modify", "user", "where", f"name={user}", "set", *(f"{k}={v}" for k, v in settings.items()))

    def set_grp_tres_mins(self, account: str, tres: Mapping[str, int]) -> None:
        self._write("modify", "account", "where", f"name={account}", f"cluster={self.cluster}", "set",
                    f"GrpTRESMins={_format_tres(tres)}")


def _ensure_member(admin: SlurmAdmin, who: str, user: str, account: str, description: str,
                   *, drop_others: bool, service: str = "") -> list[Change]:
    """Account exists; ``user`` is associated with it; with ``drop_others`` nobody else is."""
    changes: list[Change] = []
    if not admin.account_exists(account):
        admin.add_account(account, description, who)
        changes.append(Change(who, STEP, f"add Slurm account {account}"))
    members = admin.users_of(account)
    if user not in members:
        admin.add_user(user, account)
        changes.append(Change(who, STEP, f"associate user {user} with account {account}"))
    for other in members if drop_others else ():
        if other == user:
            continue
        current = admin.user(other)
        if other == service and current is not None and current[0] == account:
            # Slurm refuses to remove a user's default account: the service user's is the platform's
            admin.set_user(other, DefaultAccount=PLATFORM_ACCOUNT)
        admin.remove_user(other, account)
        changes.append(Change(who, STEP, f"remove user {other}'s association with account {account}"))
    return changes


def onboard_slurm(ctx: Context, spec: TenantSpec, cluster: ClusterSpec, *,
                  admin: SlurmAdmin | None = None) -> list[Change]:
    """The tenant's account, the association of its Unix user only, and its allocation."""
    admin = admin or SlurmAdmin(dry_run=ctx.dry_run)
    if spec.identity is None:
        raise SlurmOnboardingError(f"tenant {spec.tenant!r} has no identity in its spec; add identity.unix_user")
    account, user = spec.slurm_account, spec.identity.unix_user
    if user == service_user(ctx):
        raise SlurmOnboardingError(f"tenant {spec.tenant!r}: identity.unix_user {user!r} is the platform's service "
                                   "user; each tenant needs its own Unix user")
    changes = _ensure_member(admin, spec.tenant, user, account, f"tenant {spec.tenant}", drop_others=True,
                             service=service_user(ctx))
    changes += _grant_qos(admin, spec)
    want = allocation_tres_mins(spec, tracks_gpu=admin.tracks_gpu())
    have = admin.grp_tres_mins(account)
    target = {**{k: -1 for k in have if k not in want}, **want}  # -1 clears a limit the spec does not set
    if have != want:
        admin.set_grp_tres_mins(account, target)
        changes.append(Change(spec.tenant, STEP, f"set GrpTRESMins={_format_tres(want)} on account {account} "
                                                 f"(was {_format_tres(have) or 'unlimited'})"))
    return changes


#: every account keeps the site's default QOS: a job submitted without --qos runs under it
DEFAULT_QOS = "normal"


def _grant_qos(admin: SlurmAdmin, spec: TenantSpec) -> list[Change]:
    """The account may use exactly the QOS its spec names (``slurm.qos``) and the default; a QOS the
    site has not defined is refused, naming it (QOS are the site's: onboarding never creates one)."""
    if not spec.qos_names:
        want = {DEFAULT_QOS}
    else:
        missing = sorted(set(spec.qos_names) - admin.qos_names())
        if missing:
            raise SlurmOnboardingError(f"tenant {spec.tenant!r}: slurm.qos names {missing}, which the cluster does "
                                       "not define (sacctmgr show qos); ask the site to add them, or change the spec")
        want = {DEFAULT_QOS, *spec.qos_names}
    have = admin.account_qos(spec.slurm_account)
    if have == want:
        return []
    admin.set_account_qos(spec.slurm_account, want)
    return [Change(spec.tenant, STEP, f"QOS of account {spec.slurm_account}: {','.join(sorted(want))} "
                                      f"(was {','.join(sorted(have)) or 'inherited'})")]


def onboard_slurm_platform(ctx: Context, tenants: Iterable[TenantSpec], clusters: Iterable[ClusterSpec], *,
                           admin: SlurmAdmin | None = None) -> list[Change]:
    """The service user in account ``platform`` (its default), with ``AdminLevel=Operator``."""
    admin = admin or SlurmAdmin(dry_run=ctx.dry_run)
    user = service_user(ctx)
    tenant_accounts = {t.slurm_account for t in tenants}
    if PLATFORM_ACCOUNT in tenant_accounts:
        raise SlurmOnboardingError(f"a tenant spec uses Slurm account {PLATFORM_ACCOUNT!r}, the platform's own; "
                                   "rename the tenant's account")
    changes = _ensure_member(admin, "platform", user, PLATFORM_ACCOUNT, "platform services", drop_others=False)
    current = admin.user(user)
    default, level = current if current is not None else ("", "")
    if default != PLATFORM_ACCOUNT:
        admin.set_user(user, DefaultAccount=PLATFORM_ACCOUNT)
        changes.append(Change("platform", STEP, f"default account of {user}: {PLATFORM_ACCOUNT} (was {default or '-'})"))
    if level != "Operator":
        admin.set_user(user, AdminLevel="Operator")
        changes.append(Change("platform", STEP, f"AdminLevel of {user}: Operator (was {level or '-'})"))
    return changes
