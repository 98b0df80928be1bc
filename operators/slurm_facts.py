"""Gathering the facts :func:`aifactory.hpc.slurm.decide_prior_job` decides on, over one SSH hook.

Each answer Slurm could not give becomes a ``NO_ANSWER`` fact, never an exception and never "not
found": the decision refuses to submit when Slurm cannot say whether a job of this task exists.
The completion marker is read through :func:`aifactory.models.contract.parse_marker`.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from aifactory.errors import FactoryError
from aifactory.hpc.slurm import (
    classify,
    parse_sacct,
    parse_squeue,
    sacct_by_name_command,
    sacct_command,
    select_record,
    squeue_by_name_command,
)
from aifactory.hpc.slurm.budget import (
    BudgetUnknown,
    BudgetVerdict,
    budget_command,
    decide_budget,
    parse_assoc_mgr,
)
from aifactory.hpc.slurm.decision import MarkerFact, PriorJobFacts, SacctFact, SqueueFact
from aifactory.hpc.slurm.plan import JobPlan
from aifactory.models.contract import MARKER_MAX_BYTES, CompletionMarker, parse_marker

__all__ = ["check_budget", "gather_facts", "marker_outputs", "read_marker"]

log = logging.getLogger(__name__)


def marker_outputs(marker: CompletionMarker) -> dict[str, Any]:
    """``{path: {sha256, bytes}}`` of the marker's declared files, for the train task's XCom."""
    return {f.path: {"sha256": f.sha256, "bytes": f.bytes} for f in marker.files}


def read_marker(hook: Any, plan: JobPlan) -> tuple[MarkerFact, CompletionMarker | None, str]:
    """``(fact, parsed marker or None, why it is unreadable)`` of the plan's completion marker."""
    try:
        with hook.sftp() as sftp:
            try:
                with sftp.open(plan.marker_path, "r") as fh:
                    raw = fh.read(MARKER_MAX_BYTES + 1)
            except FileNotFoundError:
                return MarkerFact.ABSENT, None, ""
    except Exception as exc:  # SFTP trouble: the marker may exist
        return MarkerFact.UNREADABLE, None, f"{type(exc).__name__}: {exc}"
    if len(raw) > MARKER_MAX_BYTES:
        return MarkerFact.UNREADABLE, None, f"larger than {MARKER_MAX_BYTES} bytes"
    try:
        return MarkerFact.PRESENT, parse_marker(raw, output_dir=plan.output_dir), ""
    except FactoryError as exc:
        return MarkerFact.UNREADABLE, None, str(exc)


def _run(hook: Any, command: str) -> tuple[int, str, str] | None:
    try:
        return hook.run(command, timeout=60)
    except Exception as exc:  # SSH dropped: Slurm did not answer
        log.warning("could not ask Slurm (%s: %s)", type(exc).__name__, exc)
        return None


def _file_sha256(hook: Any, path: str) -> str | None:
    try:
        with hook.sftp() as sftp, sftp.open(path, "r") as fh:
            return hashlib.sha256(fh.read(MARKER_MAX_BYTES)).hexdigest()
    except Exception:
        return None


def gather_facts(hook: Any, plan: JobPlan, saved_job_id: str | None, sacct_lookback: str) -> PriorJobFacts:
    """Ask squeue and sacct about this task's job name (and the saved id), and read the marker."""
    name = plan.job_name
    squeue, active_id, active_digest, finished_in_squeue = SqueueFact.NO_ANSWER, None, None, []
    answer = _run(hook, squeue_by_name_command([name]))
    if answer is not None:
        rc, out, err = answer
        records = [r for r in parse_squeue(out) if r.name == name]
        active = [r for r in records if classify(r.state) == "active"]
        if active:
            squeue = SqueueFact.ACTIVE
            active_id = max(active, key=lambda r: int(r.job_id.split("_")[0])).job_id
            # The active job runs with the params.json of its run directory (uploaded before sbatch).
            active_digest = _file_sha256(hook, plan.params_path)
        elif rc == 0:
            squeue = SqueueFact.NOT_LISTED
            finished_in_squeue = [r.job_id for r in records]
        else:
            log.warning("squeue --name failed (rc=%s): %s", rc, err.strip()[:300])

    sacct, finished_id, finished_state = SacctFact.NO_ANSWER, None, ""
    commands = [sacct_by_name_command([name], sacct_lookback)]
    if saved_job_id:
        commands.append(sacct_command([saved_job_id]))  # by id: no start-time window
    answers = [_run(hook, c) for c in commands]
    if all(a is not None and a[0] == 0 for a in answers):
        record = select_record([r for a in answers for r in parse_sacct(a[1])], name=name)
        if record is None and finished_in_squeue:
            # squeue still shows a finished job that sacct has not recorded yet (it lags the controller)
            sacct, finished_id, finished_state = SacctFact.UNSETTLED, finished_in_squeue[-1], "not yet recorded"
        elif record is None:
            sacct = SacctFact.NOT_FOUND
        else:
            outcome = classify(record.state)
            finished_id, finished_state = record.job_id, record.raw_state or str(record.state)
            sacct = {"succeeded": SacctFact.COMPLETED, "failed": SacctFact.ENDED}.get(outcome, SacctFact.UNSETTLED)
    else:
        for a in answers:
            if a is not None and a[0] != 0:
                log.warning("sacct failed (rc=%s): %s", a[0], a[2].strip()[:300])

    marker, parsed, why = read_marker(hook, plan)
    if why:
        log.warning("completion marker %s is unreadable: %s", plan.marker_path, why)
    digest = parsed.params_sha256 if parsed is not None else None
    return PriorJobFacts(
        saved_job_id=saved_job_id,
        squeue=squeue,
        active_job_id=active_id,
        active_params_sha256=active_digest,
        sacct=sacct,
        finished_job_id=finished_id,
        finished_state=finished_state,
        marker=marker,
        marker_params_sha256=digest,
        params_sha256=plan.params_sha256,
    )


def check_budget(hook: Any, plan: JobPlan, contact: str) -> BudgetVerdict:
    """Ask Slurm (as the tenant's identity: the plan's connection) what the account may still use,
    and decide whether this job fits; Slurm not answering is a refusal (see decide_budget)."""
    account = str(plan.resources["account"])
    answer = _run(hook, budget_command(account))
    budget, why = None, "no answer over SSH"
    if answer is not None:
        rc, out, err = answer
        why = f"scontrol exited {rc}: {err.strip()[:300]}"
        if rc == 0:
            try:
                budget = parse_assoc_mgr(out, account)
            except BudgetUnknown as exc:
                why = str(exc)
    return decide_budget(budget, plan.resources, account=account, contact=contact, why_unknown=why)
