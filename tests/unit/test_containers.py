"""Container runtimes (aifactory.hpc.containers): the command each builds, the spec's checks, the plan."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.errors import InputError
from aifactory.hpc.containers import (
    ContainerImage,
    Containers,
    container_argv,
    container_binds,
    parse_containers,
)
from aifactory.hpc.slurm import JobPlan, TaskIds, plan_job
from aifactory.models import bundle
from aifactory.models.recipes import load_recipes
from aifactory.tenants import load_cluster, load_tenant

IMAGE = ContainerImage(name="train", path="/sw/images/train.sif", python="/opt/venv/bin/python")
RUN = "/srv/x/demo/runs/aifp-demo-1"


def test_podman_runs_the_image_rootfs_with_the_ranks_environment_and_the_hpc_root():
    argv = container_argv(Containers(runtime="podman", options=("--runtime=/usr/sbin/runc",), images=(IMAGE,)),
                          IMAGE, binds=("/srv/x",), run_dir=RUN)
    assert argv[:4] == ("/usr/bin/podman", "run", "--rm", "--network=host")
    assert {"--env=SLURM*", "--env=AIFP_*", "--volume=/srv/x:/srv/x", f"--workdir={RUN}"} <= set(argv)
    assert argv[-3:] == ("--runtime=/usr/sbin/runc", "--rootfs", IMAGE.path)  # site options, then the image


def test_apptainer_execs_the_image_with_the_hpc_root_bound():
    argv = container_argv(Containers(runtime="apptainer", binary="/opt/apptainer/bin/apptainer", options=("--nv",),
                                     images=(IMAGE,)), IMAGE, binds=("/srv/x", "/scratch/u"), run_dir=RUN)
    assert argv == ("/opt/apptainer/bin/apptainer", "exec", "--bind=/srv/x", "--bind=/scratch/u", f"--pwd={RUN}",
                    "--nv", IMAGE.path)


def test_a_container_sees_the_hpc_root_and_each_area_outside_it_at_its_own_path():
    inside = layout.TenantAreas(project="/srv/x/project/demo", scratch="/srv/x/scratch/u")
    assert container_binds("/srv/x", inside) == ("/srv/x",)
    apart = layout.TenantAreas(project="/project/demo", scratch="/scratch/u")
    assert container_binds("/srv/x", apart) == ("/srv/x", "/project/demo", "/scratch/u")
    argv = container_argv(Containers(runtime="podman", images=(IMAGE,)), IMAGE,
                          binds=container_binds("/srv/x", apart), run_dir="/project/demo/runs/aifp-demo-1")
    assert {"--volume=/srv/x:/srv/x", "--volume=/project/demo:/project/demo", "--volume=/scratch/u:/scratch/u"} <= set(argv)
    with pytest.raises(InputError, match="not an absolute path"):
        container_argv(Containers(runtime="podman", images=(IMAGE,)), IMAGE, binds=("/srv/x y",), run_dir=RUN)


def test_the_local_cluster_runs_the_training_image_with_podman_through_runc():
    containers = load_cluster("local").containers
    assert containers.runtime == "podman" and "--runtime=/usr/sbin/runc" in containers.options
    assert containers.image("aifactory-train").python == "/opt/venv/bin/python"
    with pytest.raises(InputError, match="no container image 'cuda'; it has \\['aifactory-train'\\]"):
        containers.image("cuda")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"runtime": "docker", "images": {"a": {"path": "/i", "python": "/p"}}}, "runtime 'docker' must be one of"),
        ({"runtime": "podman", "images": {}}, "images must map image names"),
        ({"runtime": "podman", "images": {"a": {"path": "/i"}}}, "images.a must be"),
        ({"runtime": "podman", "images": {"a": {"path": "i", "python": "/p"}}}, "not an absolute path"),
        ({"runtime": "podman", "images": {"A b": {"path": "/i", "python": "/p"}}}, "image name 'A b' must match"),
        ({"runtime": "podman", "options": ["--privileged; id"], "images": {"a": {"path": "/i", "python": "/p"}}},
         "must be one --flag"),
        ({"runtime": "podman", "options": ["-v /:/host"], "images": {"a": {"path": "/i", "python": "/p"}}},
         "must be one --flag"),
        ({"runtime": "podman", "options": "--nv", "images": {"a": {"path": "/i", "python": "/p"}}}, "must be a list"),
        ({"runtime": "podman", "registry": "x", "images": {"a": {"path": "/i", "python": "/p"}}}, "unknown key"),
    ],
)
def test_a_bad_containers_block_names_what_is_wrong(raw, message):
    with pytest.raises(InputError, match=message) as exc:
        parse_containers(raw, "clusters/x.yaml")
    assert str(exc.value).startswith("clusters/x.yaml: containers")


def _plan(recipe):
    return plan_job(load_tenant("demo"), load_cluster("local"), recipe,
                    hyperparameters={"label_column": "species", "feature_columns": ["a"]}, resources={"nodes": 2},
                    dataset_dir=None, task=TaskIds(dag_id="factory_demo", run_id="r", task_id="train"))


def test_a_recipe_naming_an_image_runs_the_images_interpreter_in_it():
    recipe = replace(load_recipes()["tabular_classifier"], container="aifactory-train")
    plan = _plan(recipe)
    assert plan.python == "/opt/venv/bin/python" and "AIFP_PYTHON=/opt/venv/bin/python" in plan.sbatch_command
    assert plan.container_argv[-2:] == ("--rootfs", "/opt/aifactory/images/aifactory-train-1.0")
    assert f"--workdir={plan.run_dir}" in plan.container_argv
    assert JobPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    plain = _plan(load_recipes()["tabular_classifier"])
    assert plain.container_argv == () and plain.python == "/srv/aifactory/venv/bin/python"
    with pytest.raises(InputError, match="no container image 'nope'"):
        _plan(replace(recipe, container="nope"))


def test_the_wrapper_runs_the_entry_point_through_the_container_arguments(tmp_path: Path):
    """container.argv (NUL-separated) goes in front of the interpreter, each argument as it is."""
    runtime = tmp_path / "runtime"
    runtime.write_text('#!/bin/bash\necho "runtime got: $*"\nwhile [[ "$1" != --rootfs ]]; do shift; done\n'
                       'shift 2\nexec "$@"\n')
    runtime.chmod(0o755)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (tmp_path / "bin" / "srun").chmod(0o755)
    (tmp_path / "entry.py").write_text("print('entry ran')\n")
    argv = [str(runtime), "run", "--env=A B;$(id)", "--rootfs", "/img"]
    (tmp_path / layout.CONTAINER_ARGV_FILE).write_bytes(b"\0".join(a.encode() for a in argv))
    r = subprocess.run(["bash", str(bundle.WRAPPER_SOURCE)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "AIFP_PYTHON": sys.executable,
                            "AIFP_ENTRYPOINT": "entry.py", "AIFP_STEP_RETRY_S": "0"})
    assert r.returncode == 0, r.stderr
    assert f"runtime got: run --env=A B;$(id) --rootfs /img {sys.executable} -u entry.py --params params.json" in r.stdout
    assert "entry ran" in r.stdout


def test_a_missing_runtime_fails_the_job_naming_it(tmp_path: Path):
    (tmp_path / "entry.py").write_text("")
    (tmp_path / layout.CONTAINER_ARGV_FILE).write_bytes(b"/nonexistent/podman\0run")
    r = subprocess.run(["bash", str(bundle.WRAPPER_SOURCE)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "AIFP_PYTHON": shutil.which("python3") or sys.executable,
                            "AIFP_ENTRYPOINT": "entry.py"})
    assert r.returncode == 2 and "the container runtime /nonexistent/podman is not installed" in r.stderr


class RecordingSftp:
    """Just enough SFTP for prepare_run_dir: records what lands where."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = set()

    def lstat(self, path):
        if path in self.dirs:
            import stat as st
            return type("S", (), {"st_mode": st.S_IFDIR | 0o700})()
        raise FileNotFoundError(path)

    def mkdir(self, path, mode=0o777):
        self.dirs.add(path)

    def chmod(self, path, mode):
        pass

    def putfo(self, fo, path, file_size=0, confirm=True):
        self.files[path] = fo.read()

    def posix_rename(self, src, dst):
        self.files[dst] = self.files.pop(src)


def test_the_run_directory_gets_the_container_arguments_nul_separated():
    from contextlib import contextmanager

    from operators.slurm_rundir import prepare_run_dir

    sftp = RecordingSftp()

    class Hook:
        @contextmanager
        def sftp(self):
            yield sftp

    plan = _plan(replace(load_recipes()["tabular_classifier"], container="aifactory-train"))
    sftp.dirs.add(plan.project_dir)  # onboarding made the tenant's project area
    prepare_run_dir(Hook(), plan)
    data = sftp.files[f"{plan.run_dir}/{layout.CONTAINER_ARGV_FILE}"]
    assert tuple(data.decode().split("\0")) == plan.container_argv
    plain = _plan(load_recipes()["tabular_classifier"])
    sftp.files.clear()
    prepare_run_dir(Hook(), plain)
    assert f"{plain.run_dir}/{layout.CONTAINER_ARGV_FILE}" not in sftp.files and sftp.files


def test_a_missing_project_area_stops_the_run_directory_before_anything_is_written():
    from contextlib import contextmanager

    from operators.slurm_rundir import prepare_run_dir

    sftp = RecordingSftp()

    class Hook:
        @contextmanager
        def sftp(self):
            yield sftp

    plan = _plan(load_recipes()["tabular_classifier"])
    with pytest.raises(InputError, match=f"project area {plan.project_dir} does not exist.*make onboard"):
        prepare_run_dir(Hook(), plan)
    assert sftp.dirs == set() and sftp.files == {}  # the tenant's login never creates its own area
