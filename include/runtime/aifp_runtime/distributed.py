"""Distributed setup from the Slurm (or torchrun) environment: rank, world, device, rendezvous.

One rank per task of the step (``srun``): ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``, or
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` under torchrun. With more than one rank the process group is
started (``gloo`` on CPU, ``nccl`` on CUDA) at ``MASTER_ADDR``/``MASTER_PORT``, default the node
that launched the step and a port derived from the job id and restart count.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from aifp_runtime.signals import env_int, restart_count

#: below Linux's ephemeral range (32768-60999): no client socket on the launch node holds one
RENDEZVOUS_PORTS = (20000, 32000)


def rendezvous_port(job: int, restart: int) -> int:
    """The rendezvous port every rank derives alike from the job id and its restart count.

    A requeued job gets another port (the last one may still be in TIME_WAIT), and the range stays
    clear of the ephemeral ports the kernel hands to outgoing connections on the launch node.
    """
    low, high = RENDEZVOUS_PORTS
    return low + (job * 7 + restart) % (high - low)


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    node: str
    backend: str
    device: Any

    @property
    def main(self) -> bool:
        return self.rank == 0

    def agree_max(self, value: int) -> int:
        """The largest ``value`` over all ranks (every rank calls it at the same point)."""
        if self.world == 1:
            return int(value)
        import torch
        import torch.distributed as dist

        flag = torch.tensor([int(value)], dtype=torch.int64, device=self.device)  # nccl reduces CUDA tensors only
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def leave(self) -> None:
        """Every rank leaves the process group at the same point.

        A rank that tears gloo down while its peer still holds the group can abort in gloo's
        threads ("terminate called without an active exception"), failing a finished job.
        """
        if self.world == 1:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def setup_distributed() -> Dist:
    """Ranks from torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or srun (SLURM_PROCID/NTASKS/LOCALID)."""
    import torch
    import torch.distributed as dist

    world = env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    rank = env_int("RANK", "SLURM_PROCID", default=0)
    local_rank = env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    cuda = torch.cuda.is_available()
    if cuda:
        # deterministic cuBLAS needs a fixed workspace (torch.use_deterministic_algorithms raises without it)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = torch.device(f"cuda:{local_rank % max(1, torch.cuda.device_count())}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    if world > 1:
        # srun starts rank 0 on the first node, the one that launched the step.
        os.environ.setdefault("MASTER_ADDR", os.environ.get("SLURM_LAUNCH_NODE_IPADDR") or "127.0.0.1")
        job = env_int("SLURM_JOB_ID", default=0)
        os.environ.setdefault("MASTER_PORT", str(rendezvous_port(job, restart_count())))
        from datetime import timedelta

        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(minutes=5))
    return Dist(rank=rank, world=world, local_rank=local_rank, node=node, backend=backend, device=device)


def teardown() -> None:
    """Destroy a process group still standing (an exception path)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
