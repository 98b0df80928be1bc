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

How a dataset is judged
=======================

* Shards are downloaded one at a time (one streaming GET each), checked against the manifest's
  sha256, read into pandas and validated with an **ephemeral** GX context (file contexts break
  under parallel runs; FAILURE-MODES 15).
* Only the columns the suite reads are loaded (a table-level expectation loads all), and the
  next shard is downloaded while GX validates the current one. Schema expectations
  (``expect_column_to_exist``, ``expect_table_columns_*``, column counts) run once on a zero-row
  frame carrying every column and dtype.
* Row-count expectations (``expect_table_row_count_*``) are dataset-wide: they run once, after
  the shards, against the total number of rows. Uniqueness (``expect_column_values_to_be_unique``,
  ``expect_compound_columns_to_be_unique``) is dataset-wide too: the columns are hash-partitioned
  into spill files of ~1M rows and GX validates bucket by bucket (equal values share a bucket), so
  a duplicate split across shards is found, with bounded memory. Every other expectation runs on
  each shard and passes only if it passes on every shard; unexpected and element counts are
  summed. (Column aggregates such as a mean are therefore checked per shard, which is stricter
  than dataset-wide.)
* Suites are chosen per dataset or per tenant: ``quality_suites: {<dataset>: <suite>}`` in the
  tenant spec, else its ``quality_suite``. The full result goes to ``quality.json`` beside the
  version and the verdict into ``manifest.json`` (:func:`publish_quality_result`); the log gets a
  compact summary (:func:`compact_summary`).
* The gate also fails, saying which, when: the dataset has zero rows, the suite has no
  expectations after expansion, a column an expectation names is missing, an expectation raised
  an exception (which GX would otherwise report like a data failure), GX returned fewer results
  than expectations it was given, or the shards' rows disagree with the manifest.
* Results are reduced to counts: ``partial_unexpected_count`` is 0 and no sample values, indexes
  or observed values of data-dependent aggregates leave this module (they end up in logs and XCom).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from aifactory.errors import FactoryError, InputError, QualityGateFailed
from aifactory.data.manifest import QUALITY_NAME, DatasetManifest
from aifactory.layout import EXPECTATIONS_DIR

Log = Callable[[str], Any]

_TEMPLATE_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")

#: Dataset-wide expectations, evaluated once against the total row count.
DATASET_WIDE = frozenset({"expect_table_row_count_to_be_between", "expect_table_row_count_to_equal"})
#: Expectations whose ``observed_value`` is metadata (a count, a dtype, column names), never a cell
#: value, so it may appear in the summary.
_SAFE_OBSERVED = frozenset(
    {
        "expect_table_row_count_to_be_between",
        "expect_table_row_count_to_equal",
        "expect_table_column_count_to_be_between",
        "expect_table_column_count_to_equal",
        "expect_column_values_to_be_in_type_list",
        "expect_column_values_to_be_of_type",
    }
)
#: kwargs that name columns, checked against the shard before GX runs.
_COLUMN_KWARGS = ("column", "column_A", "column_B")
_MAX_ERROR_CHARS = 300


# --------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------


#: Where suites live: ``include/expectations`` beside this package (installed editable).

_SUITE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def suite_path(name: str, *, directory: Path | None = None) -> Path:
    """Path of suite ``name`` (the tenant spec's ``quality_suite``) in ``include/expectations``.

    The name is checked against ``[a-z0-9_-]`` so it can never point outside the folder.
    """
    if not isinstance(name, str) or not _SUITE_NAME_RE.match(name):
        raise InputError(f"quality suite name {name!r} is not valid; use a-z, 0-9, '_' and '-'")
    path = (directory or EXPECTATIONS_DIR) / f"{name}.json"
    if not path.is_file():
        raise InputError(
            f"quality suite {name!r} does not exist ({path}); check the tenant spec's quality_suite"
        )
    return path


def load_suite(suite_path: Path) -> dict[str, Any]:
    """Read a suite file; InputError if it is not a JSON object with an ``expectations`` list."""
    path = Path(suite_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"expectation suite {path} does not exist; check the tenant spec's quality_suite"
        ) from None
    except ValueError as exc:
        raise InputError(f"expectation suite {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise InputError(f"expectation suite {path} must be a JSON object with an 'expectations' list")
    data.setdefault("name", path.stem)
    return data


class _Missing(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _substitute(value: Any, params: dict[str, Any]) -> Any:
    if isinstance(value, str):
        m = _TEMPLATE_RE.match(value)
        if not m:
            return value
        if m.group(1) not in params:
            raise _Missing(m.group(1))
        return params[m.group(1)]
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            spliced = isinstance(item, str) and _TEMPLATE_RE.match(item)
            sub = _substitute(item, params)
            if spliced and isinstance(sub, list):
                out.extend(sub)
            else:
                out.append(sub)
        return out
    if isinstance(value, dict):
        return {k: _substitute(v, params) for k, v in value.items()}
    return value


def expand_suite(suite: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    """Resolve templates and expand list-valued ``column`` entries (pure; no GX import).

    Returns ``[{"type", "kwargs", "meta"}]`` in suite order. Raises :class:`InputError` for a
    missing parameter, a malformed entry or a column name that is not a string.
    """
    name = suite.get("name", "suite")
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(suite.get("expectations", [])):
        where = f"expectation suite {name!r} entry #{i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise InputError(f"{where} must be an object with a string 'type'")
        kwargs = entry.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise InputError(f"{where} ({entry['type']}): 'kwargs' must be an object")
        try:
            resolved = _substitute(kwargs, params)
        except _Missing as missing:
            raise InputError(
                f"{where} ({entry['type']}) needs the parameter {missing.name!r}, which this run "
                f"does not set; add {missing.name!r} to the hyperparameters"
            ) from None
        meta = dict(entry.get("meta") or {})
        columns = resolved.get("column")
        if isinstance(columns, list):
            expanded = [dict(resolved, column=c) for c in columns]
            meta.setdefault("expanded_from", kwargs.get("column"))
        else:
            expanded = [resolved]
        for kw in expanded:
            for key in _COLUMN_KWARGS:
                if key in kw and not (isinstance(kw[key], str) and kw[key]):
                    raise InputError(
                        f"{where} ({entry['type']}): {key} must be a non-empty column name, "
                        f"got {kw[key]!r}; check the hyperparameters"
                    )
            out.append({"type": entry["type"], "kwargs": kw, "meta": dict(meta)})
    return out


def _describe(exp: dict[str, Any]) -> str:
    kw = exp["kwargs"]
    col = next((f"{k}={kw[k]}" for k in _COLUMN_KWARGS if k in kw), None)
    return f"{exp['type']}({col})" if col else exp["type"]


def build_gx_suite(expanded: list[dict[str, Any]], *, name: str, indices: list[int] | None = None) -> Any:
    """Turn expanded entries (those at ``indices``, default all) into a GX ``ExpectationSuite``.

    Each expectation carries ``meta.aifp_index`` (its position in ``expanded``) because GX does
    not return results in suite order. InputError names a bad entry.
    """
    gx = _import_gx()
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    expectations = []
    for i in indices if indices is not None else range(len(expanded)):
        exp = expanded[i]
        meta = dict(exp["meta"], aifp_index=i)
        try:
            cfg = ExpectationConfiguration(type=exp["type"], kwargs=exp["kwargs"], meta=meta)
            expectations.append(cfg.to_domain_obj())
        except Exception as exc:  # GX raises its own and pydantic errors for bad entries
            msg = " ".join(str(exc).split())[:_MAX_ERROR_CHARS]
            raise InputError(
                f"expectation suite {name!r}: {_describe(exp)} is not a valid expectation ({msg}); "
                "fix the suite file"
            ) from None
    return gx.ExpectationSuite(name=name, expectations=expectations)


def _import_gx() -> Any:
    # No phone-home from a worker; must be set before GX is imported.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    with _GX_IMPORT_LOCK:  # one import, one finder on sys.meta_path
        if "great_expectations" not in sys.modules:
            _first_gx_import()
    import great_expectations as gx

    _skip_batch_fingerprint()
    return gx


#: Packages Great Expectations imports when it starts but uses only in a few expectations
#: (``scipy.stats``: the KL-divergence and Kolmogorov-Smirnov ones) and in its chart renderers
#: (``altair``): see :func:`_first_gx_import`.
GX_DEFERRED_IMPORTS = ("scipy.stats", "altair")
_GX_IMPORT_LOCK = threading.Lock()


def _first_gx_import() -> None:
    """Import GX in a fraction of its usual time; it is most of the gate's fixed cost, paid by
    every quality task (``python -X importtime``: ~2.2 s, of which scipy.stats and altair ~0.9 s).

    * :data:`GX_DEFERRED_IMPORTS` become lazy modules (:class:`importlib.util.LazyLoader`): the
      module object exists at once and its code runs on first use, so an expectation that needs
      scipy still gets it.
    * The cyclic garbage collector is paused during the import (GX creates a few hundred thousand
      objects, and the collections they trigger are ~20 % of the import), and what the import
      created is then frozen (:func:`gc.freeze`): modules and classes live as long as the process,
      and every collection while validating would otherwise walk them again. Reference counting
      still frees frozen objects; only cycles made during the import are kept.

    Together: ~2.2 s to ~1.0 s. ``AIFP_GX_FAST_IMPORT=0`` imports GX plainly.
    """
    if os.environ.get("AIFP_GX_FAST_IMPORT", "1") == "0":
        import great_expectations  # noqa: F401

        return
    import gc

    collecting = gc.isenabled()
    gc.disable()
    finder = _DeferredFinder(GX_DEFERRED_IMPORTS)
    sys.meta_path.insert(0, finder)
    try:
        import great_expectations  # noqa: F401
    finally:
        sys.meta_path.remove(finder)
        gc.freeze()
        if collecting:
            gc.enable()


class _DeferredFinder(importlib.abc.MetaPathFinder):
    """Finds the named pure-Python modules, when first imported, as lazy modules. GX uses them from
    the validating thread only (a lazy module is not loaded under a lock on Python 3.11).
    Extension modules, and modules another finder provides, are left to the normal import."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = frozenset(names)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


def _skip_batch_fingerprint() -> None:
    """GX hashes every in-memory pandas batch under 1 GB (``hash_pandas_object`` + md5) only to
    label it in batch markers; for a 1M-row shard that is a third of the validation time. The
    gate does not use those markers (results are matched by expectation index), so it is off."""
    from great_expectations.execution_engine import pandas_execution_engine as engine

    if hasattr(engine, "HASH_THRESHOLD"):
        engine.HASH_THRESHOLD = 0


def _ephemeral_context() -> Any:
    gx = _import_gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _referenced_columns(kwargs: dict[str, Any]) -> list[str]:
    """Columns an expectation runs on. (``column_list``/``column_set`` of table expectations are
    compared by GX itself: a mismatch there is the finding, not a reason to skip.)"""
    return [kwargs[k] for k in _COLUMN_KWARGS if isinstance(kwargs.get(k), str)]


class _Aggregate:
    """Per-expectation totals over shards."""

    def __init__(self, exp: dict[str, Any]) -> None:
        self.exp = exp
        self.success = True
        self.evaluated = False
        self.unexpected_count = 0
        self.element_count = 0
        self.missing_count = 0
        self.has_counts = False
        self.observed: list[Any] = []
        self.error: str | None = None
        self.missing_columns: list[str] = []

    def add_result(self, success: bool, result: dict[str, Any], exception: dict[str, Any] | None) -> None:
        self.evaluated = True
        raised = _raised_exception(exception)
        if raised is not None:
            self.success = False
            self.error = self.error or raised
            return
        self.success = self.success and bool(success)
        if "unexpected_count" in result:
            self.has_counts = True
            self.unexpected_count += int(result.get("unexpected_count") or 0)
            self.element_count += int(result.get("element_count") or 0)
            self.missing_count += int(result.get("missing_count") or 0)
        if self.exp["type"] in _SAFE_OBSERVED and "observed_value" in result:
            value = result["observed_value"]
            value = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
            if value not in self.observed:
                self.observed.append(value)

    def add_missing(self, columns: list[str]) -> None:
        self.evaluated = True
        self.success = False
        for c in columns:
            if c not in self.missing_columns:
                self.missing_columns.append(c)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.exp["type"],
            "kwargs": self.exp["kwargs"],
            "success": self.success and self.evaluated,
        }
        for k in _COLUMN_KWARGS:
            if k in self.exp["kwargs"]:
                d.setdefault("column", self.exp["kwargs"][k])
        if self.has_counts:
            d["unexpected_count"] = self.unexpected_count
            d["element_count"] = self.element_count
            d["unexpected_percent"] = (
                round(100.0 * self.unexpected_count / self.element_count, 4) if self.element_count else 0.0
            )
            if self.missing_count:
                d["missing_count"] = self.missing_count
        if self.observed:
            d["observed_value"] = self.observed[0] if len(self.observed) == 1 else self.observed
        if self.missing_columns:
            d["missing_columns"] = self.missing_columns
        if self.error:
            d["error"] = self.error
        if not self.evaluated:
            d["error"] = "not evaluated (GX returned no result for it)"
        return d


def _raised_exception(info: dict[str, Any] | None) -> str | None:
    """The exception message GX recorded for a result, or ``None``.

    GX 1.x reports an expectation's own exception at the top level
    (``{"raised_exception": True, ...}``) but a metric's exception keyed by the metric id
    (``{"MetricConfigurationID(...)": {"raised_exception": True, ...}}``); both are errors, and
    ``success: False`` alone would make them look like data failures (FAILURE-MODES 15).
    """
    if not info:
        return None
    candidates = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for c in candidates:
        if c.get("raised_exception"):
            msg = " ".join(str(c.get("exception_message") or "unknown error").split())
            return msg[:_MAX_ERROR_CHARS]
    return None


def _run_gx(batch_def: Any, df: Any, suite: Any) -> list[Any]:
    batch = batch_def.get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(suite, result_format={"result_format": "BASIC", "partial_unexpected_count": 0})
    return list(result.results)


def _apply_results(
    results: list[Any], aggs: list[_Aggregate], expected: list[int], problems: list[str], where: str
) -> None:
    seen: set[int] = set()
    for r in results:
        d = r.to_json_dict()
        idx = (d.get("expectation_config") or {}).get("meta", {}).get("aifp_index")
        if idx is None or idx not in expected:
            continue
        seen.add(idx)
        aggs[idx].add_result(bool(d.get("success")), d.get("result") or {}, d.get("exception_info"))
    if len(seen) != len(expected):
        problems.append(
            f"GX returned {len(seen)} results for {len(expected)} expectations on {where}; "
            "the missing ones count as failed"
        )
        for idx in expected:
            if idx not in seen:
                aggs[idx].success = False


def _columns_of(exp: dict[str, Any]) -> list[str] | None:
    """Every column an expectation reads, or ``None`` when it may read any (table-level)."""
    kw = exp["kwargs"]
    cols = _referenced_columns(kw)
    for key in ("column_list",):
        if isinstance(kw.get(key), list):
            cols += [c for c in kw[key] if isinstance(c, str)]
    return cols or None


def _unique_columns(exp: dict[str, Any]) -> list[str] | None:
    """The columns of a dataset-wide uniqueness expectation (``None``: not one)."""
    if exp["type"] == "expect_column_values_to_be_unique" and isinstance(exp["kwargs"].get("column"), str):
        return [exp["kwargs"]["column"]]
    if exp["type"] == "expect_compound_columns_to_be_unique" and isinstance(exp["kwargs"].get("column_list"), list):
        return [c for c in exp["kwargs"]["column_list"] if isinstance(c, str)]
    return None


class _UniqueSpill:
    """Hash-partitions the columns of one uniqueness expectation into ``buckets`` spill files.

    Equal values hash to the same bucket, so "unique within every bucket" is exactly "unique in
    the whole dataset", and each bucket holds ~1/buckets of the column: GX then validates bucket by
    bucket with bounded memory, and unexpected counts add up correctly across shards.
    """

    def __init__(self, directory: Path, index: int, columns: list[str], buckets: int) -> None:
        self.directory, self.index, self.columns, self.buckets = directory, index, columns, buckets
        self.writers: dict[int, Any] = {}
        self.paths: dict[int, Path] = {}
        self._lock = threading.Lock()  # shards are added from the loading threads

    def add(self, df: Any) -> None:
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        part = df[self.columns]
        bucket = pd.util.hash_pandas_object(part, index=False).to_numpy() % self.buckets
        tables = {}
        for b in range(self.buckets):
            chunk = part[bucket == b]
            if not chunk.empty:
                tables[b] = pa.Table.from_pandas(chunk, preserve_index=False)
        with self._lock:
            for b, table in tables.items():
                if b not in self.writers:
                    self.paths[b] = self.directory / f"unique-{self.index}-{b}.parquet"
                    self.writers[b] = pq.ParquetWriter(self.paths[b], table.schema, compression="none")
                self.writers[b].write_table(table.cast(self.writers[b].schema))

    def frames(self) -> Any:
        import pyarrow.parquet as pq

        for w in self.writers.values():
            w.close()
        self.writers.clear()
        for b in sorted(self.paths):
            df = pq.read_table(self.paths[b]).to_pandas()
            self.paths[b].unlink()
            yield b, df


#: Expectations about the schema only: evaluated once, on a zero-row frame with every column.
SCHEMA_ONLY = frozenset(
    {
        "expect_column_to_exist",
        "expect_table_columns_to_match_set",
        "expect_table_columns_to_match_ordered_list",
        "expect_table_column_count_to_equal",
        "expect_table_column_count_to_be_between",
    }
)
#: Rows per uniqueness bucket (bounds GX's memory for dataset-wide uniqueness).
UNIQUE_BUCKET_ROWS = 1_000_000
#: Shards loaded ahead of the one GX validates, in parallel (memory: this many shards more).
LOAD_AHEAD = 2


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
    """Validate every shard of a dataset version against a suite; raise if the gate fails.

    Only the columns the suite reads are loaded into pandas; the next shard is downloaded (and
    checked against the manifest's sha256) while GX validates the current one. Uniqueness
    expectations are dataset-wide (hash-partitioned spill, see :class:`_UniqueSpill`).

    :param s3: a client from :func:`aifactory.data.s3.make_client`.
    :param bucket: the tenant's bucket.
    :param manifest: the version's manifest (lists shards, rows and sha256s).
    :param dataset_prefix: key prefix of the version (``<tenant>/datasets/<name>/<version>/``).
    :param suite_path: the suite JSON (see the module docstring for its format).
    :param params: the run's hyperparameters, used for templating (``label_column``, ...).
    :param workdir: local scratch; a private subfolder is created and removed afterwards.
    :param log: progress sink.
    :returns: the compact, JSON-serialisable summary (counts only, no data values).
    :raises QualityGateFailed: with a readable multi-line message and the summary attached.
    :raises InputError: the suite is malformed or needs a parameter the run lacks.
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.parquet as pq

    from aifactory.data.manifest import sha256_file
    from aifactory.data.s3 import download_bytes

    started = time.monotonic()
    prefix = dataset_prefix if dataset_prefix.endswith("/") else dataset_prefix + "/"
    suite_doc = load_suite(suite_path)
    suite_name = str(suite_doc["name"])
    expanded = expand_suite(suite_doc, params)
    problems: list[str] = []
    aggs = [_Aggregate(e) for e in expanded]
    summary_base = {
        "suite": suite_name,
        "suite_sha256": sha256_file(suite_path),
        "dataset": {"tenant": manifest.tenant, "name": manifest.name, "version": manifest.version},
    }
    if not expanded:
        problems.append(f"suite {suite_name!r} has no expectations; an empty suite proves nothing")
        summary = _summary(
            summary_base, aggs, rows=manifest.rows, shards=len(manifest.files), problems=problems
        )
        raise QualityGateFailed(format_summary(summary), summary)

    wide = [i for i, e in enumerate(expanded) if e["type"] in DATASET_WIDE]
    schema_only = [i for i, e in enumerate(expanded) if e["type"] in SCHEMA_ONLY]
    unique = [i for i, e in enumerate(expanded) if _unique_columns(e) is not None and i not in wide]
    per_shard = [i for i in range(len(expanded)) if i not in wide and i not in schema_only and i not in unique]
    needed: list[str] | None = []
    for i in per_shard + unique:
        cols = _columns_of(expanded[i])
        if cols is None:
            needed = None  # a table-level expectation: load every column
            break
        needed += [c for c in cols if c not in needed]

    total_rows = 0
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"quality-{manifest.version}-", dir=workdir))
    n_buckets = max(1, -(-manifest.rows // UNIQUE_BUCKET_ROWS))
    spills: dict[int, _UniqueSpill] = {}

    def fetch(n: int) -> Any:
        entry = manifest.files[n]
        data, digest = download_bytes(s3, bucket, prefix + entry.path)
        if digest != entry.sha256:
            raise FactoryError(
                f"s3://{bucket}/{prefix}{entry.path} does not match its manifest sha256; the "
                "dataset version is corrupt. Ask the platform team to delete "
                f"s3://{bucket}/{prefix} (manifest.json first); the next ingest republishes it"
            )
        return pa.py_buffer(data)

    def spilled(i: int, present: set[str]) -> bool:
        """Whether uniqueness expectation ``i`` is checked dataset-wide through its spill."""
        cols = _unique_columns(expanded[i]) or []
        refs = _referenced_columns(expanded[i]["kwargs"])
        return i in unique and all(c in present for c in refs) and all(c in present for c in cols)

    def load(n: int) -> tuple[Any, Any]:
        """Shard ``n`` downloaded, checked, read into pandas (only the columns the suite reads) and
        added to the uniqueness spills. Runs in the prefetch threads, :data:`LOAD_AHEAD` shards at once."""
        data = fetch(n)
        schema = pq.read_schema(pa.BufferReader(data))
        present = set(map(str, schema.names))
        columns = None if needed is None else [c for c in needed if c in present]
        df = pq.read_table(pa.BufferReader(data), columns=columns).to_pandas()
        del data
        for i in unique:
            if spilled(i, present):
                # setdefault is atomic: two loading threads end up with the same spill
                spills.setdefault(i, _UniqueSpill(scratch, i, _unique_columns(expanded[i]) or [], n_buckets)).add(df)
        return schema, df

    # The next shard is fetched and read in a background thread while GX validates the current
    # one; the first one while GX itself is imported (seconds of its own).
    prefetch = ThreadPoolExecutor(max_workers=LOAD_AHEAD, thread_name_prefix="quality-prefetch")
    upcoming = [prefetch.submit(load, n) for n in range(min(LOAD_AHEAD, len(manifest.files)))]
    try:
        build_gx_suite(expanded, name=suite_name)  # a bad entry is refused before any shard is read
        context = _ephemeral_context()
        source = context.data_sources.add_pandas("aifp_dataset")
        batch_def = source.add_dataframe_asset("shard").add_batch_definition_whole_dataframe("whole")
        log(
            f"quality: suite {suite_name!r}: {len(expanded)} expectations on {manifest.rows} rows in "
            f"{len(manifest.files)} shard(s), {manifest.total_bytes} B; reading "
            + (f"{len(needed)} column(s)" if needed is not None else "all columns")
        )
        with prefetch:
            for n, entry in enumerate(manifest.files):
                t0 = time.monotonic()
                schema, df = upcoming.pop(0).result()
                if n + LOAD_AHEAD < len(manifest.files):
                    upcoming.append(prefetch.submit(load, n + LOAD_AHEAD))
                present = set(map(str, schema.names))
                if n == 0 and schema_only:
                    _run_schema_only(expanded, schema_only, schema, aggs, problems, batch_def, suite_name)
                rows = len(df)
                total_rows += rows
                runnable: list[int] = []
                for i in per_shard + unique:
                    missing = [c for c in _referenced_columns(expanded[i]["kwargs"]) if c not in present]
                    if missing:
                        aggs[i].add_missing(missing)
                    elif spilled(i, present):
                        pass  # hash-partitioned while the shard was loaded; checked after the loop
                    else:
                        runnable.append(i)
                if runnable:
                    suite = build_gx_suite(expanded, name=suite_name, indices=runnable)
                    _apply_results(_run_gx(batch_def, df, suite), aggs, runnable, problems, f"shard {entry.path}")
                del df
                log(
                    f"quality: {entry.path} ({n + 1}/{len(manifest.files)}): {rows} rows, {len(runnable)} "
                    f"expectations in {time.monotonic() - t0:.1f}s; {total_rows}/{manifest.rows} rows done"
                )

        for i, spill in spills.items():
            suite = build_gx_suite(expanded, name=suite_name, indices=[i])
            for b, frame in spill.frames():
                _apply_results(_run_gx(batch_def, frame, suite), aggs, [i], problems, f"uniqueness bucket {b}")
            log(f"quality: {_describe(expanded[i])} checked across all shards ({n_buckets} hash bucket(s))")

        if total_rows != manifest.rows:
            problems.append(
                f"the shards hold {total_rows} rows but the manifest says {manifest.rows}; "
                "the dataset version is inconsistent - re-run the ingest"
            )
        if total_rows == 0:
            problems.append("the dataset is empty (0 rows); upload data with at least a few rows")
        if wide:
            import pandas as pd

            # A zero-column frame of the right length: GX computes the row count itself, so the
            # suite's min/max/strict semantics stay GX's, without loading any data.
            frame = pd.DataFrame(index=pd.RangeIndex(total_rows))
            suite = build_gx_suite(expanded, name=suite_name, indices=wide)
            _apply_results(_run_gx(batch_def, frame, suite), aggs, wide, problems, "the whole dataset")
    finally:
        prefetch.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(scratch, ignore_errors=True)

    summary = _summary(summary_base, aggs, rows=total_rows, shards=len(manifest.files), problems=problems)
    summary["seconds"] = round(time.monotonic() - started, 3)
    for line in compact_summary(summary).splitlines():
        log(line)
    if not summary["success"]:
        raise QualityGateFailed(format_summary(summary), summary)
    return summary


def _run_schema_only(
    expanded: list[dict[str, Any]], indices: list[int], schema: Any, aggs: list[_Aggregate],
    problems: list[str], batch_def: Any, suite_name: str,
) -> None:
    """Schema expectations, once, against a zero-row frame with every column and its dtype."""
    present = set(map(str, schema.names))
    runnable = []
    for i in indices:
        missing = [c for c in _referenced_columns(expanded[i]["kwargs"]) if c not in present]
        if missing:
            aggs[i].add_missing(missing)
        else:
            runnable.append(i)
    if runnable:
        frame = schema.empty_table().to_pandas()
        suite = build_gx_suite(expanded, name=suite_name, indices=runnable)
        _apply_results(_run_gx(batch_def, frame, suite), aggs, runnable, problems, "the schema")


def compact_summary(summary: dict[str, Any]) -> str:
    """A few lines for the task log: verdict, then per expectation type passed/failed and
    unexpected counts, then each failure. Counts only, never values."""
    verdict = "PASSED" if summary.get("success") else "FAILED"
    ds = summary.get("dataset", {})
    lines = [
        f"quality: {verdict} {ds.get('name')}/{ds.get('version')} suite {summary.get('suite')}: "
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


def _summary(
    base: dict[str, Any], aggs: list[_Aggregate], *, rows: int, shards: int, problems: list[str]
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
    name = f"{ds.get('tenant')}/{ds.get('name')}/{ds.get('version')}"
    verdict = "PASSED" if summary.get("success") else "FAILED"
    lines = [
        f"Quality gate {verdict} for {name} (suite {summary.get('suite')}): "
        f"{summary.get('failed_expectations', 0)} of {summary.get('evaluated_expectations', 0)} "
        f"expectations failed; {summary.get('rows', 0)} rows in {summary.get('shards', 0)} shard(s)"
    ]
    for problem in summary.get("problems", []):
        lines.append(f"  - {problem}")
    for exp in summary.get("expectations", []):
        if exp.get("success"):
            continue
        head = _describe(exp)
        if exp.get("missing_columns"):
            cols = ", ".join(repr(c) for c in exp["missing_columns"])
            lines.append(f"  - {head}: column {cols} is missing from the dataset")
        elif exp.get("error"):
            lines.append(f"  - {head}: ERROR while evaluating (not a data finding): {exp['error']}")
        elif "unexpected_count" in exp:
            lines.append(
                f"  - {head}: {exp['unexpected_count']} unexpected of {exp['element_count']} values "
                f"({exp['unexpected_percent']:.2f}%)"
            )
        elif "observed_value" in exp:
            lines.append(f"  - {head}: observed {exp['observed_value']!r}, expected {_expected(exp)}")
        else:
            lines.append(f"  - {head}: failed")
    if not summary.get("success"):
        lines.append("Fix the dataset (or the run's label/feature columns) and run again.")
    return "\n".join(lines)


def _expected(exp: dict[str, Any]) -> str:
    parts = []
    for k, v in exp.get("kwargs", {}).items():
        if k in _COLUMN_KWARGS:
            continue
        if isinstance(v, list) and len(v) > 6:
            v = [*v[:6], f"... {len(v) - 6} more"]
        parts.append(f"{k}={v!r}")
    return ", ".join(parts) or "(see suite)"


def quality_verdict(summary: dict[str, Any], *, report_sha256: str) -> dict[str, Any]:
    """The small verdict recorded in ``manifest.json`` (the full report is ``quality.json``)."""
    from datetime import datetime, timezone

    return {
        "verdict": "passed" if summary.get("success") else "failed",
        "suite": summary.get("suite"),
        "suite_sha256": summary.get("suite_sha256"),
        "expectations": summary.get("evaluated_expectations"),
        "failed": summary.get("failed_expectations"),
        "rows": summary.get("rows"),
        "report": QUALITY_NAME,
        "report_sha256": report_sha256,
        "checked_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }


def publish_quality_result(s3: Any, *, bucket: str, dataset_prefix: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Write ``quality.json`` beside the version, then record the verdict in ``manifest.json``.

    The verdict update is a conditional write (see :func:`aifactory.data.manifest.record_quality_verdict`);
    ``manifest_sha256`` does not change. Returns the verdict.
    """
    from aifactory.data.manifest import record_quality_verdict, sha256_bytes

    prefix = dataset_prefix if dataset_prefix.endswith("/") else dataset_prefix + "/"
    body = _report_bytes(summary)
    write_quality_result(s3, bucket=bucket, dataset_prefix=prefix, summary=summary)
    verdict = quality_verdict(summary, report_sha256=sha256_bytes(body))
    record_quality_verdict(s3, bucket, prefix, verdict)
    return verdict


def _report_bytes(summary: dict[str, Any]) -> bytes:
    return json.dumps(summary, indent=2, sort_keys=True, default=str).encode("utf-8") + b"\n"


def write_quality_result(s3: Any, *, bucket: str, dataset_prefix: str, summary: dict[str, Any]) -> str:
    """Write ``summary`` as ``<dataset_prefix>quality.json``; return the key.

    The report sits beside the version (it is not part of it: the manifest and shards are
    immutable, while a version may be re-validated with another suite, which replaces this file).
    Call it with a passing summary or with ``QualityGateFailed.summary``.
    """
    from aifactory.data.s3 import put_bytes

    prefix = dataset_prefix if dataset_prefix.endswith("/") else dataset_prefix + "/"
    key = prefix + QUALITY_NAME
    body = _report_bytes(summary)
    put_bytes(s3, bucket, key, body, content_type="application/json")
    return key
