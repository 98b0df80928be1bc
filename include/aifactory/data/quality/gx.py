"""Great Expectations: a fast first import, an ephemeral context, suites, batches and judgements.

Everything that touches GX lives here, so the rest of the gate is plain Python over Arrow.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
from typing import Any

from aifactory.data.quality.suites import describe
from aifactory.errors import InputError
from aifactory.text import printable, shown

MAX_ERROR_CHARS = 300
#: The result format of every GX call: counts only, no sample values (they end up in logs and XCom).
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}


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
            msg = printable(" ".join(str(exc).split()), max_chars=MAX_ERROR_CHARS)
            raise InputError(
                f"expectation suite {shown(name)}: {describe(exp)} is not a valid expectation ({msg}); "
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



def raised_exception(info: dict[str, Any] | None) -> str | None:
    """The exception message GX recorded for a result, or ``None``.

    GX 1.x reports an expectation's own exception at the top level
    (``{"raised_exception": True, ...}``) but a metric's exception keyed by the metric id
    (``{"MetricConfigurationID(...)": {"raised_exception": True, ...}}``); both are errors, and
    ``success: False`` alone would make them look like data failures (``docs/failure-modes.md``,
    section 15).
    """
    if not info:
        return None
    candidates = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for c in candidates:
        if c.get("raised_exception"):
            msg = " ".join(str(c.get("exception_message") or "unknown error").split())
            return printable(msg, max_chars=MAX_ERROR_CHARS)
    return None


def run_gx(batch_def: Any, df: Any, suite: Any) -> list[Any]:
    """Validate one pandas frame; GX's results (in no particular order)."""
    batch = batch_def.get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(suite, result_format=dict(RESULT_FORMAT))
    return list(result.results)


def judge_on_metrics(exp: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """GX's own judgement of an aggregate expectation, fed the exact dataset-wide metric values.

    Every column-aggregate expectation of GX 1.x decides in ``Expectation._validate(metrics)``
    from the metrics it declares (``column.mean``, ``column.quantile_values``, ...): the bounds,
    ``strict_min``/``strict_max``, value sets and ties stay GX's semantics; only the metrics are
    computed here, over the whole dataset (:mod:`aifactory.data.quality.aggregates`).
    ``_validate`` is GX's internal hook (the public path computes the metrics from one batch, which
    is exactly what cannot serve here); a GX upgrade that changes it fails the unit tests.
    """
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    _import_gx()
    cfg = ExpectationConfiguration(type=exp["type"], kwargs=exp["kwargs"], meta=dict(exp["meta"]))
    expectation = cfg.to_domain_obj()
    out = expectation._validate(metrics=metrics, runtime_configuration={"result_format": dict(RESULT_FORMAT)})
    return {"success": bool(out.get("success")), "result": dict(out.get("result") or {})}
