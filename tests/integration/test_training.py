"""The tabular_classifier recipe as real Slurm jobs on the local two-node cluster.

Each test stages a small Parquet dataset on the HPC side, renders the job the way the
SlurmJobOperator does (its own ``sbatch_argv``, the job bundle of ``aifactory.models.bundle`` with the
platform's one wrapper and job runtime, ``params.json``), submits it over SSH under the tenant's
account, and watches it with ``sacct``:

* a requeue mid-run (``scontrol requeue``): the job resumes from its checkpoint, every step number
  appears once in the log, and the run succeeds;
* ``nodes=2``: one rank per node through ``srun``, both in the log, and the same outputs as one node;
* ``nodes=2`` with two GPUs per node (the local cluster's typed GRES, ``gpu:a100:2``): Slurm schedules
  ``gres/gpu=4`` and starts four ranks, two per node with local ids 0 and 1 (they train on CPU here);
* ``nodes=2`` inside the local cluster's container image (rootless podman, ``containers:`` of its
  spec): each rank runs the image's interpreter, the ranks meet over the host network, and the job
  writes the same outputs into the tenant's run directory;
* the controller down when the batch script starts the step: the wrapper starts it again once the
  controller is back, and the job completes with one training run.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.hpc.containers import CONTAINER_ARGV_SEPARATOR, container_argv, container_binds
from aifactory.hpc.remote import q
from aifactory.hpc.slurm import (
    Resources,
    TenantSlurmPolicy,
    build_sbatch_command,
    job_name,
    parse_sbatch_output,
    sbatch_argv,
)
from aifactory.models import bundle
from aifactory.models.contract import parse_marker
from aifactory.models.recipes import load_recipes
from aifactory.tenants import load_cluster, load_tenant
from tests.conftest import tenant_areas

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RECIPE = load_recipes()["tabular_classifier"]
PYTHON = "/srv/aifactory/venv/bin/python"
HP = {"label_column": "species", "feature_columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"]}


@pytest.fixture()
def area(stack_env, shell):
    root = layout.run_dir(tenant_areas("demo"), f"itest-train-{secrets.token_hex(4)}")
    shell.run("mkdir -p -m 0700 " + q(root + "/ds"))
    yield root
    shell.run("rm -rf -- " + q(root))


def _stage_iris(shell, ds_dir: str) -> None:
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

    table = pc.read_csv(REPO / "include/sample_data/iris.csv")
    local = Path(f"/tmp/aifp-itest-{secrets.token_hex(3)}.parquet")
    pq.write_table(table, local)
    shell.sftp_client().put(str(local), f"{ds_dir}/part-00000.parquet")
    local.unlink()


def _submit(shell, root: str, name: str, hp: dict, nodes: int = 1, *, delay_s: int = 0,
            env: dict[str, str] | None = None, step_pause_s: float = 0, gpus_per_node: int = 0,
            container: str | None = None) -> tuple[str, str]:
    run_dir = f"{root}/{name}"
    shell.run("mkdir -p -m 0700 " + q(run_dir) + " " + q(f"{run_dir}/{layout.RUNTIME_PACKAGE}"))
    params = {"dataset_dir": f"{root}/ds", "output_dir": layout.run_output_dir(run_dir),
              "hyperparameters": RECIPE.validate_hyperparameters({**HP, **hp}),
              "job": {"tenant": "demo", "recipe": RECIPE.name}}
    sftp = shell.sftp_client()
    with sftp.open(f"{run_dir}/{layout.PARAMS_FILE}", "wb") as fh:
        fh.write(json.dumps(params).encode())
    for local, remote in bundle.job_files(RECIPE):
        sftp.put(str(local), f"{run_dir}/{remote}")
    if step_pause_s:  # the platform's test-only switch: slow steps, to have time to requeue the job
        switch = layout.slow_steps_switch_path(run_dir)
        shell.run("mkdir -p -m 0700 " + q(switch.rsplit("/", 1)[0]))
        with sftp.open(switch, "wb") as fh:
            fh.write(str(step_pause_s).encode())
    python = PYTHON
    if container:  # what plan_job does for a recipe's container: (aifactory.hpc.containers)
        cluster = load_cluster("local")
        image = cluster.containers.image(container)
        binds = container_binds(cluster.hpc_root, load_tenant("demo").areas(cluster))
        argv = container_argv(cluster.containers, image, binds=binds, run_dir=run_dir)
        python = image.python
        with sftp.open(f"{run_dir}/{layout.CONTAINER_ARGV_FILE}", "wb") as fh:
            fh.write(CONTAINER_ARGV_SEPARATOR.join(a.encode() for a in argv))
    script = f"{run_dir}/{bundle.WRAPPER}"
    if delay_s:  # the batch script waits before it runs the wrapper (a window to stop the controller in)
        script = f"{run_dir}/delayed.sh"
        with sftp.open(script, "wb") as fh:
            fh.write(f"#!/bin/bash\nsleep {int(delay_s)}\nexec bash {bundle.WRAPPER}\n".encode())
    policy = TenantSlurmPolicy(account="demo", partitions=("debug",), max_nodes=2, max_mem_gb=2,
                               max_gpus_per_node=2, gpu_offers=load_cluster("local").gpus)
    res = Resources.from_request({"nodes": nodes, "mem_gb": 2 if gpus_per_node else 1, "time_limit_minutes": 10,
                                  "gpus_per_node": gpus_per_node}, policy=policy)
    argv = sbatch_argv(res, job_name=job_name("demo", "itest", secrets.token_hex(4), name), comment="aifp:itest",
                       chdir=run_dir, output_path=f"{run_dir}/slurm-%j.out",
                       export_vars={"PATH": "/usr/local/bin:/usr/bin:/bin", "AIFP_PYTHON": python,
                                    "AIFP_ENTRYPOINT": "train.py", **(env or {})},
                       signal=RECIPE.sbatch_signal(10))
    rc, out, err = shell.run(build_sbatch_command(argv, script))
    assert rc == 0, err
    return parse_sbatch_output(out).job_id, run_dir


def _state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True,
                         text=True).stdout.strip().splitlines()
    return out[-1].split()[0] if out else ""


def _wait(job_id: str, states: tuple[str, ...], timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = _state(job_id)
        if state in states:
            return state
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not reach {states} within {timeout}s (last: {_state(job_id)})")


def _log(shell, run_dir: str, job_id: str) -> str:
    return shell.run(f"cat {q(run_dir + '/slurm-' + job_id + '.out')}")[1]


def _marker(shell, run_dir: str):
    out = layout.run_output_dir(run_dir)
    return parse_marker(shell.run(f"cat {q(out + '/' + layout.COMPLETION_MARKER)}")[1].encode(), output_dir=out)


def _steps(log: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"^step=(\d+)/", log, re.M)]


def test_requeue_mid_run_resumes_from_checkpoint(shell, area):
    _stage_iris(shell, f"{area}/ds")
    # 30 epochs x 4 steps of 32 rows, 0.25 s a step: ~30 s of training, requeued after ~8 s
    job_id, run_dir = _submit(shell, area, "requeue", {"epochs": 30, "batch_size": 32, "log_every_steps": 1,
                                                         "checkpoint_every_steps": 1000}, step_pause_s=0.25)
    _wait(job_id, ("RUNNING",), timeout=120)
    deadline = time.time() + 60
    while not _steps(_log(shell, run_dir, job_id)) or max(_steps(_log(shell, run_dir, job_id))) < 10:
        assert time.time() < deadline, _log(shell, run_dir, job_id)
        time.sleep(0.5)
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    # Slurm holds a requeued job back for a while (BeginTime); release it at once for the test.
    deadline = time.time() + 60
    while subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"],
                         capture_output=True).returncode != 0:
        assert time.time() < deadline
        time.sleep(1)
    assert _wait(job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=300) == "COMPLETED"

    log = _log(shell, run_dir, job_id)
    stop = re.search(r"^checkpoint: step=(\d+) reason=stop-SIGTERM", log, re.M)
    resume = re.search(r"^resume: from checkpoint step=(\d+)", log, re.M)
    assert stop and resume, log
    assert stop.group(1) == resume.group(1) and int(stop.group(1)) >= 10
    assert "restart_count=1" in log
    steps = _steps(log)
    total = 30 * 4
    assert steps == list(range(1, total + 1)), "a finished step was redone or skipped:\n" + log
    marker = _marker(shell, run_dir)
    assert marker.restart_count == 1 and marker.metrics["steps"] == total and marker.job_id == job_id
    assert marker.metrics["test_accuracy"] >= 0.8


def test_two_nodes_train_with_one_rank_each(shell, area):
    _stage_iris(shell, f"{area}/ds")
    hp = {"epochs": 10, "batch_size": 16}
    two, run2 = _submit(shell, area, "two", hp, nodes=2)
    one, run1 = _submit(shell, area, "one", hp, nodes=1)
    assert _wait(two, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")) == "COMPLETED", _log(shell, run2, two)
    assert _wait(one, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")) == "COMPLETED", _log(shell, run1, one)
    log = _log(shell, run2, two)
    ranks = dict(re.findall(r"^rank=(\d)/2 node=(\S+)", log, re.M))
    assert ranks.keys() == {"0", "1"} and len(set(ranks.values())) == 2, log
    nodes = subprocess.run(["sacct", "-n", "-X", "-P", "-j", two, "-o", "NodeList"], capture_output=True,
                           text=True).stdout.strip()
    assert nodes == "n[1-2]"
    outputs = {run: _marker(shell, run) for run in (run1, run2)}
    paths = {run: {f.path for f in m.files} for run, m in outputs.items()}
    assert paths[run1] == paths[run2] >= {"model.onnx", "model.safetensors"}
    assert outputs[run2].world_size == 2 and outputs[run1].world_size == 1
    for marker in outputs.values():
        assert marker.metrics["test_accuracy"] >= 0.8
        assert marker.details["onnx_check"]["passed"]
        assert marker.formats == {"pytorch": "model.pt", "safetensors": "model.safetensors", "onnx": "model.onnx"}


def test_two_nodes_with_two_gpus_each_start_four_ranks_with_their_local_ids(shell, area):
    _stage_iris(shell, f"{area}/ds")
    job, run = _submit(shell, area, "gpus", {"epochs": 10, "batch_size": 16}, nodes=2, gpus_per_node=2)
    assert _wait(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")) == "COMPLETED", _log(shell, run, job)
    log = _log(shell, run, job)
    ranks = {int(r): (node, int(local)) for r, node, local in
             re.findall(r"^rank=(\d)/4 node=(\S+) local_rank=(\d) ", log, re.M)}
    assert sorted(ranks) == [0, 1, 2, 3], log
    by_node: dict[str, list[tuple[int, int]]] = {}
    for rank, (node, local) in sorted(ranks.items()):
        by_node.setdefault(node, []).append((rank, local))
    # two nodes, two ranks each, numbered in blocks, each rank on the GPU of its local id
    assert sorted(by_node) == ["n1", "n2"], ranks
    assert sorted(local for _, local in by_node["n1"]) == [0, 1] == sorted(local for _, local in by_node["n2"])
    assert all(local == rank % 2 for rank, (_, local) in ranks.items()), ranks
    row = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "NodeList,AllocTRES"], capture_output=True,
                         text=True).stdout.strip()
    nodes, tres = row.split("|")
    assert nodes == "n[1-2]" and "gres/gpu=4" in tres.split(",") and "cpu=4" in tres.split(","), row
    marker = _marker(shell, run)
    assert marker.world_size == 4 and marker.details["onnx_check"]["passed"]


def test_two_ranks_train_inside_the_clusters_container_image(shell, area):
    _stage_iris(shell, f"{area}/ds")
    job, run = _submit(shell, area, "ctr", {"epochs": 10, "batch_size": 16}, nodes=2, container="aifactory-train")
    assert _wait(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")) == "COMPLETED", _log(shell, run, job)
    log = _log(shell, run, job)
    assert "aifp: container: /usr/bin/podman run --rm --network=host" in log
    assert "--rootfs /opt/aifactory/images/aifactory-train-1.0" in log
    ranks = dict(re.findall(r"^rank=(\d)/2 node=(\S+)", log, re.M))
    assert ranks.keys() == {"0", "1"} and set(ranks.values()) == {"n1", "n2"}, log
    marker = _marker(shell, run)
    assert marker.world_size == 2 and marker.details["onnx_check"]["passed"]
    assert marker.metrics["test_accuracy"] >= 0.8
    # written by the ranks inside the image, owned by the tenant's own user outside it
    rc, owner, _ = shell.run(f"stat -c %U {q(layout.run_output_dir(run) + '/model.onnx')}")
    assert rc == 0 and owner.strip() == "aifp-demo"


def test_step_start_waits_out_a_controller_outage(shell, area, stack_env):
    """slurmctld is stopped while the batch script runs and before it starts the training step.

    Without the wrapper's retry, srun fails at once and the job ends FAILED;
    with it, the step starts when the controller is back and the job completes, trained once."""
    _stage_iris(shell, f"{area}/ds")
    job_id, run_dir = _submit(shell, area, "outage", {"epochs": 5, "batch_size": 32}, delay_s=5,
                              env={"AIFP_STEP_RETRY_INTERVAL_S": "20"})
    _wait(job_id, ("RUNNING",), timeout=120)
    # The next try comes 20 s after the failed one: by then the controller is back and the nodes
    # have registered (a step asked for in the seconds before that waits minutes in srun's own
    # "step creation temporarily disabled" loop).
    pidfile = Path(stack_env["AIFP_STATE_DIR"]) / "run" / "slurmctld.pid"
    subprocess.run(["kill", "-TERM", pidfile.read_text().strip()], check=True)
    try:
        deadline = time.time() + 60  # the batch script has tried the step at least once meanwhile
        while "the training step did not start" not in _log(shell, run_dir, job_id):
            assert time.time() < deadline, _log(shell, run_dir, job_id)
            time.sleep(1)
    finally:
        subprocess.run(["bash", str(REPO / "include/stack/stack.sh"), "up"], check=True, capture_output=True)
    assert _wait(job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")) == "COMPLETED", \
        _log(shell, run_dir, job_id)
    log = _log(shell, run_dir, job_id)
    assert "Unable to contact slurm controller" in log or "srun: error" in log, log
    assert log.count("rank=0/1 ") == 1 and log.count("done: test_accuracy") == 1, log  # trained once

