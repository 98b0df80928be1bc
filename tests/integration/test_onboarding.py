"""Onboarding against the real stack (as root on the login node, as ``make onboard`` runs it):
every registered step succeeds for every tenant, and a second run changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aifactory.layout import TENANTS_DIR
from aifactory.platform.onboard import PLATFORM, platform_steps, tenant_steps
from aifactory.tenants import load_tenants

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="onboarding runs as root on the login node")


def _run(env: dict[str, str], *args: str) -> tuple[int, list[dict], str]:
    proc = subprocess.run([sys.executable, "-m", "aifactory.platform.onboard", "--json", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, json.loads(proc.stdout), proc.stderr[-3000:]


def _onboard(env: dict[str, str], *args: str) -> list[dict]:
    rc, outcomes, err = _run(env, *args)
    failed = [o for o in outcomes if o["error"] or o["skipped"]]
    assert rc == 0 and not failed, json.dumps(failed, indent=1) + err
    return outcomes


def test_onboarding_twice_changes_nothing_the_second_time(stack_env):
    """Generic over whatever steps are registered: each one runs for each tenant (platform steps
    once), and on the second run (and a dry run after it) every one reports no change."""
    env = {**os.environ, **stack_env}
    expected = {(PLATFORM, name) for name, _ in platform_steps()} | {
        (spec.tenant, name) for spec in load_tenants() for name, _ in tenant_steps()}
    assert expected, "no onboarding step is registered"

    first = _onboard(env)
    assert {(o["tenant"], o["step"]) for o in first} == expected
    second = _onboard(env)
    assert {(o["tenant"], o["step"]) for o in second} == expected
    changed = {f"{o['tenant']}/{o['step']}": o["changes"] for o in second if o["changes"]}
    assert changed == {}, f"the second onboarding changed things again: {json.dumps(changed, indent=1)}"
    dry = _onboard(env, "--check")
    assert [o for o in dry if o["changes"]] == []


def test_a_broken_spec_fails_that_tenant_alone(stack_env, tmp_path):
    """The real command over the real tenants plus one broken file: the broken one is a failed row
    naming its file and key, every real tenant's steps still run (and change nothing), exit 1."""
    for spec in load_tenants():
        (tmp_path / f"{spec.tenant}.yaml").write_text((TENANTS_DIR / f"{spec.tenant}.yaml").read_text())
    (tmp_path / "zeta.yaml").write_text("tenant: zeta\ncluster: local\n")
    _onboard({**os.environ, **stack_env})  # the stack as the specs say, whatever ran before
    rc, outcomes, err = _run({**os.environ, **stack_env}, "--tenants-dir", str(tmp_path))
    assert rc == 1, err
    failed = [o for o in outcomes if o["error"]]
    assert [(o["tenant"], o["step"]) for o in failed] == [("zeta", "spec")]
    assert "zeta.yaml: required key" in failed[0]["error"]
    good = [o for o in outcomes if o["tenant"] != "zeta"]
    assert {o["tenant"] for o in good} == {PLATFORM, *(s.tenant for s in load_tenants())}
    assert all(not o["changes"] and not o["skipped"] for o in good), json.dumps(good, indent=1)
