"""The gate: stream a dataset version's shards once and judge every expectation at the right scope.

* per-row (map) expectations: GX on each batch of rows (:data:`BATCH_ROWS`), counts summed;
* uniqueness: dataset-wide through hash-partitioned spills (:mod:`.unique`);
* column aggregates: exact dataset-wide metrics (:mod:`.aggregates`) judged by GX;
* row counts: once, on the total; schema expectations: once, on a zero-row frame.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aifactory.data.manifest import DatasetManifest, sha256_file
from aifactory.data.quality import gx
from aifactory.data.quality.aggregates import (
    AGGREGATE_METRICS,
    WHOLE_COLUMN_ONLY,
    ColumnAggregates,
    MetricError,
)
from aifactory.data.quality.report import build_summary, compact_summary, format_summary
from aifactory.data.quality.results import Totals, apply_results
from aifactory.data.quality.suites import (
    DATASET_WIDE,
    SCHEMA_ONLY,
    columns_of,
    describe,
    expand_suite,
    load_suite,
    referenced_columns,
    suite_parameters,
    suite_params_digest,
    unique_columns,
)
from aifactory.data.quality.unique import UNIQUE_BUCKET_ROWS, UniqueSpill
from aifactory.errors import FactoryError, QualityGateFailed
from aifactory.text import printable, shown

Log = Callable[[str], Any]

#: Shards downloaded ahead of the one being validated (to the scratch folder, not into memory).
LOAD_AHEAD = 1
#: Rows read, converted to pandas and given to GX at a time (whole row groups): with GX's own
#: ~200 MiB this bounds the gate's memory (bench/quality.py: ~460 MiB peak on 5M rows); larger
#: batches save little time (GX's cost per call is small next to its cost per row).
BATCH_ROWS = 256 * 1024


def validate_dataset(
    s3: Any,
    *,
    bucket: str,
    manifest: DatasetManifest,
    dataset_prefix: str,
    suite_path: Path,
    params: dict[str, Any],
    workdir: Path,
    log: Log = print,
) -> dict[str, Any]:
    """Validate a dataset version against a suite; raise if the gate fails.

    :param s3: a client from :func:`aifactory.data.s3.make_client`.
    :param bucket: the tenant's bucket.
    :param manifest: the version's manifest (lists shards, rows and sha256s).
    :param dataset_prefix: key prefix of the version (``<tenant>/datasets/<name>/<version>/``).
    :param suite_path: the suite JSON (see :mod:`aifactory.data.quality` for its format).
    :param params: the run's hyperparameters, used for templating (``label_column``, ...).
    :param workdir: local scratch; a private subfolder is created and removed afterwards.
    :param log: progress sink.
    :returns: the compact, JSON-serialisable summary (counts only, no data values), with
        ``params_digest``: where :func:`~aifactory.data.quality.report.write_quality_result` stores it.
    :raises QualityGateFailed: with a readable multi-line message and the summary attached.
    :raises InputError: the suite is malformed or needs a parameter the run lacks.
    """
    import pyarrow.parquet as pq

    started = time.monotonic()
    prefix = dataset_prefix if dataset_prefix.endswith("/") else dataset_prefix + "/"
    suite_doc = load_suite(suite_path)
    suite_name = str(suite_doc["name"])
    expanded = expand_suite(suite_doc, params)
    suite_sha = sha256_file(suite_path)
    used = suite_parameters(suite_doc, params)
    problems: list[str] = []
    totals = [Totals(e) for e in expanded]
    base = {
        "suite": suite_name,
        "suite_sha256": suite_sha,
        "suite_params": used,
        "params_digest": suite_params_digest(suite_sha, used),
        "dataset": {"tenant": manifest.tenant, "name": manifest.name, "version": manifest.version},
    }
    shards = len(manifest.files)
    if not expanded:
        problems.append(f"suite {shown(suite_name)} has no expectations; an empty suite proves nothing")
        summary = build_summary(base, totals, rows=manifest.rows, shards=shards, problems=problems)
        raise QualityGateFailed(format_summary(summary), summary)

    kinds = _classify(expanded, shards)
    whole = any(expanded[i]["type"] in WHOLE_COLUMN_ONLY for i in kinds["per_batch"])
    for i in kinds["refused"]:
        totals[i].evaluated, totals[i].success = True, False
        totals[i].error = (f"{expanded[i]['type']} needs the whole column in one batch, and this dataset has "
                           f"{shards} shards; it cannot be judged exactly here - remove it from the suite")
    needed: list[str] | None = []
    for i in kinds["per_batch"] + kinds["unique"]:
        cols = columns_of(expanded[i])
        if cols is None:
            needed = None  # a table-level expectation: load every column
            break
        needed += [c for c in cols if c not in needed]
    agg_columns: list[str] = []
    for i in kinds["aggregate"]:
        col = expanded[i]["kwargs"].get("column")
        if isinstance(col, str) and col not in agg_columns:
            agg_columns.append(col)

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"quality-{manifest.version}-", dir=workdir))
    n_buckets = max(1, -(-manifest.rows // UNIQUE_BUCKET_ROWS))
    spills: dict[int, UniqueSpill] = {}
    accs: dict[str, ColumnAggregates] = {}
    for n, col in enumerate(agg_columns):
        metrics = {m for i in kinds["aggregate"] if expanded[i]["kwargs"].get("column") == col
                   for m in AGGREGATE_METRICS[expanded[i]["type"]]}
        accs[col] = ColumnAggregates(col, metrics, scratch, n)
        for i in kinds["aggregate"]:
            if expanded[i]["kwargs"].get("column") == col:
                accs[col].register(expanded[i])
    everywhere: set[str] | None = None  # columns present in every shard
    total_rows = 0

    def load(n: int) -> Path:
        """Shard ``n`` downloaded to the scratch folder and checked against the manifest's sha256.
        Runs in the prefetch thread. On disk, not in memory: the gate then reads it a batch of rows
        at a time, so memory holds one batch, not a shard or two."""
        from aifactory.data.s3 import download_to

        entry = manifest.files[n]
        path = scratch / f"shard-{n}.parquet"
        got = download_to(s3, bucket, prefix + entry.path, path)
        if got.sha256 != entry.sha256:
            raise FactoryError(
                f"s3://{bucket}/{prefix}{entry.path} does not match its manifest sha256; the "
                "dataset version is corrupt. Ask the platform team to delete "
                f"s3://{bucket}/{prefix} (manifest.json first); the next ingest republishes it"
            )
        return path

    prefetch = ThreadPoolExecutor(max_workers=LOAD_AHEAD, thread_name_prefix="quality-prefetch")
    upcoming = [prefetch.submit(load, n) for n in range(min(LOAD_AHEAD, shards))]
    try:
        gx.build_gx_suite(expanded, name=suite_name)  # a bad entry is refused before any shard is read
        context = gx._ephemeral_context()
        source = context.data_sources.add_pandas("aifp_dataset")
        batch_def = source.add_dataframe_asset("shard").add_batch_definition_whole_dataframe("whole")
        log(
            f"quality: suite {shown(suite_name)}: {len(expanded)} expectations on {manifest.rows} rows in "
            f"{shards} shard(s), {manifest.total_bytes} B; reading "
            + (f"{len(needed)} column(s)" if needed is not None else "all columns")
            + f", {len(kinds['aggregate'])} aggregate(s) judged on the whole dataset"
        )
        with prefetch:
            for n, entry in enumerate(manifest.files):
                t0 = time.monotonic()
                path = upcoming.pop(0).result()
                if n + LOAD_AHEAD < shards:
                    upcoming.append(prefetch.submit(load, n + LOAD_AHEAD))
                shard = pq.ParquetFile(path, memory_map=False, pre_buffer=False)
                schema = shard.schema_arrow
                present = set(map(str, schema.names))
                everywhere = present if everywhere is None else everywhere & present
                if n == 0 and kinds["schema"]:
                    _run_schema_only(expanded, kinds["schema"], schema, totals, problems, batch_def, suite_name)
                runnable, spilled = _runnable(expanded, kinds, present, totals)
                suite = gx.build_gx_suite(expanded, name=suite_name, indices=runnable) if runnable else None
                read = None if needed is None else [c for c in dict.fromkeys([*needed, *agg_columns]) if c in present]
                frame_columns = [c for c in schema.names if needed is None or c in needed]
                # a whole-column expectation (allowed on a one-shard dataset) needs the shard in one batch
                step = max(shard.metadata.num_rows, 1) if whole else BATCH_ROWS
                rows = 0
                for batch in _batches(shard, read, step):
                    rows += batch.num_rows
                    for col, acc in accs.items():
                        if col in present:
                            acc.add(batch.column(col))
                    df = batch.select(frame_columns).to_pandas()
                    del batch
                    for i in spilled:
                        spills.setdefault(i, UniqueSpill(scratch, i, unique_columns(expanded[i]) or [], n_buckets)).add(df)
                    if suite is not None:
                        apply_results(gx.run_gx(batch_def, df, suite), totals, runnable, problems,
                                      f"shard {entry.path}")
                    del df
                del shard
                path.unlink()
                total_rows += rows
                log(
                    f"quality: {entry.path} ({n + 1}/{shards}): {rows} rows, {len(runnable)} "
                    f"expectations in {time.monotonic() - t0:.1f}s; {total_rows}/{manifest.rows} rows done"
                )

        for i, spill in spills.items():
            suite = gx.build_gx_suite(expanded, name=suite_name, indices=[i])
            for b, frame in spill.frames():
                apply_results(gx.run_gx(batch_def, frame, suite), totals, [i], problems, f"uniqueness bucket {b}")
            log(f"quality: {describe(expanded[i])} checked across all shards ({n_buckets} hash bucket(s))")
        _judge_aggregates(expanded, kinds["aggregate"], accs, everywhere or set(), totals, total_rows)

        if total_rows != manifest.rows:
            problems.append(
                f"the shards hold {total_rows} rows but the manifest says {manifest.rows}; "
                "the dataset version is inconsistent - re-run the ingest"
            )
        if total_rows == 0:
            problems.append("the dataset is empty (0 rows); upload data with at least a few rows")
        if kinds["wide"]:
            import pandas as pd

            # A zero-column frame of the right length: GX computes the row count itself, so the
            # suite's min/max/strict semantics stay GX's, without loading any data.
            frame = pd.DataFrame(index=pd.RangeIndex(total_rows))
            suite = gx.build_gx_suite(expanded, name=suite_name, indices=kinds["wide"])
            apply_results(gx.run_gx(batch_def, frame, suite), totals, kinds["wide"], problems, "the whole dataset")
    finally:
        prefetch.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(scratch, ignore_errors=True)

    summary = build_summary(base, totals, rows=total_rows, shards=shards, problems=problems)
    summary["seconds"] = round(time.monotonic() - started, 3)
    for line in compact_summary(summary).splitlines():
        log(line)
    if not summary["success"]:
        raise QualityGateFailed(format_summary(summary), summary)
    return summary


def _batches(shard: Any, columns: list[str] | None, rows: int) -> Any:
    """The shard's rows as Arrow tables of whole row groups, about ``rows`` rows each (at least one
    table, possibly empty, so an empty shard still meets GX). Each table is yielded without a
    reference kept here, so the caller frees it as soon as it has its pandas frame."""
    meta = shard.metadata
    if meta.num_row_groups == 0 or meta.num_rows == 0:
        empty = shard.schema_arrow.empty_table()
        yield empty if columns is None else empty.select(columns)
        return
    per = max(1, rows // max(1, meta.row_group(0).num_rows))
    for first in range(0, meta.num_row_groups, per):
        groups = list(range(first, min(first + per, meta.num_row_groups)))
        yield shard.read_row_groups(groups, columns=columns, use_threads=True)


def _classify(expanded: list[dict[str, Any]], shards: int) -> dict[str, list[int]]:
    """Which expectations run where: once on the total (``wide``), once on the schema, through the
    uniqueness spill, as an exact aggregate, per batch of rows, or not at all (``refused``)."""
    kinds: dict[str, list[int]] = {k: [] for k in ("wide", "schema", "unique", "aggregate", "per_batch", "refused")}
    for i, e in enumerate(expanded):
        t = e["type"]
        if t in DATASET_WIDE:
            kinds["wide"].append(i)
        elif t in SCHEMA_ONLY:
            kinds["schema"].append(i)
        elif unique_columns(e) is not None:
            kinds["unique"].append(i)
        elif t in AGGREGATE_METRICS and isinstance(e["kwargs"].get("column"), str):
            kinds["aggregate"].append(i)
        elif t in WHOLE_COLUMN_ONLY and shards > 1:
            kinds["refused"].append(i)
        else:
            kinds["per_batch"].append(i)
    return kinds


def _runnable(
    expanded: list[dict[str, Any]], kinds: dict[str, list[int]], present: set[str], totals: list[Totals]
) -> tuple[list[int], list[int]]:
    """Of the per-batch and uniqueness expectations: those GX runs on this shard's batches, and
    those whose columns go to the uniqueness spill. A missing column is recorded, not run."""
    runnable: list[int] = []
    spilled: list[int] = []
    for i in kinds["per_batch"] + kinds["unique"]:
        missing = [c for c in referenced_columns(expanded[i]["kwargs"]) if c not in present]
        if missing:
            totals[i].add_missing(missing)
        elif i in kinds["unique"] and all(c in present for c in unique_columns(expanded[i]) or []):
            spilled.append(i)
        else:
            runnable.append(i)
    return runnable, spilled


def _judge_aggregates(
    expanded: list[dict[str, Any]], indices: list[int], accs: dict[str, ColumnAggregates],
    everywhere: set[str], totals: list[Totals], rows: int,
) -> None:
    """GX judges each aggregate expectation on the exact dataset-wide metrics."""
    for i in indices:
        exp = expanded[i]
        col = exp["kwargs"]["column"]
        if col not in everywhere:
            totals[i].add_missing([col])
            continue
        try:
            judged = gx.judge_on_metrics(exp, accs[col].metrics_for(exp))
        except MetricError as exc:
            totals[i].evaluated, totals[i].success, totals[i].error = True, False, str(exc)
            continue
        except Exception as exc:  # GX raising inside its judgement is an error, not a finding
            totals[i].evaluated, totals[i].success = True, False
            totals[i].error = printable(" ".join(str(exc).split()), max_chars=gx.MAX_ERROR_CHARS)
            continue
        totals[i].add_result(judged["success"], {}, None)
        totals[i].scope = f"judged on all {rows} rows"


def _run_schema_only(
    expanded: list[dict[str, Any]], indices: list[int], schema: Any, totals: list[Totals],
    problems: list[str], batch_def: Any, suite_name: str,
) -> None:
    """Schema expectations, once, against a zero-row frame with every column and its dtype."""
    present = set(map(str, schema.names))
    runnable = []
    for i in indices:
        missing = [c for c in referenced_columns(expanded[i]["kwargs"]) if c not in present]
        if missing:
            totals[i].add_missing(missing)
        else:
            runnable.append(i)
    if runnable:
        frame = schema.empty_table().to_pandas()
        suite = gx.build_gx_suite(expanded, name=suite_name, indices=runnable)
        apply_results(gx.run_gx(batch_def, frame, suite), totals, runnable, problems, "the schema")
