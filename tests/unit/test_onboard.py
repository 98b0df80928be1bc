"""The onboarding runner with fake steps: order, "no change" on a second run, one tenant failing
alone, dry run, broken specs, and the exit status of the command."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from aifactory.errors import FactoryError
from aifactory.layout import TENANTS_DIR
from aifactory.platform import onboard as ob
from aifactory.platform.onboard import Change, Context
from aifactory.tenants import load_cluster, load_tenant, load_tenant_specs


class FakeWorld:
    """A store of "things" each step makes; a step makes only what is missing (idempotent)."""

    def __init__(self, fail: dict[tuple[str, str], Exception] | None = None) -> None:
        self.made: set[tuple[str, str]] = set()
        self.calls: list[tuple[str, str]] = []
        self.fail = fail or {}

    def step(self, name: str):
        def run(ctx: Context, spec, cluster) -> list[Change]:
            self.calls.append((spec.tenant, name))
            if (spec.tenant, name) in self.fail:
                raise self.fail[(spec.tenant, name)]
            if (spec.tenant, name) in self.made:
                return []
            if not ctx.dry_run:
                self.made.add((spec.tenant, name))
            return [Change(spec.tenant, name, f"make {name} of {spec.tenant}")]
        return run

    def platform(self, ctx: Context, tenants, clusters) -> list[Change]:
        self.calls.append(("platform", ",".join(t.tenant for t in tenants) + "@" + ",".join(c.name for c in clusters)))
        if ("platform", "p") in self.made:
            return []
        if not ctx.dry_run:
            self.made.add(("platform", "p"))
        return [Change("platform", "p", "make the platform account")]

    def steps(self):
        return [(n, self.step(n)) for n in ("cluster", "slurm", "objectstore", "airflow")]


@pytest.fixture
def tenants():
    return [load_tenant("acme"), load_tenant("demo")]


@pytest.fixture
def clusters():
    return {"local": load_cluster("local")}


def _run(world, tenants, clusters, tmp_path, dry_run=False, broken=()):
    ctx = Context(secrets_dir=tmp_path, dry_run=dry_run)
    return ob.onboard(ctx, tenants, clusters, broken=broken, steps=world.steps(), platform=[("slurm", world.platform)])


def test_platform_once_then_every_tenant_step_in_order(tenants, clusters, tmp_path):
    world = FakeWorld()
    outcomes = _run(world, tenants, clusters, tmp_path)
    assert world.calls == [("platform", "acme,demo@local"),
                           *[(t, s) for t in ("acme", "demo") for s in ("cluster", "slurm", "objectstore", "airflow")]]
    assert [(o.tenant, o.step) for o in outcomes][:2] == [("platform", "slurm"), ("acme", "cluster")]
    assert all(len(o.changes) == 1 and not o.failed for o in outcomes)


def test_second_run_reports_no_change(tenants, clusters, tmp_path):
    world = FakeWorld()
    _run(world, tenants, clusters, tmp_path)
    second = _run(world, tenants, clusters, tmp_path)
    assert all(not o.changes and not o.failed for o in second)
    table = ob.report(second, dry_run=False)
    assert table.count("no change") == len(second) == 9
    assert "changed 0 thing(s); every tenant OK" in table


def test_one_failing_step_fails_that_tenant_alone(tenants, clusters, tmp_path):
    world = FakeWorld(fail={("acme", "slurm"): FactoryError("sacctmgr refused: no such cluster; run make up")})
    outcomes = _run(world, tenants, clusters, tmp_path)
    acme = {o.step: o for o in outcomes if o.tenant == "acme"}
    assert acme["cluster"].changes and acme["slurm"].failed
    assert acme["objectstore"].skipped and acme["airflow"].skipped  # later steps may need the failed one's work
    assert ("acme", "objectstore") not in world.calls
    demo = [o for o in outcomes if o.tenant == "demo"]
    assert len(demo) == 4 and all(o.changes and not o.failed for o in demo)
    table = ob.report(outcomes, dry_run=False)
    assert re.search(r"^acme +slurm +FAILED: sacctmgr refused: no such cluster; run make up$", table, re.M)
    assert "skipped: an earlier step of this tenant failed" in table
    assert table.endswith("FAILED: acme")


def test_an_unexpected_exception_is_reported_not_raised(tenants, clusters, tmp_path, capsys):
    world = FakeWorld(fail={("demo", "cluster"): KeyError("boom")})
    outcomes = _run(world, tenants, clusters, tmp_path)
    failed = [o for o in outcomes if o.failed]
    assert [(o.tenant, o.step) for o in failed] == [("demo", "cluster")]
    assert "KeyError" in failed[0].error and "traceback is on stderr" in failed[0].error
    assert "KeyError" in capsys.readouterr().err


def test_dry_run_changes_nothing_and_says_would(tenants, clusters, tmp_path):
    world = FakeWorld()
    outcomes = _run(world, tenants, clusters, tmp_path, dry_run=True)
    assert world.made == set()
    table = ob.report(outcomes, dry_run=True)
    assert "would make slurm of demo" in table and "would change 9 thing(s)" in table


def test_a_broken_spec_is_one_failed_row(tenants, clusters, tmp_path):
    (tmp_path / "zeta.yaml").write_text("tenant: zeta\n")
    broken = load_tenant_specs(tmp_path).errors
    outcomes = _run(FakeWorld(), tenants, clusters, tmp_path, broken=broken)
    zeta = [o for o in outcomes if o.tenant == "zeta"]
    assert len(zeta) == 1 and zeta[0].step == "spec" and "zeta.yaml: required key" in zeta[0].error
    assert all(not o.failed for o in outcomes if o.tenant != "zeta")


def test_main_exit_status_and_tenant_filter(tmp_path, monkeypatch, capsys):
    for name in ("demo", "acme"):
        (tmp_path / f"{name}.yaml").write_text((TENANTS_DIR / f"{name}.yaml").read_text())
    world = FakeWorld()
    monkeypatch.setattr(ob, "tenant_steps", world.steps)
    monkeypatch.setattr(ob, "platform_steps", lambda: [])
    monkeypatch.setenv("AIFP_SECRETS_DIR", str(tmp_path / "secrets"))
    monkeypatch.setattr(ob, "platform_steps", lambda: [("p", world.platform)])
    assert ob.main(["--tenants-dir", str(tmp_path), "--tenant", "demo"]) == 0
    # the tenant steps of demo only; the platform steps still see every tenant (roles span them all)
    assert world.calls[0] == ("platform", "acme,demo@local")
    assert {t for t, _ in world.calls[1:]} == {"demo"}
    (tmp_path / "acme.yaml").write_text("tenant: acme\n")
    assert ob.main(["--tenants-dir", str(tmp_path)]) == 1  # acme's spec is broken; demo still runs
    out = capsys.readouterr().out
    assert re.search(r"^acme +spec +FAILED: .*acme.yaml: required key", out, re.M)
    assert re.search(r"^demo +cluster +no change$", out, re.M)
    with pytest.raises(SystemExit, match="unknown tenant"):
        ob.main(["--tenants-dir", str(tmp_path), "--tenant", "nobody"])


def test_format_table_aligns_columns():
    table = ob.format_table(("a", "bb", "c"), [("xxx", "y", "free text"), ("z", "yyyy", "t")])
    assert table.splitlines() == ["a    bb    c", "xxx  y     free text", "z    yyyy  t"]


def test_secrets_dir_default():
    assert ob.secrets_dir({"AIFP_SECRETS_DIR": "/s"}) == Path("/s")
    assert ob.secrets_dir({"AIFP_STATE_DIR": "/st"}) == Path("/st/secrets")


def test_steps_return_changes_of_their_own_tenant():
    """Registered steps are plain (name, callable) lists, in the agreed order."""
    names = [n for n, _ in ob.tenant_steps()]
    order = ["cluster", "slurm", "objectstore", "airflow", "notifications"]
    assert names == [n for n in order if n in names]
    assert replace(Change("a", "b", "c"), action="d").action == "d"
