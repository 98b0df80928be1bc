"""The site environment of a cluster spec (aifactory.hpc.site): parsing, checks, the job's exports."""

from __future__ import annotations

import json
import subprocess

import pytest

from aifactory.errors import InputError
from aifactory.hpc.site import SiteEnvironment, parse_environment
from aifactory.hpc.slurm import TaskIds, plan_job
from aifactory.models.recipes import load_recipes
from aifactory.platform.doctor_checks import environment_finding
from aifactory.tenants import load_cluster, load_tenant


def test_the_local_cluster_loads_its_training_module_through_lmod():
    env = load_cluster("local").environment
    assert env.exports() == {"AIFP_SITE_SETUP": "/etc/profile.d/lmod.sh",
                             "AIFP_MODULEPATH": "/opt/aifactory/modulefiles", "AIFP_MODULES": "aifactory-train/1.0"}


def test_a_plan_exports_the_site_environment_to_the_job():
    plan = plan_job(load_tenant("demo"), load_cluster("local"), load_recipes()["tabular_classifier"],
                    hyperparameters={"label_column": "species", "feature_columns": ["a"]}, resources={},
                    dataset_dir=None, task=TaskIds(dag_id="factory_demo", run_id="r", task_id="train"))
    (export,) = [a for a in plan.sbatch_argv if a.startswith("--export=")]
    assert export.split(",")[0] == "--export=NONE"
    assert {"AIFP_SITE_SETUP=/etc/profile.d/lmod.sh", "AIFP_MODULEPATH=/opt/aifactory/modulefiles",
            "AIFP_MODULES=aifactory-train/1.0"} <= set(export.removeprefix("--export=").split(","))
    assert "modules" not in json.loads(plan.params_json)  # the environment is the platform's, not a parameter


def test_no_environment_exports_nothing():
    assert parse_environment(None, "c").exports() == {}
    several = parse_environment({"setup": "/etc/profile.d/lmod.sh", "module_path": ["/a", "/b"],
                                 "modules": ["gcc/12.2", "cuda/12.4/x"]}, "c")
    assert several.exports()["AIFP_MODULEPATH"] == "/a:/b" and several.exports()["AIFP_MODULES"] == "gcc/12.2:cuda/12.4/x"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"modules": ["gcc/12"]}, "modules need a setup script"),
        ({"setup": "/etc/profile.d/lmod.sh", "modules": ["gcc;id"]}, "module 'gcc;id' must match"),
        ({"setup": "/etc/profile.d/lmod.sh", "modules": ["-gcc"]}, "must match"),
        ({"setup": "/etc/profile.d/lmod.sh", "modules": ["a:b"]}, "must match"),
        ({"setup": "/etc/profile.d/lmod.sh", "modules": "gcc"}, "modules must be a list"),
        ({"setup": "relative/lmod.sh"}, "not an absolute path"),
        ({"setup": "/etc/$(id).sh"}, "not an absolute path"),
        ({"module_path": ["/opt/../etc"]}, "contains '..'"),
        ({"module_path": ["/opt/a:b"]}, "not an absolute path"),
        ({"modules_path": ["/opt"]}, "unknown key\\(s\\) 'modules_path'"),
        ("lmod", "must be a mapping"),
    ],
)
def test_a_bad_environment_names_what_is_wrong(raw, message):
    with pytest.raises(InputError, match=message) as exc:
        parse_environment(raw, "clusters/x.yaml")
    assert str(exc.value).startswith("clusters/x.yaml: environment")


def test_a_site_environment_built_directly_is_checked_too():
    # defence in depth: the dataclass refuses an unchecked value even when built directly
    with pytest.raises(InputError):
        SiteEnvironment(setup="/etc/profile.d/lmod.sh", modules=("x y",))


# --- make doctor's check: the command runs for real in bash, with a stand-in `module` ---

STAND_IN = 'module() { case "$1" in use) ;; load) [ "$2" = good/1 ] && LOADEDMODULES=good/1 ;; ' \
           'is-loaded) [ "$LOADEDMODULES" = "$2" ] ;; esac; }\n'


@pytest.mark.parametrize(
    ("modules", "ok", "detail"),
    [
        (("good/1",), True, "sources {setup}, loaded: good/1"),
        (("good/1", "gone/2"), False, "module gone/2 does not load; fix environment: in include/clusters/site.yaml"),
    ],
)
def test_the_doctor_loads_the_modules_as_the_wrapper_does(tmp_path, modules, ok, detail):
    setup = tmp_path / "lmod.sh"
    setup.write_text(STAND_IN)
    env = SiteEnvironment(setup=str(setup), module_path=("/opt/m",), modules=modules)
    proc = subprocess.run(env.check_command(), shell=True, capture_output=True, text=True, timeout=30)
    finding = environment_finding("site", env, (proc.returncode, proc.stdout, proc.stderr))
    assert finding.ok is ok and detail.format(setup=setup) in finding.detail, finding


def test_a_missing_setup_script_is_its_own_finding(tmp_path):
    env = SiteEnvironment(setup=str(tmp_path / "absent.sh"))
    proc = subprocess.run(env.check_command(), shell=True, capture_output=True, text=True, timeout=30)
    finding = environment_finding("site", env, (proc.returncode, proc.stdout, proc.stderr))
    assert proc.returncode == 3 and not finding.ok and f"cannot source {tmp_path}/absent.sh" in finding.detail
