"""Quality gate: validate a published dataset version with Great Expectations before training.

Suite format
============

A suite is a JSON file ``include/expectations/<name>.json`` in Great Expectations' own
ExpectationSuite shape, plus parameter templating::

    {
      "name": "tabular_default",
      "meta": {"description": "..."},
      "expectations": [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 10}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "{label_column}"}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "{feature_columns}"}}
      ]
    }

* ``type`` is any GX 1.x expectation type (snake case); ``kwargs`` are that expectation's
  arguments; ``meta`` (optional) is copied through. Unknown types or arguments are refused when
  the suite is built, naming the entry.
* **Templating.** A string that is exactly ``"{name}"`` (anywhere in ``kwargs``, including inside
  lists) is replaced by ``params[name]`` (the run's hyperparameters). Inside a list, a list value is
  spliced in, so ``"column_list": ["{label_column}", "{feature_columns}"]`` works.
* **Expansion.** When ``kwargs.column`` resolves to a list, the entry expands into one
  expectation per element: ``"column": "{feature_columns}"`` checks every feature column.
* A parameter the suite needs but the run does not have is an :class:`InputError` naming it.
  Nothing else is interpreted: no format strings, no expressions.

How a dataset is judged (:mod:`.gate`)
======================================

* Shards are downloaded to a scratch folder (one streaming GET each, the next while the current
  one is validated), checked against the manifest's sha256, and read a few row groups at a time,
  only the columns the suite reads; GX runs in an **ephemeral** context (file contexts break under parallel runs;
  ``docs/failure-modes.md``, section 15).
* **Per-row expectations** (nulls, sets, ranges, regexes, types...) run on batches of
  :data:`~.gate.BATCH_ROWS` rows converted to pandas; they pass only if every batch passes, and
  unexpected and element counts are summed: per-row verdicts add up exactly.
* **Column aggregates** (mean, standard deviation, median, quantiles, min, max, sum, distinct
  values and their count, unique and non-null proportions, most common value) are judged on the
  WHOLE dataset: their metrics are computed exactly while the shards stream past, with memory
  bounded by a shard (:mod:`.aggregates`), and GX judges them (:func:`.gx.judge_on_metrics`).
  Aggregates whose metrics are not computed here (distribution tests, z-scores, orderings:
  :data:`.aggregates.WHOLE_COLUMN_ONLY`) are judged on a one-shard dataset and fail the gate,
  naming them, on a sharded one - never judged shard by shard.
* **Uniqueness** (``expect_column_values_to_be_unique``, ``expect_compound_columns_to_be_unique``)
  is dataset-wide: hash-partitioned spills checked bucket by bucket (:mod:`.unique`).
* Row counts run once on the total; schema expectations (``expect_column_to_exist``,
  ``expect_table_columns_*``, column counts) once on a zero-row frame with every column and dtype.
* Suites are chosen per dataset or per tenant: ``quality_suites: {<dataset>: <suite>}`` in the
  tenant spec, else its ``quality_suite``. The full result is stored per suite and per digest of
  the suite's parameters (:func:`.report.write_quality_result`, at
  ``aifactory.layout.quality_result_key``); the dataset's ``manifest.json`` is never rewritten.
  The log gets a compact summary (:func:`.report.compact_summary`), column names escaped.
* The gate also fails, saying which, when: the dataset has zero rows, the suite has no
  expectations after expansion, a column an expectation names is missing, an expectation raised
  an exception (which GX would otherwise report like a data failure), GX returned fewer results
  than expectations it was given, or the shards' rows disagree with the manifest.
* Results are reduced to counts: ``partial_unexpected_count`` is 0 and no sample values, indexes
  or observed values of data-dependent aggregates leave this package (they end up in logs and XCom).
"""

from __future__ import annotations

from aifactory.data.quality.gate import BATCH_ROWS, LOAD_AHEAD, validate_dataset
from aifactory.data.quality.gx import (
    GX_DEFERRED_IMPORTS,
    _ephemeral_context,
    _first_gx_import,
    _import_gx,
    build_gx_suite,
    judge_on_metrics,
    run_gx,
)
from aifactory.data.quality.report import (
    compact_summary,
    format_summary,
    quality_verdict,
    report_bytes,
    write_quality_result,
)
from aifactory.data.quality.suites import (
    DATASET_WIDE,
    SCHEMA_ONLY,
    describe,
    expand_suite,
    load_suite,
    suite_parameters,
    suite_params_digest,
    suite_path,
)
from aifactory.data.quality.unique import UNIQUE_BUCKET_ROWS

_run_gx = run_gx  # the name the probes in tests/unit/test_quality.py use

__all__ = [
    "BATCH_ROWS", "DATASET_WIDE", "GX_DEFERRED_IMPORTS", "LOAD_AHEAD", "SCHEMA_ONLY", "UNIQUE_BUCKET_ROWS",
    "build_gx_suite", "compact_summary", "describe", "expand_suite", "format_summary", "judge_on_metrics",
    "load_suite", "quality_verdict", "report_bytes", "run_gx", "suite_parameters", "suite_params_digest",
    "suite_path", "validate_dataset", "write_quality_result", "_ephemeral_context", "_first_gx_import",
    "_import_gx",
]
