"""Several QOS per tenant, on the real accounting database: onboarding grants each account the QOS
its spec names (and the default), and Slurm itself refuses a job under a QOS its account was not
granted (``AccountingStorageEnforce=...,qos``). Which QOS a job uses is the platform's choice by the
job's purpose (``slurm.qos: {train, feed, probe}``), never a form field: the e2e tests check the
probe's and the feed training's jobs in sacct."""

from __future__ import annotations

import subprocess

import pytest

from aifactory.hpc.slurm.resources import Resources
from aifactory.tenants import load_tenant

pytestmark = pytest.mark.integration

DEMO, ACME = load_tenant("demo"), load_tenant("acme")


def _account_qos(account: str) -> set[str]:
    out = subprocess.run(["sacctmgr", "-n", "-P", "show", "assoc", f"account={account}", "format=user,qos"],
                         capture_output=True, text=True, check=True).stdout
    return next({q for q in row.split("|")[1].split(",") if q} for row in out.splitlines() if row.startswith("|"))


def test_each_account_is_granted_the_qos_of_its_spec_and_the_default():
    assert DEMO.qos_names == ("aifp-feed", "aifp-probe", "normal")
    assert _account_qos(DEMO.slurm_account) == {"normal", "aifp-feed", "aifp-probe"}
    assert _account_qos(ACME.slurm_account) == {"normal"}  # acme names none


def test_the_purpose_picks_the_qos_and_the_sbatch_option():
    got = {p: Resources.from_request({}, policy=DEMO.slurm_policy(p)).qos for p in ("train", "feed", "probe")}
    assert got == {"train": "normal", "feed": "aifp-feed", "probe": "aifp-probe"}
    assert Resources.from_request({}, policy=ACME.slurm_policy("feed")).qos is None  # the account's default


@pytest.mark.parametrize("tenant, qos, allowed", [(DEMO, "aifp-feed", True), (ACME, "aifp-feed", False),
                                                 (ACME, "normal", True)])
def test_slurm_refuses_a_qos_the_account_was_not_granted(tenant, qos, allowed):
    """Submitted as the tenant's own Unix user: Slurm's accounting, not our code, is the check."""
    argv = ["runuser", "-u", tenant.identity.unix_user, "--", "sbatch", "--parsable", "--hold",
            f"--account={tenant.slurm_account}", "--partition=debug", f"--qos={qos}", "--time=1", "--mem=100M",
            "--output=/dev/null", "--chdir=/tmp", "--wrap=true"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if allowed:
        assert p.returncode == 0, p.stderr
        subprocess.run(["scancel", p.stdout.strip().split(";")[0]], check=True)
    else:
        assert p.returncode != 0 and "Invalid qos specification" in p.stderr, (p.returncode, p.stderr)
