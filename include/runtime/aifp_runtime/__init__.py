"""The platform job runtime: what every recipe's job does the same way, so a recipe holds only its model.

Shipped into each run directory by ``aifactory.models.bundle`` (with ``contract.py``, ``layout.py``
and ``errors.py`` of the core package) and imported by the recipe's entry point, which runs there
as ``python train.py --params params.json`` under the platform's fixed wrapper (``job.sh``). It
imports nothing of ``aifactory``; torch is imported only by the parts that need it.

The API a recipe uses::

    from aifp_runtime import BadInput, Job, run

    def main(job: Job) -> int:
        job.params.hyperparameters, job.params.dataset_dir, job.params.output_dir
        dist = job.distributed()                 # rank/world/device from Slurm, process group started
        state = job.checkpoints.load()           # latest checkpoint (weights_only=True) or None
        while ...:
            if job.stop_agreed(dist): break      # SIGTERM/SIGUSR1 seen by any rank
            ...; job.checkpoints.save_if_due(step, make_state)
        if job.stopped: return job.stop_and_requeue(save)   # checkpoint, requeue (max_requeues)
        job.write_outputs(files, formats=..., metrics=..., details=...)   # completion marker last

    if __name__ == "__main__":
        raise SystemExit(run(main))

Modules: :mod:`.job` (params, entry point, exit codes), :mod:`.distributed`, :mod:`.signals`
(stop requests and self-requeue), :mod:`.checkpoints`, :mod:`.outputs` (atomic writes and the
completion marker through :mod:`.contract`); for classifier recipes :mod:`.data` (dataset files,
the held-out split, batches), :mod:`.training` (the resumable data-parallel loop, ``fit``) and
:mod:`.export` (PyTorch, safetensors and ONNX files and the ONNX Runtime parity check).
"""

from __future__ import annotations

from aifp_runtime.checkpoints import Checkpoints
from aifp_runtime.distributed import Dist
from aifp_runtime.job import EXIT_BAD_INPUT, EXIT_TERMINATED, BadInput, Job, JobParams, run
from aifp_runtime.outputs import sha256_file, write_atomic
from aifp_runtime.signals import StopRequest

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_TERMINATED",
    "BadInput",
    "Checkpoints",
    "Dist",
    "Job",
    "JobParams",
    "StopRequest",
    "run",
    "sha256_file",
    "write_atomic",
]
