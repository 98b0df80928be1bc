"""The earlier-job decision as a table: every combination of the facts, one expected decision each.

The expected table below is written out by hand, as a decision table with "any" cells; its rows do
not overlap, and every combination of saved id x squeue x the active job's params.json x sacct x
marker (whose params digest is this run's or another's) must match exactly one row.
"""

from __future__ import annotations

import itertools

import pytest

from aifactory.hpc.slurm.decision import (
    Action,
    MarkerFact,
    PriorJobFacts,
    SacctFact,
    SqueueFact,
    decide_prior_job,
)

THIS = "a" * 64
OTHER = "b" * 64
ANY = None

SAVED_IDS = (None, "101")
SQUEUE = ("active", "not listed", "no answer")
ACTIVE_PARAMS = ("this", "other", "unreadable")  # the active job's params.json (only read when active)
SACCT = ("completed", "ended", "unsettled", "not found", "no answer")
MARKER = ("this digest", "other digest", "absent", "unreadable")

REFUSE, REATTACH, ADOPT = Action.REFUSE, Action.REATTACH, Action.ADOPT
SUBMIT, SUBMIT_ASIDE = "submit", "submit, old outputs moved aside"

FINAL = {"completed", "ended", "not found"}
MARKER_PRESENT = {"this digest", "other digest"}

#: (squeue, active job's params.json, sacct, marker) -> decision; a set or ANY matches several values.
TABLE: list[tuple[object, object, object, object, object]] = [
    # Slurm cannot answer: never submit.
    ("no answer", ANY, ANY, ANY, REFUSE),
    # An active job of this name: re-attach only when it runs this run's params.json.
    ("active", "this", ANY, ANY, REATTACH),
    ("active", "other", ANY, ANY, REFUSE),  # reused run id while the old job still runs
    ("active", "unreadable", ANY, ANY, REFUSE),
    # Nothing active: sacct decides, the marker says whose outputs are there.
    ("not listed", ANY, "no answer", ANY, REFUSE),
    ("not listed", ANY, "unsettled", ANY, REFUSE),
    ("not listed", ANY, FINAL, "unreadable", REFUSE),
    ("not listed", ANY, "completed", "this digest", ADOPT),
    ("not listed", ANY, "completed", "other digest", SUBMIT_ASIDE),  # reused run id, new hyperparameters
    ("not listed", ANY, "completed", "absent", SUBMIT),
    ("not listed", ANY, {"ended", "not found"}, MARKER_PRESENT, SUBMIT_ASIDE),
    ("not listed", ANY, {"ended", "not found"}, "absent", SUBMIT),
]


def _cell_matches(cell: object, value: str) -> bool:
    return cell is ANY or (value in cell if isinstance(cell, set) else value == cell)


def _expected(squeue: str, active: str, sacct: str, marker: str) -> object:
    rows = [row for row in TABLE if all(map(_cell_matches, row[:4], (squeue, active, sacct, marker)))]
    assert len(rows) == 1, f"the table must have exactly one row for {(squeue, active, sacct, marker)}: {rows}"
    return rows[0][4]


def _facts(saved: str | None, squeue: str, active: str, sacct: str, marker: str) -> PriorJobFacts:
    return PriorJobFacts(
        saved_job_id=saved,
        squeue=SqueueFact(squeue),
        active_job_id="102" if squeue == "active" else None,
        active_params_sha256={"this": THIS, "other": OTHER, "unreadable": None}[active],
        sacct={"completed": SacctFact.COMPLETED, "ended": SacctFact.ENDED, "unsettled": SacctFact.UNSETTLED,
               "not found": SacctFact.NOT_FOUND, "no answer": SacctFact.NO_ANSWER}[sacct],
        finished_job_id="101" if sacct in ("completed", "ended", "unsettled") else None,
        finished_state={"completed": "COMPLETED", "ended": "TIMEOUT", "unsettled": "RUNNING"}.get(sacct, ""),
        marker={"this digest": MarkerFact.PRESENT, "other digest": MarkerFact.PRESENT,
                "absent": MarkerFact.ABSENT, "unreadable": MarkerFact.UNREADABLE}[marker],
        marker_params_sha256={"this digest": THIS, "other digest": OTHER}.get(marker),
        params_sha256=THIS,
    )


COMBINATIONS = list(itertools.product(SAVED_IDS, SQUEUE, ACTIVE_PARAMS, SACCT, MARKER))


def test_every_combination_is_covered():
    assert len(COMBINATIONS) == 2 * 3 * 3 * 5 * 4
    seen = {_expected(*combo[1:]) for combo in COMBINATIONS}
    assert seen == {REFUSE, REATTACH, ADOPT, SUBMIT, SUBMIT_ASIDE}


@pytest.mark.parametrize(("saved", "squeue", "active", "sacct", "marker"), COMBINATIONS)
def test_decision_table(saved, squeue, active, sacct, marker):
    decision = decide_prior_job(_facts(saved, squeue, active, sacct, marker))
    expected = _expected(squeue, active, sacct, marker)
    if expected in (SUBMIT, SUBMIT_ASIDE):
        assert decision.action is Action.SUBMIT
        assert decision.move_outputs_aside is (expected == SUBMIT_ASIDE)
    else:
        assert decision.action is expected
        assert not decision.move_outputs_aside
    assert decision.job_id == {REATTACH: "102", ADOPT: "101"}.get(decision.action)
    assert decision.reason
    if saved:
        assert f"job {saved}" in decision.reason  # the reason names the job this task saved


def test_slurm_cannot_answer_refuses_even_with_a_saved_finished_job():
    facts = _facts("101", "not listed", "this", "no answer", "absent")
    decision = decide_prior_job(facts)
    assert decision.action is Action.REFUSE and "sacct did not answer" in decision.reason
    assert decide_prior_job(_facts(None, "no answer", "this", "not found", "absent")).action is Action.REFUSE


def test_reused_run_id_with_new_hyperparameters_submits_anew():
    """A deleted run triggered again under the same run id: the old COMPLETED job is not adopted."""
    decision = decide_prior_job(_facts(None, "not listed", "this", "completed", "other digest"))
    assert decision.action is Action.SUBMIT and decision.move_outputs_aside
    assert "other parameters" in decision.reason
    same = decide_prior_job(_facts(None, "not listed", "this", "completed", "this digest"))
    assert same.action is Action.ADOPT and same.job_id == "101"
