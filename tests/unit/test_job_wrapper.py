"""The platform's one batch wrapper (include/runtime/sbatch_wrapper.sh) and the job bundle around it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.errors import InputError
from aifactory.models import bundle
from aifactory.models.recipes import load_recipe, load_recipes

WRAPPER = bundle.WRAPPER_SOURCE


def test_sbatch_wrapper_is_fixed():
    text = WRAPPER.read_text()
    assert "#SBATCH" not in text.replace("#SBATCH lines", "")  # no directives, only the comment
    assert "{{" not in text and "${AIFP_PYTHON" in text and "set -euo pipefail" in text
    assert 'srun --export=ALL --ntasks="${SLURM_NTASKS:-1}"' in text
    r = subprocess.run(["bash", "-n", str(WRAPPER)], capture_output=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("recipe", [*load_recipes().values(), load_recipe(layout.PLATFORM_RECIPES_DIR / "probe")],
                         ids=lambda r: r.name)
def test_every_recipe_ships_its_folder_the_runtime_and_the_one_wrapper(recipe):
    files = dict((remote, local) for local, remote in bundle.job_files(recipe))
    assert files[bundle.WRAPPER] == WRAPPER  # the probe too: one wrapper, no fork
    assert recipe.entrypoint in files and "recipe.yaml" in files
    for name in ("contract.py", "layout.py", "errors.py", "job.py", "checkpoints.py", "signals.py"):
        assert f"{layout.RUNTIME_PACKAGE}/{name}" in files
    assert files[f"{layout.RUNTIME_PACKAGE}/contract.py"] == layout.PACKAGE_DIR / "models" / "contract.py"
    assert not any("__pycache__" in r or r.endswith(".pyc") for r in files)
    assert len(files) == len(bundle.job_files(recipe))  # no path twice


def test_a_recipe_file_may_not_take_a_platform_name(tmp_path):
    folder = tmp_path / "r1"
    folder.mkdir()
    (folder / "recipe.yaml").write_text("name: r1\nhyperparameters: {type: object}\n")
    (folder / "train.py").write_text("")
    (folder / "job.sh").write_text("echo mine")
    with pytest.raises(InputError, match="job.sh"):
        bundle.job_files(load_recipe(folder))


def test_the_runtime_imports_nothing_of_the_core_package():
    for path in bundle.RUNTIME_SOURCE.rglob("*.py"):
        text = path.read_text()
        assert "import aifactory" not in text and "from aifactory" not in text, path


def test_contract_runs_in_a_run_directory_without_aifactory(tmp_path):
    """The job's copy of the contract is the core's file, importable where aifactory is not installed."""
    recipe = load_recipe(layout.PLATFORM_RECIPES_DIR / "probe")
    bundle.materialize(recipe, tmp_path)
    code = ("import sys; sys.path.insert(0, '.'); sys.modules['aifactory'] = None\n"  # aifactory: ImportError
            "from aifp_runtime import contract\n"
            "print(contract.MARKER_SCHEMA_VERSION, contract.MarkerError.__mro__[1].__name__)")
    r = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "FactoryError"]


#: A stand-in for srun: records its arguments, fails like an unreachable controller for the first
#: $FAKE_SRUN_DOWN calls (no task runs), then runs the task command (the arguments after the options).
FAKE_SRUN = """#!/bin/bash
n=$(( $(cat "$FAKE_SRUN_CALLS" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$FAKE_SRUN_CALLS"
printf "%s\\n" "$@" > "$FAKE_SRUN_ARGS"
if (( n <= ${FAKE_SRUN_DOWN:-0} )); then
  echo "srun: error: Unable to create step for job 5: Unable to contact slurm controller (connect failure)" >&2
  exit 1
fi
while [[ "$1" == --* ]]; do shift; done
exec "$@"
"""


def _wrapper(tmp_path: Path, entry: str, **env: str) -> subprocess.CompletedProcess:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "srun").write_text(FAKE_SRUN)
    (bindir / "srun").chmod(0o755)
    (tmp_path / "entry.py").write_text(entry)
    (tmp_path / "calls").unlink(missing_ok=True)
    full = {"PATH": f"{bindir}:/usr/bin:/bin", "AIFP_PYTHON": sys.executable, "AIFP_ENTRYPOINT": "entry.py",
            "SLURM_JOB_ID": "5", "SLURM_CPUS_PER_TASK": "2", "FAKE_SRUN_CALLS": str(tmp_path / "calls"),
            "FAKE_SRUN_ARGS": str(tmp_path / "args"), "AIFP_STEP_RETRY_INTERVAL_S": "1", **env}
    return subprocess.run(["bash", str(WRAPPER)], env=full, cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_sbatch_wrapper_runs_the_entrypoint_as_the_step(tmp_path):
    """The entrypoint and params.json, nothing else; its exit status is the job's."""
    entry = "import os, sys; print('ARGS', sys.argv[1:], os.environ['OMP_NUM_THREADS']); sys.exit(3)"
    r = _wrapper(tmp_path, entry)
    assert r.returncode == 3, r.stderr
    assert "ARGS ['--params', 'params.json'] 2" in r.stdout
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:2] == ["--export=ALL", "--ntasks=1"] and args[-5:] == [sys.executable, "-u", "entry.py",
                                                                         "--params", "params.json"]
    assert (tmp_path / "calls").read_text().strip() == "1"  # it ran, and failed: never started again
    assert not (tmp_path / ".aifp-step-started").exists()
    r = _wrapper(tmp_path, "pass", SLURM_NTASKS="2")  # nodes=2 with one task per node: one rank per node
    assert r.returncode == 0 and (tmp_path / "args").read_text().splitlines()[1] == "--ntasks=2"
    missing = subprocess.run(["bash", str(WRAPPER)], env={"PATH": "/usr/bin:/bin"},
                             cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode != 0 and "AIFP_PYTHON" in missing.stderr


@pytest.mark.parametrize("entry", ["../entry.py", "/etc/passwd", "no-such.py", "-c"])
def test_sbatch_wrapper_refuses_an_entry_point_outside_the_run_directory(tmp_path, entry):
    r = _wrapper(tmp_path, "print('RAN')", AIFP_ENTRYPOINT=entry)
    assert r.returncode == 2 and "RAN" not in r.stdout and "AIFP_ENTRYPOINT" in r.stderr
    assert not (tmp_path / "calls").exists()


def test_sbatch_wrapper_starts_the_step_again_while_the_controller_is_unreachable(tmp_path):
    r = _wrapper(tmp_path, "print('TRAINED')", FAKE_SRUN_DOWN="2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("TRAINED") == 1 and (tmp_path / "calls").read_text().strip() == "3"
    assert r.stderr.count("the training step did not start (srun exit 1") == 2 and "attempt 3 in 1s" in r.stderr

    # ... but not past its deadline: then the job fails, saying why
    r = _wrapper(tmp_path, "print('TRAINED')", FAKE_SRUN_DOWN="100", AIFP_STEP_RETRY_S="2")
    assert r.returncode == 1 and "TRAINED" not in r.stdout
    assert "the training step never started (srun exit 1" in r.stderr and "is the Slurm controller up?" in r.stderr
    assert int((tmp_path / "calls").read_text()) <= 3


# --- the site environment (aifactory.hpc.site), run by bash here with a stand-in `module` and `srun` ---

FAKE_SETUP = '''module() {
  case "$1" in
    use) MODULEPATH="$2:${MODULEPATH:-}" ;;
    load) [ "$2" = good/1.0 ] || { echo "Lmod: unknown module $2" >&2; return 1; }
          LOADEDMODULES="${LOADEDMODULES:+$LOADEDMODULES:}$2"; export GOOD_HOME=/opt/good ;;
    is-loaded) case ":$LOADEDMODULES:" in *":$2:"*) return 0 ;; *) return 1 ;; esac ;;
    -t) echo good/1.0 ;;
  esac
}
undefined_in_site_scripts="$NOT_SET_ANYWHERE"   # site scripts are not written for set -u
'''


def _run_wrapper(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "bin").mkdir(exist_ok=True)
    srun = tmp_path / "bin" / "srun"  # the step: runs the task command once, without Slurm
    srun.write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    srun.chmod(0o755)
    (tmp_path / "entry.py").write_text("import os\nprint('entry ran', os.environ.get('GOOD_HOME'))\n")
    (tmp_path / "setup.sh").write_text(FAKE_SETUP)
    base = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "AIFP_PYTHON": sys.executable, "AIFP_ENTRYPOINT": "entry.py",
            "AIFP_SITE_SETUP": str(tmp_path / "setup.sh"), "AIFP_STEP_RETRY_S": "0"}
    return subprocess.run(["bash", str(WRAPPER)], cwd=tmp_path, env={**base, **env}, capture_output=True, text=True,
                          timeout=60)


def test_the_wrapper_loads_the_modules_and_the_ranks_see_them(tmp_path):
    r = _run_wrapper(tmp_path, AIFP_MODULEPATH="/opt/mods", AIFP_MODULES="good/1.0")
    assert r.returncode == 0, r.stderr
    assert "aifp: modules loaded: good/1.0" in r.stdout and "entry ran /opt/good" in r.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AIFP_MODULES": "good/1.0:bad/2.0"}, "module load bad/2.0 failed"),
        ({"AIFP_MODULES": "good/1.0", "AIFP_SITE_SETUP": "/nonexistent/lmod.sh"}, "does not exist"),
        ({"AIFP_MODULES": "good/1.0", "AIFP_SITE_SETUP": ""}, "no module command"),
        ({"AIFP_MODULES": "$(touch pwned)"}, "module name $(touch pwned) is not allowed"),
    ],
)
def test_a_site_environment_that_fails_ends_the_job_before_the_entry_point(tmp_path, env, message):
    r = _run_wrapper(tmp_path, **env)
    assert r.returncode == 2 and message in r.stderr, (r.stdout, r.stderr)
    assert "entry ran" not in r.stdout and not (tmp_path / "pwned").exists()
