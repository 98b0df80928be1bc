"""The site's software environment in real Slurm jobs: Lmod modules loaded by the fixed wrapper.

The local cluster's spec (``include/clusters/local.yaml``, ``environment:``) sources Debian's Lmod
init, adds the site's module tree (installed by ``stack.sh`` from ``include/stack/hpc/modulefiles``)
and loads ``aifactory-train/1.0``, which provides the training Python. Each test submits the real
wrapper over the tenant's SSH login with the exports a plan would carry
(``SiteEnvironment.exports``):

* the job loads the module and uses what it provides: ``AIFP_PYTHON=python`` names no interpreter
  of the job's bare PATH, only the module's; the entry point reports the module's interpreter and
  imports torch from it;
* a module the site does not have fails the job before any rank starts, naming the module;
* a tenant's reservation and node constraint (``slurm.reservation``/``slurm.constraint`` of its spec):
  the job runs on the reserved node only; a feature no node has is refused by Slurm at submission.
"""

from __future__ import annotations

import secrets
import subprocess
import time

import pytest

from aifactory import layout
from aifactory.hpc.remote import q
from aifactory.hpc.site import SiteEnvironment
from aifactory.hpc.slurm import (
    Resources,
    TenantSlurmPolicy,
    build_sbatch_command,
    job_name,
    parse_sbatch_output,
    sbatch_argv,
)
from aifactory.hpc.slurm.plan import JOB_PATH
from aifactory.models import bundle
from aifactory.tenants import load_cluster
from tests.conftest import tenant_areas

pytestmark = pytest.mark.integration

ENTRYPOINT = '''import os, shutil, sys
import torch
print(f"python={sys.executable} train_env={os.environ.get('AIFP_TRAIN_ENV')} torch={torch.__version__}", flush=True)
open("ran", "w").write("yes")
'''


@pytest.fixture()
def run_root(stack_env, shell):
    root = layout.run_dir(tenant_areas("demo"), f"itest-site-{secrets.token_hex(4)}")
    shell.run("mkdir -p -m 0700 " + q(root))
    yield root
    shell.run("rm -rf -- " + q(root))


DEMO_POLICY = TenantSlurmPolicy(account="demo", partitions=("debug",))


def _submit(shell, run_dir: str, environment: SiteEnvironment, policy: TenantSlurmPolicy = DEMO_POLICY) -> str:
    shell.run("mkdir -p -m 0700 " + q(run_dir))
    sftp = shell.sftp_client()
    sftp.put(str(bundle.WRAPPER_SOURCE), f"{run_dir}/{bundle.WRAPPER}")
    with sftp.open(f"{run_dir}/check_env.py", "wb") as fh:
        fh.write(ENTRYPOINT.encode())
    with sftp.open(f"{run_dir}/params.json", "wb") as fh:
        fh.write(b"{}")
    res = Resources.from_request({"mem_gb": 1, "time_limit_minutes": 5}, policy=policy)
    argv = sbatch_argv(res, job_name=job_name("demo", "itest", secrets.token_hex(4), "site"), comment="aifp:itest",
                       chdir=run_dir, output_path=f"{run_dir}/slurm-%j.out",
                       export_vars={"PATH": JOB_PATH, "AIFP_PYTHON": "python", "AIFP_ENTRYPOINT": "check_env.py",
                                    **environment.exports()})
    rc, out, err = shell.run(build_sbatch_command(argv, f"{run_dir}/{bundle.WRAPPER}"))
    assert rc == 0, err
    return parse_sbatch_output(out).job_id


def _finish(shell, job: str, run_dir: str, timeout: float = 120) -> tuple[str, str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State,ExitCode"], capture_output=True,
                             text=True).stdout.strip()
        state, _, code = row.partition("|")
        if state.split(" ")[0] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state.split(" ")[0], code, shell.run(f"cat {q(run_dir + '/slurm-' + job + '.out')}")[1]
        time.sleep(1)
    raise AssertionError(f"job {job} did not finish within {timeout}s")


def test_a_job_loads_the_site_module_and_runs_the_python_it_provides(shell, run_root):
    environment = load_cluster("local").environment
    assert environment.modules == ("aifactory-train/1.0",) and environment.setup == "/etc/profile.d/lmod.sh"
    run_dir = f"{run_root}/ok"
    state, code, log = _finish(shell, _submit(shell, run_dir, environment), run_dir)
    assert state == "COMPLETED", log
    assert "aifp: modules loaded: aifactory-train/1.0" in log
    # "python" is on no directory of the job's PATH (JOB_PATH): only the module's PATH has it
    assert "python=/srv/aifactory/venv/bin/python train_env=/srv/aifactory/venv torch=" in log, log


def test_a_module_the_site_lacks_fails_the_job_before_any_rank_starts(shell, run_root):
    local = load_cluster("local").environment
    missing = SiteEnvironment(setup=local.setup, module_path=local.module_path, modules=("aifactory-train/9.9",))
    run_dir = f"{run_root}/missing"
    state, code, log = _finish(shell, _submit(shell, run_dir, missing), run_dir)
    assert (state, code) == ("FAILED", "2:0"), log
    assert "aifp: module load aifactory-train/9.9 failed" in log and "fix environment.modules in the cluster spec" in log
    assert "aifactory-train/1.0" in log  # what the site does have, from module avail
    assert shell.run(f"test -e {q(run_dir + '/ran')}")[0] != 0, "the entry point ran"


@pytest.fixture()
def reservation():
    """A reservation of node n2 for the demo account (as a site would make one for a tenant)."""
    name = f"aifp-itest-{secrets.token_hex(3)}"
    made = subprocess.run(["scontrol", "create", "reservation", f"ReservationName={name}", "Accounts=demo",
                           "Nodes=n2", "StartTime=now", "Duration=15", "Flags=IGNORE_JOBS"],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    yield name
    subprocess.run(["scontrol", "delete", f"ReservationName={name}"], capture_output=True)


def test_the_tenants_reservation_and_constraint_place_its_job(shell, run_root, reservation):
    arch = subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip()  # the nodes' feature
    policy = TenantSlurmPolicy(account="demo", partitions=("debug",), reservation=reservation, constraint=arch)
    environment = load_cluster("local").environment
    job = _submit(shell, f"{run_root}/reserved", environment, policy)
    # the controller's record of the job, read while it holds it: sacct's Reservation and Constraints
    # columns were seen empty in one CI run (slurmdbd's record lags), its NodeList never
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    assert f" Reservation={reservation} " in f" {shown} " and f" Features={arch} " in f" {shown} ", shown
    state, _, log = _finish(shell, job, f"{run_root}/reserved")
    assert state == "COMPLETED", log
    nodes = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "NodeList"],
                           capture_output=True, text=True).stdout.strip()
    assert nodes == "n2", nodes


def test_a_constraint_no_node_meets_is_refused_by_slurm_at_submission(shell, run_root):
    policy = TenantSlurmPolicy(account="demo", partitions=("debug",), constraint="a100_nvlink")
    with pytest.raises(AssertionError, match="Invalid feature specification"):
        _submit(shell, f"{run_root}/nofeature", load_cluster("local").environment, policy)
