"""The training loop every classifier recipe runs: resumable, data parallel, stopped at the same step by every rank.

A recipe builds its model, optimiser and batches; :func:`fit` does the rest the same way for all:

* **Resume.** The latest checkpoint is loaded when it was made with the same hyperparameters
  (``digest``) and the same number of ranks; finished steps are skipped (their batches are read,
  not trained again), so every step number appears once in the log (``step=<n>/<total>`` lines).
* **Distributed data parallel.** A global step is ``batch_size * world`` rows; rank ``r`` trains
  on rows ``r::world`` of it, and ``DistributedDataParallel`` averages the gradients.
* **Randomness by step.** Before each step the torch generator is seeded from ``(seed, step,
  rank)``, so dropout draws the same masks whether or not the job was stopped and resumed.
* **Checkpoints** when due (``Job.checkpoint``), and a final one, so a restart does not train again.
* **Stop.** On SIGTERM or SIGUSR1 every rank stops after the same step; rank 0 checkpoints and the
  job requeues itself (``Job.stop_and_requeue``); :attr:`Fit.exit_code` is then the job's status.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aifp_runtime.distributed import Dist
from aifp_runtime.job import BadInput, Job, log


@dataclass(frozen=True)
class Fit:
    """What :func:`fit` did: the last step, the last finished epoch's mean loss, and an exit status.

    ``exit_code`` is None when training finished (every rank has left the process group); else the
    job was stopped and the recipe returns it at once.
    """

    step: int
    loss: float
    exit_code: int | None = None

    @property
    def loss_or_none(self) -> float | None:
        return self.loss if math.isfinite(self.loss) else None  # no epoch ran after a resume


def seed_torch(seed: int) -> int:
    """Threads from ``SLURM_CPUS_PER_TASK``, seeded generators, deterministic algorithms; returns the threads."""
    import numpy as np
    import torch

    threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "1") or 1)
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(int(seed))
    np.random.seed(int(seed) % (1 << 32))
    torch.use_deterministic_algorithms(True)
    return threads


def hp_digest(hp: Mapping[str, Any], keys: Iterable[str]) -> str:
    """Identity of what is trained (the hyperparameters ``keys``): a checkpoint of others is never resumed."""
    keep = {k: hp[k] for k in keys}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _step_seed(seed: int, step: int, rank: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(step), int(rank)]).generate_state(1, dtype=np.uint64)[0])


def fit(job: Job, dist: Dist, model: Any, optimiser: Any, *, batches: Callable[[int], Iterable[tuple[Any, Any]]],
        per_epoch: int, epochs: int, digest: str, seed: int, log_every: int, loss_fn: Any = None) -> Fit:
    """Train ``model`` (on ``dist.device``) for ``epochs`` epochs of ``per_epoch`` global steps.

    :param batches: ``batches(epoch)`` yields the epoch's global batches ``(x, y)`` as numpy
        arrays, the same on every rank (rank ``r`` trains on rows ``r::world``).
    :param digest: the hyperparameters' identity (:func:`hp_digest`, plus anything else the
        model depends on, e.g. its vocabulary); a checkpoint of another digest is not resumed.
    :param loss_fn: default ``torch.nn.CrossEntropyLoss()``.
    """
    import torch

    world, rank = dist.world, dist.rank
    total_steps = per_epoch * epochs
    step = 0
    state = job.checkpoints.load()
    if state is not None and (state.get("hp_digest") != digest or state.get("world") != world):
        if dist.main:
            log(f"resume: ignoring checkpoint at step {state.get('step')}: it was made with other hyperparameters "
                "or another number of ranks; starting from step 0")
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step = int(state["step"])
        if dist.main:
            log(f"resume: from checkpoint step={step} (epoch {step // per_epoch + 1}); "
                f"steps 1..{step} are not trained again")
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    loss_fn = loss_fn if loss_fn is not None else torch.nn.CrossEntropyLoss()

    def checkpoint_state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "hp_digest": digest,
                "world": world, "saved_at": time.time()}

    epoch_loss = float("nan")
    for epoch in range(step // per_epoch + 1, epochs + 1):
        ddp.train()
        done_in_epoch = step - (epoch - 1) * per_epoch
        total, seen = 0.0, 0
        for i, (xb, yb) in enumerate(batches(epoch)):
            if i < done_in_epoch:
                continue  # finished before a restart: its data is read, not trained again
            if job.stop_agreed(dist):  # every rank stops at the same step
                break
            x = torch.from_numpy(xb[rank::world]).to(dist.device)
            y = torch.from_numpy(yb[rank::world]).to(dist.device)
            torch.manual_seed(_step_seed(seed, step, rank))
            optimiser.zero_grad()
            loss = loss_fn(ddp(x), y)
            loss.backward()
            optimiser.step()
            step += 1
            total += loss.item() * len(y)
            seen += len(y)
            if dist.main and (step % log_every == 0 or step == total_steps):
                log(f"step={step}/{total_steps} epoch={epoch}/{epochs} loss={loss.item():.4f}")
            job.test_step_pause()
            job.checkpoint(step, checkpoint_state)
        if job.stopped:
            break
        if seen:
            epoch_loss = total / seen
            if dist.main:
                log(f"epoch={epoch}/{epochs} step={step} loss={epoch_loss:.4f}")

    if job.stopped or (job.stop.signal and step < total_steps):
        return Fit(step, epoch_loss, job.stop_and_requeue(step, checkpoint_state))
    if job.checkpoints.unsaved(step):
        job.checkpoint(step, checkpoint_state, reason="final", force=True)  # a restart below does not train again
    if world > 1:
        del ddp
    dist.leave()
    return Fit(step, epoch_loss)


@dataclass(frozen=True)
class Evaluation:
    """A classifier's accuracy and mean loss on the held-out rows, and its accuracy on the training rows."""

    test_accuracy: float
    test_loss: float
    train_accuracy: float | None


def evaluate(test_model: Any, test_batches: Iterable[tuple[Any, Any]], train_model: Any,
             train_batches: Iterable[tuple[Any, Any]]) -> Evaluation:
    """Evaluate on CPU, without gradients: ``test_model`` on the held-out batches (what is exported:
    raw inputs), ``train_model`` on the training batches (as they were trained on).

    Batches are ``(inputs, int64 labels)`` as numpy arrays.
    """
    import torch

    loss_fn = torch.nn.CrossEntropyLoss()
    correct = n = 0
    loss = 0.0
    with torch.no_grad():
        for x, y in test_batches:
            logits = test_model(torch.from_numpy(x))
            yt = torch.from_numpy(y)
            correct += int((logits.argmax(1) == yt).sum())
            loss += float(loss_fn(logits, yt)) * len(y)
            n += len(y)
        right = seen = 0
        for xb, yb in train_batches:
            right += int((train_model(torch.from_numpy(xb)).argmax(1) == torch.from_numpy(yb)).sum())
            seen += len(yb)
    if n == 0:
        raise BadInput("the held-out split is empty; lower test_fraction's complement or give more rows")
    return Evaluation(test_accuracy=correct / n, test_loss=loss / n, train_accuracy=right / seen if seen else None)
