"""Summaries, verdicts and stored results of the gate: counts only, never data values.

The full report of one judgement is stored at
``aifactory.layout.quality_result_key(dataset_prefix, suite, params_digest)``, beside the dataset
version and never inside it: the version's ``manifest.json`` is written once by ingest and never
rewritten, so two runs that judge the same version with different suite parameters (another label
column) each keep their own verdict.
"""

from __future__ import annotations

import json
from typing import Any

from aifactory.data.quality.results import Totals
from aifactory.data.quality.suites import COLUMN_KWARGS, describe
from aifactory.text import printable, shown


def compact_summary(summary: dict[str, Any]) -> str:
    """A few lines for the task log: verdict, then per expectation type passed/failed and
    unexpected counts, then each failure. Counts only, never values."""
    verdict = "PASSED" if summary.get("success") else "FAILED"
    ds = summary.get("dataset", {})
    lines = [
        f"quality: {verdict} {printable(ds.get('name'))}/{printable(ds.get('version'))} suite {printable(summary.get('suite'))}: "
        f"{summary.get('successful_expectations', 0)}/{summary.get('evaluated_expectations', 0)} expectations "
        f"passed, {summary.get('rows', 0)} rows, {summary.get('shards', 0)} shard(s)"
        + (f", {summary['seconds']:.1f}s" if "seconds" in summary else "")
    ]
    by_type: dict[str, list[int]] = {}
    for e in summary.get("expectations", []):
        t = by_type.setdefault(e["type"], [0, 0, 0])
        t[0 if e.get("success") else 1] += 1
        t[2] += int(e.get("unexpected_count") or 0)
    for typ, (ok, bad, unexpected) in by_type.items():
        lines.append(f"quality:   {typ}: {ok} passed, {bad} failed, {unexpected} unexpected value(s)")
    for line in format_summary(summary).splitlines()[1:]:
        if line.startswith("  - "):
            lines.append("quality:   FAILED " + line[4:])
    return "\n".join(lines)


def build_summary(
    base: dict[str, Any], aggs: list[Totals], *, rows: int, shards: int, problems: list[str]
) -> dict[str, Any]:
    exps = [a.to_dict() for a in aggs]
    ok = sum(1 for e in exps if e["success"])
    return {
        **base,
        "success": bool(exps) and ok == len(exps) and not problems,
        "rows": rows,
        "shards": shards,
        "evaluated_expectations": len(exps),
        "successful_expectations": ok,
        "failed_expectations": len(exps) - ok,
        "problems": list(problems),
        "expectations": exps,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A readable, multi-line account of a gate result (no data values) for task logs."""
    ds = summary.get("dataset", {})
    name = printable(f"{ds.get('tenant')}/{ds.get('name')}/{ds.get('version')}")
    verdict = "PASSED" if summary.get("success") else "FAILED"
    lines = [
        f"Quality gate {verdict} for {name} (suite {printable(summary.get('suite'))}): "
        f"{summary.get('failed_expectations', 0)} of {summary.get('evaluated_expectations', 0)} "
        f"expectations failed; {summary.get('rows', 0)} rows in {summary.get('shards', 0)} shard(s)"
    ]
    for problem in summary.get("problems", []):
        lines.append(f"  - {problem}")
    for exp in summary.get("expectations", []):
        if exp.get("success"):
            continue
        head = describe(exp)
        if exp.get("missing_columns"):
            cols = ", ".join(shown(c) for c in exp["missing_columns"])
            lines.append(f"  - {head}: column {cols} is missing from the dataset")
        elif exp.get("error"):
            lines.append(f"  - {head}: ERROR while evaluating (not a data finding): {exp['error']}")
        elif "unexpected_count" in exp:
            lines.append(
                f"  - {head}: {exp['unexpected_count']} unexpected of {exp['element_count']} values "
                f"({exp['unexpected_percent']:.2f}%)"
            )
        elif "observed_value" in exp:
            lines.append(f"  - {head}: observed {printable(repr(exp['observed_value']))}, expected {_expected(exp)}")
        else:
            lines.append(f"  - {head}: failed" + (f" ({exp['judged_on']})" if exp.get("judged_on") else ""))
    if not summary.get("success"):
        lines.append("Fix the dataset (or the run's label/feature columns) and run again.")
    return "\n".join(lines)


def _expected(exp: dict[str, Any]) -> str:
    parts = []
    for k, v in exp.get("kwargs", {}).items():
        if k in COLUMN_KWARGS:
            continue
        if isinstance(v, list) and len(v) > 6:
            v = [*v[:6], f"... {len(v) - 6} more"]
        parts.append(f"{k}={v!r}")
    return printable(", ".join(parts), max_chars=400) or "(see suite)"




def report_bytes(summary: dict[str, Any]) -> bytes:
    """The stored report: the whole (value-free) summary as stable JSON."""
    return json.dumps(summary, indent=2, sort_keys=True, default=str).encode("utf-8") + b"\n"


def quality_verdict(summary: dict[str, Any], *, report_key: str, report_sha256: str) -> dict[str, Any]:
    """The quality task's XCom: the verdict, what it was judged with and where its report is.
    Export's model card reads it from there (nothing is recorded in the dataset's manifest)."""
    return {
        "verdict": "passed" if summary.get("success") else "failed",
        "suite": summary.get("suite"),
        "suite_sha256": summary.get("suite_sha256"),
        "params_digest": summary.get("params_digest"),
        "expectations": summary.get("evaluated_expectations"),
        "failed": summary.get("failed_expectations"),
        "rows": summary.get("rows"),
        "shards": summary.get("shards"),
        "report_key": report_key,
        "report_sha256": report_sha256,
    }


def write_quality_result(s3: Any, *, bucket: str, dataset_prefix: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Store ``summary`` at ``quality_result_key(dataset_prefix, suite, params_digest)``; return the verdict.

    Call it with a passing summary or with ``QualityGateFailed.summary``. The key is the suite and the
    digest of the parameters it used, so a run with another label column never lands on this one;
    a later run with the same suite and parameters on the same version replaces the report with its
    own (the same data judged the same way). The dataset's ``manifest.json`` is not touched.
    """
    from aifactory.data.manifest import sha256_bytes
    from aifactory.data.s3 import put_bytes
    from aifactory.layout import quality_result_key

    prefix = dataset_prefix if dataset_prefix.endswith("/") else dataset_prefix + "/"
    key = quality_result_key(prefix, str(summary["suite"]), str(summary["params_digest"]))
    body = report_bytes(summary)
    put_bytes(s3, bucket, key, body, content_type="application/json")
    return quality_verdict(summary, report_key=key, report_sha256=sha256_bytes(body))
