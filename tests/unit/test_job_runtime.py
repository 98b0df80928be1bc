"""The platform job runtime (include/runtime/aifp_runtime), imported from a job bundle as on the cluster."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.models import bundle
from aifactory.models.contract import parse_marker
from aifactory.models.recipes import load_recipe


@pytest.fixture()
def runtime(tmp_path, monkeypatch):
    run_dir = bundle.materialize(load_recipe(layout.PLATFORM_RECIPES_DIR / "probe"), tmp_path / "run")
    for mod in [m for m in sys.modules if m == "aifp_runtime" or m.startswith("aifp_runtime.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.syspath_prepend(str(run_dir))
    for var in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    return importlib.import_module("aifp_runtime")


def test_rendezvous_port_stays_below_the_ephemeral_range(runtime):
    from aifp_runtime.distributed import rendezvous_port

    ports = {rendezvous_port(job, restart) for job in range(1, 5000) for restart in range(3)}
    assert min(ports) >= 20000 and max(ports) < 32768  # Linux hands 32768-60999 to outgoing connections
    assert rendezvous_port(41, 0) != rendezvous_port(41, 1)  # a requeued job gets a new port


def test_checkpoint_pointer_holds_a_step_never_a_file_name(runtime, tmp_path):
    ckpts = runtime.Checkpoints(tmp_path / "ck")
    assert ckpts.path(7).name == "ckpt-000000007.pt"
    (tmp_path / "ck").mkdir()
    # an old-style pointer naming a file (or a traversal) is not followed: nothing is loaded
    for pointer in ({"file": "../../evil.pt"}, {"step": "../x"}, {"step": -1}, {"step": True}, "garbage"):
        (tmp_path / "ck" / "latest.json").write_text(json.dumps(pointer))
        assert ckpts.latest_step() is None
    with pytest.raises(ValueError):
        ckpts.path("1")  # type: ignore[arg-type]


def test_checkpoints_are_due_by_steps(runtime, tmp_path):
    ckpts = runtime.Checkpoints(tmp_path / "ck", every_steps=3)
    assert [s for s in range(1, 8) if ckpts.due(s)] == [3, 4, 5, 6, 7]  # until one is saved


def test_checkpoints_load_with_weights_only():
    text = (bundle.RUNTIME_SOURCE / "checkpoints.py").read_text()
    assert "weights_only=True" in text and "weights_only=False" not in text


def test_stop_request_prefers_sigterm(runtime):
    stop = runtime.StopRequest()
    stop.note("SIGUSR1")
    stop.note("SIGTERM")
    stop.note("SIGUSR1")
    assert stop.signal == "SIGTERM" and runtime.StopRequest.name_of(stop.code) == "SIGTERM"


def test_requeue_is_bounded_by_max_requeues(runtime, monkeypatch):
    from aifp_runtime import signals

    assert not signals.can_requeue(5)  # not under Slurm
    monkeypatch.setenv("SLURM_JOB_ID", "9")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    assert signals.can_requeue(4) and not signals.can_requeue(3)
    monkeypatch.setattr(signals, "slurm_job_state", lambda job: "RUNNING")
    lines: list[str] = []
    assert signals.requeue_self("SIGUSR1", "time limit near", 3, log=lines.append) is False
    assert "max_requeues=3" in lines[-1]


def test_the_marker_written_is_the_contract_and_records_the_params_digest(runtime, tmp_path):
    from aifp_runtime.job import Job, JobParams

    out = tmp_path / "run" / "output"
    params = tmp_path / "run" / "params.json"
    params.write_text(json.dumps({"output_dir": str(out), "hyperparameters": {"mode": "ok"},
                                  "job": {"recipe": "probe"}}))
    job = Job(JobParams.load(params))
    job._dist = runtime.Dist(rank=0, world=1, local_rank=0, node="n", backend="gloo", device="cpu")
    job.prepare_outputs()
    (out / "w.bin").write_bytes(b"weights")
    job.write_outputs(["w.bin"], formats={"raw": "w.bin"}, metrics={"acc": 1.0})
    marker = parse_marker((out / layout.COMPLETION_MARKER).read_bytes(), output_dir=str(out))
    import hashlib

    assert marker.params_sha256 == hashlib.sha256(params.read_bytes()).hexdigest()
    assert marker.formats == {"raw": "w.bin"} and marker.recipe == "probe"
    # a job cannot write a marker the platform would refuse
    (out / layout.MANIFEST_NAME).write_text("{}")
    from aifp_runtime.contract import MarkerError

    with pytest.raises(MarkerError):
        job.write_outputs([layout.MANIFEST_NAME])


def test_the_test_step_pause_comes_only_from_the_platforms_switch(runtime, tmp_path, monkeypatch):
    from aifp_runtime import job as job_mod
    from aifp_runtime.job import Job, JobParams

    area = str(tmp_path / "acme")
    run = Path(layout.run_dir(layout.TenantAreas(area, area), "aifp-acme-0123456789ab"))
    run.mkdir(parents=True)
    (run / "params.json").write_text(json.dumps({"output_dir": layout.run_output_dir(str(run)),
                                                 "hyperparameters": {}}))
    slept: list[float] = []
    monkeypatch.setattr(job_mod.time, "sleep", slept.append)
    Job(JobParams.load(run / "params.json")).test_step_pause()
    assert slept == []
    switch = Path(layout.slow_steps_switch_path(str(run)))
    assert switch.parent.parent == run.parent  # beside the run directory, not in it
    switch.parent.mkdir(parents=True)
    switch.write_text("99")
    job = Job(JobParams.load(run / "params.json"))
    job.test_step_pause()
    job.test_step_pause()
    assert slept == [10.0, 10.0]  # capped
