"""Onboarding's Slurm step against a fake sacctmgr that keeps state: what it changes, and that a
second run changes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from aifactory.platform.onboard import Context
from aifactory.platform.slurm_accounts import (
    PLATFORM_ACCOUNT,
    SlurmAdmin,
    SlurmOnboardingError,
    onboard_slurm,
    onboard_slurm_platform,
    parse_tres_mins,
)
from aifactory.tenants import load_cluster, load_tenant


class FakeSlurm:
    """The accounting database as sacctmgr shows it; writes change it; every call is recorded."""

    def __init__(self, tracks_gpu: bool = True) -> None:
        self.accounts: dict[str, dict[str, int]] = {"demo": {}, "acme": {}}  # account -> GrpTRESMins
        self.assocs: set[tuple[str, str]] = {("demo", "aifactory"), ("acme", "aifactory")}
        self.users: dict[str, list[str]] = {"aifactory": ["demo", "None"]}  # default account, admin level
        self.tres = "cpu,mem,energy,node,billing" + (",gres/gpu" if tracks_gpu else "")
        self.writes: list[list[str]] = []
        self.qos = {"normal", "aifp-feed", "aifp-probe"}  # the site's QOS
        self.account_qos: dict[str, set[str]] = {}

    def __call__(self, argv: Sequence[str]) -> tuple[int, str, str]:
        argv = list(argv)
        if argv[:3] == ["scontrol", "show", "config"]:
            return 0, f"ClusterName = aifactory\nAccountingStorageTRES = {self.tres}\n", ""
        assert argv[0] == "sacctmgr"
        if argv[1:4] == ["-n", "-P", "show"]:
            return 0, self._show(argv[4], argv[5:]), ""
        assert argv[1:3] == ["-i", "-Q"], argv
        self.writes.append(argv[3:])
        return self._write(argv[3:])

    def _show(self, what: str, args: list[str]) -> str:
        opts = dict(a.split("=", 1) for a in args if "=" in a)
        if what == "account":
            return "".join(f"{a}\n" for a in self.accounts if a == args[0])
        if what == "assoc":
            account = opts["account"]
            if account not in self.accounts:
                return ""
            if opts["format"] == "user,qos":
                return f"|{','.join(sorted(self.account_qos.get(account, ())))}\n"
            limits = ",".join(f"{k}={v}" for k, v in self.accounts[account].items())
            rows = [f"|{limits}" if opts["format"] == "user,grptresmins" else ""]
            rows += [u + ("|" if opts["format"] == "user,grptresmins" else "")
                     for a, u in sorted(self.assocs) if a == account]
            return "\n".join(rows) + "\n"
        if what == "qos":
            return "".join(f"{q}\n" for q in sorted(self.qos))
        if what == "user":
            user = args[0]
            return f"{user}|{'|'.join(self.users[user])}\n" if user in self.users else ""
        raise AssertionError(what)

    def _write(self, args: list[str]) -> tuple[int, str, str]:
        opts = dict(a.split("=", 1) for a in args if "=" in a)
        if args[:2] == ["add", "account"]:
            self.accounts[args[2]] = {}
        elif args[:2] == ["add", "user"]:
            self.assocs.add((opts["Account"], args[2]))
            self.users.setdefault(args[2], [opts["Account"], "None"])
        elif args[:2] == ["remove", "user"]:
            user, account = opts["name"], opts["account"]
            if self.users[user][0] == account:
                return 1, "", " Error with request: can not remove the default account of a user"
            self.assocs.discard((account, user))
        elif args[:2] == ["modify", "user"]:
            user = opts["name"]
            if "DefaultAccount" in opts:
                assert (opts["DefaultAccount"], user) in self.assocs
                self.users[user][0] = opts["DefaultAccount"]
            if "AdminLevel" in opts:
                self.users[user][1] = opts["AdminLevel"]
        elif args[:2] == ["modify", "account"] and "QOS" in opts:
            self.account_qos[opts["name"]] = set(opts["QOS"].split(","))
        elif args[:2] == ["modify", "account"]:
            tres = parse_tres_mins(opts["GrpTRESMins"])
            limits = self.accounts[opts["name"]]
            limits.update(tres)
            for key in [k for k, v in limits.items() if v == -1]:
                del limits[key]
        else:
            raise AssertionError(args)
        return 0, "", ""


def _onboard(fake: FakeSlurm, *, dry_run: bool = False) -> list:
    ctx = Context(secrets_dir=Path("/nonexistent"), env={"AIFP_SSH_USER": "aifactory"}, dry_run=dry_run)
    admin = SlurmAdmin(run=fake, dry_run=dry_run)
    tenants = [load_tenant("acme"), load_tenant("demo")]
    cluster = load_cluster("local")
    changes = onboard_slurm_platform(ctx, tenants, [cluster], admin=admin)
    for spec in tenants:
        changes += onboard_slurm(ctx, spec, cluster, admin=admin)
    return changes


def test_onboarding_associates_only_the_tenants_user_and_sets_the_allocation():
    fake = FakeSlurm()
    changes = _onboard(fake)
    assert fake.assocs == {("acme", "aifp-acme"), ("demo", "aifp-demo"), (PLATFORM_ACCOUNT, "aifactory")}
    assert fake.users["aifactory"] == [PLATFORM_ACCOUNT, "Operator"]
    assert fake.accounts["demo"] == {"cpu": 500 * 60, "gres/gpu": 20 * 60}
    assert fake.accounts["acme"] == {"cpu": 100 * 60, "gres/gpu": 0}
    assert any("remove user aifactory's association with account demo" in c.action for c in changes)
    # a second run reads everything and changes nothing
    fake.writes.clear()
    assert _onboard(fake) == [] and fake.writes == []


def test_dry_run_reports_and_writes_nothing():
    fake = FakeSlurm()
    changes = _onboard(fake, dry_run=True)
    assert changes and fake.writes == []
    assert ("demo", "aifactory") in fake.assocs


def test_a_limit_the_spec_does_not_set_is_cleared_and_no_gpu_budget_without_gres_gpu():
    fake = FakeSlurm(tracks_gpu=False)
    fake.accounts["demo"] = {"cpu": 5, "mem": 100}
    _onboard(fake)
    assert fake.accounts["demo"] == {"cpu": 30000}


def test_a_tenant_using_the_service_user_is_refused():
    fake = FakeSlurm()
    ctx = Context(secrets_dir=Path("/nonexistent"), env={"AIFP_SSH_USER": "aifp-demo"})
    with pytest.raises(SlurmOnboardingError, match="service user"):
        onboard_slurm(ctx, load_tenant("demo"), load_cluster("local"), admin=SlurmAdmin(run=fake))


def test_sacctmgr_failure_names_the_command():
    admin = SlurmAdmin(run=lambda argv: (1, "", "Unable to contact slurmdbd"))
    with pytest.raises(SlurmOnboardingError, match="scontrol show config failed.*slurmdbd"):
        _ = admin.cluster


def test_each_account_may_use_the_qos_its_spec_names_and_the_default_only():
    from dataclasses import replace

    fake = FakeSlurm()
    _onboard(fake)
    demo = load_tenant("demo")
    assert fake.account_qos["demo"] == {"normal", *demo.qos_names} and fake.account_qos["acme"] == {"normal"}
    assert _onboard(fake) == []  # twice changes nothing
    ctx = Context(secrets_dir=Path("/nonexistent"), env={"AIFP_SSH_USER": "aifactory"}, dry_run=False)
    odd = replace(demo, qos_by_purpose={"train": "gold"})
    with pytest.raises(SlurmOnboardingError, match=r"names \['gold'\], which the cluster does not define"):
        onboard_slurm(ctx, odd, load_cluster("local"), admin=SlurmAdmin(run=fake))
