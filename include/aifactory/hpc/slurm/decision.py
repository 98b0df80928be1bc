"""What to do about the job an earlier try of this task may have left: one pure function, one table.

A task instance has one deterministic job name (:func:`~aifactory.hpc.slurm.identity.job_name`),
so before submitting, the operator gathers what is known about a job under that name and
:func:`decide_prior_job` decides. The rules, in the order they apply:

===================================  ============  ====================================================
squeue / sacct / completion marker   decision      why
===================================  ============  ====================================================
squeue cannot answer                 REFUSE        a job may be running: never submit blind
active job, params.json of this run  REATTACH      it is this task's job; a second would duplicate it
active job, other or unreadable      REFUSE        a reused run id while the old job still runs:
params.json                                        cancel it (``scancel``) or wait for it to end
sacct cannot answer                  REFUSE        cannot tell whether the job finished
sacct's latest record is not final   REFUSE        squeue and sacct disagree; ask again later
marker unreadable                    REFUSE        cannot tell whose outputs are in the run directory
COMPLETED, marker of these params    ADOPT         the work is done, with exactly these parameters
COMPLETED, marker of other params    SUBMIT        a reused run id with new hyperparameters
COMPLETED, no marker                 SUBMIT        the job did not finish writing its outputs
ended without success                SUBMIT        the earlier job failed, timed out, was cancelled...
no record anywhere                   SUBMIT        never submitted, or gone from Slurm's memory
===================================  ============  ====================================================

Whenever the decision is SUBMIT and a completion marker exists, the old outputs must be moved
aside first (:attr:`Decision.move_outputs_aside`): the new job's export must never see the old
marker. The saved job id (the task state store) changes no decision; it only tells which job the
task itself submitted, and the reason names it. ``docs/failure-modes.md`` (section 1) describes
the failure this answers: a worker that dies between ``sbatch`` and saving the job id.

No I/O here; :mod:`operators.slurm` gathers the facts and acts on the decision.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Action", "Decision", "MarkerFact", "PriorJobFacts", "SacctFact", "SqueueFact", "decide_prior_job"]


class Action(enum.StrEnum):
    SUBMIT = "submit"
    REATTACH = "reattach"
    ADOPT = "adopt"
    REFUSE = "refuse"


class SqueueFact(enum.StrEnum):
    """What ``squeue --name`` said about jobs of this name."""

    ACTIVE = "active"  #: a job of this name is pending, running, completing, requeued...
    NOT_LISTED = "not listed"  #: squeue answered and lists no active job of this name
    NO_ANSWER = "no answer"  #: squeue failed (controller down, SSH dropped)


class SacctFact(enum.StrEnum):
    """What ``sacct`` said about the latest job of this name (or of the saved id)."""

    COMPLETED = "completed"  #: final, COMPLETED
    ENDED = "ended"  #: final without success (FAILED, TIMEOUT, CANCELLED, OUT_OF_MEMORY...)
    UNSETTLED = "unsettled"  #: a record that is not final (or in a state we do not know)
    NOT_FOUND = "not found"  #: sacct answered and has no record
    NO_ANSWER = "no answer"  #: sacct failed (slurmdbd down, SSH dropped)


class MarkerFact(enum.StrEnum):
    """The completion marker in the run's output directory."""

    PRESENT = "present"  #: read and parsed; :attr:`PriorJobFacts.marker_params_sha256` says whose
    ABSENT = "absent"
    UNREADABLE = "unreadable"  #: exists but could not be read or did not parse


@dataclass(frozen=True, kw_only=True)
class PriorJobFacts:
    """Everything :func:`decide_prior_job` looks at. Gathered by the operator, in one place.

    :param saved_job_id: the job id this task saved right after ``sbatch`` (None if none).
    :param squeue: squeue's answer; ``active_job_id`` is the active job's id when ACTIVE, and
        ``active_params_sha256`` the digest of the ``params.json`` in its run directory (None when
        it could not be read): the active job runs with the parameters it was submitted with.
    :param sacct: sacct's answer; ``finished_job_id``/``finished_state`` describe its record.
    :param marker: the completion marker; ``marker_params_sha256`` is the digest it records.
    :param params_sha256: the digest of this run's ``params.json`` bytes.
    """

    saved_job_id: str | None
    squeue: SqueueFact
    sacct: SacctFact
    marker: MarkerFact
    params_sha256: str
    active_job_id: str | None = None
    active_params_sha256: str | None = None
    finished_job_id: str | None = None
    finished_state: str = ""
    marker_params_sha256: str | None = None


@dataclass(frozen=True)
class Decision:
    """The action, the job it concerns (REATTACH/ADOPT), and a reason a person can read."""

    action: Action
    reason: str
    job_id: str | None = None
    #: SUBMIT only: an earlier job's marker is in the output directory and must be moved away first
    move_outputs_aside: bool = False


def decide_prior_job(facts: PriorJobFacts) -> Decision:
    """Decide what to do about an earlier try's job (see the module's table)."""
    saved = f" (this task saved job {facts.saved_job_id})" if facts.saved_job_id else ""
    if facts.squeue is SqueueFact.NO_ANSWER:
        return Decision(Action.REFUSE, f"squeue did not answer{saved}: a job of this task may be running, "
                        "so none is submitted. Retry when Slurm answers")
    if facts.squeue is SqueueFact.ACTIVE:
        if facts.active_params_sha256 == facts.params_sha256:
            return Decision(Action.REATTACH, f"job {facts.active_job_id} of this task is still active{saved}",
                            job_id=facts.active_job_id)
        known = "other parameters" if facts.active_params_sha256 else "parameters that could not be read"
        return Decision(Action.REFUSE, f"job {facts.active_job_id} of this task's name is still active with "
                        f"{known}{saved} (a reused run id?): it is neither watched nor duplicated. Cancel it "
                        f"(scancel {facts.active_job_id}) or wait for it to end, then clear the task")
    if facts.sacct is SacctFact.NO_ANSWER:
        return Decision(Action.REFUSE, f"sacct did not answer{saved}: cannot tell whether an earlier job "
                        "finished. Retry when slurmdbd answers")
    if facts.sacct is SacctFact.UNSETTLED:
        return Decision(Action.REFUSE, f"sacct shows job {facts.finished_job_id} as {facts.finished_state!r} "
                        f"while squeue lists no active job{saved}. Retry in a minute")
    if facts.marker is MarkerFact.UNREADABLE:
        return Decision(Action.REFUSE, f"the completion marker in the run directory could not be read{saved}: "
                        "cannot tell whose outputs it holds. Check the run directory (or move it away) and "
                        "clear the task")
    marker_present = facts.marker is MarkerFact.PRESENT
    if facts.sacct is SacctFact.COMPLETED:
        if marker_present and facts.marker_params_sha256 == facts.params_sha256:
            return Decision(Action.ADOPT, f"job {facts.finished_job_id} COMPLETED with these parameters{saved}",
                            job_id=facts.finished_job_id)
        if marker_present:
            return Decision(Action.SUBMIT, f"job {facts.finished_job_id} COMPLETED with other parameters "
                            f"(a reused run id){saved}: its outputs are moved aside and a new job is "
                            "submitted", move_outputs_aside=True)
        return Decision(Action.SUBMIT, f"job {facts.finished_job_id} COMPLETED but wrote no completion "
                        f"marker{saved}: submitting again")
    if facts.sacct is SacctFact.ENDED:
        return Decision(Action.SUBMIT, f"job {facts.finished_job_id} ended {facts.finished_state}{saved}: "
                        "submitting again", move_outputs_aside=marker_present)
    # NOT_FOUND: never submitted, or older than Slurm remembers.
    gone = f"job {facts.saved_job_id} is known to neither squeue nor sacct" if facts.saved_job_id else (
        "no job of this task is known to squeue or sacct")
    return Decision(Action.SUBMIT, f"{gone}: submitting", move_outputs_aside=marker_present)
