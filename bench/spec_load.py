"""How long does loading every tenant spec take, and what do the area checks add to it?

Every DAG file's parse and every task's start (``load_tenant``) load all tenant specs
(:func:`aifactory.tenants.spec.load_tenant_specs`); each load checks each tenant's project and
scratch areas (``check_areas``) and the clashes between tenants (``overlapping_areas``). This
generates ``--tenants`` specs as ``bench/parse.py`` does (copies of the demo's, each with its own
name, identity and Slurm account), loads them once to fill the file caches, then times ``--repeat``
loads with the area checks and as many without them (both replaced by no-ops).

Figures (last line, JSON): ``tenants``, ``load_ms`` (one load, with the checks), ``without_checks_ms``,
``area_checks_ms`` (the difference), ``errors`` (specs refused: 0 expected).

    .venv/bin/python bench/spec_load.py --tenants 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "include")]


def _time(load: object, folder: Path, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        load(folder)  # type: ignore[operator]
    return (time.perf_counter() - started) / repeat


def main(argv: list[str] | None = None) -> int:
    from parse import write_specs

    from aifactory.tenants import spec

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aifp-spec-load-") as tmp:
        folder = Path(tmp)
        write_specs(folder, args.tenants)
        loaded = spec.load_tenant_specs(folder)  # the file caches, as a running process has them
        with_checks = _time(spec.load_tenant_specs, folder, args.repeat)
        checks = spec.check_areas, spec.overlapping_areas
        spec.check_areas = lambda s, c: None  # type: ignore[assignment]
        spec.overlapping_areas = lambda placed: {}  # type: ignore[assignment]
        try:
            without = _time(spec.load_tenant_specs, folder, args.repeat)
        finally:
            spec.check_areas, spec.overlapping_areas = checks
    figures = {"tenants": args.tenants, "load_ms": round(with_checks * 1000, 1),
               "without_checks_ms": round(without * 1000, 1),
               "area_checks_ms": round((with_checks - without) * 1000, 1), "errors": len(loaded.errors)}
    print(f"load_tenant_specs of {args.tenants} tenants: {figures['load_ms']} ms, of which the area checks "
          f"{figures['area_checks_ms']} ms")
    print(json.dumps(figures))
    return 0 if not loaded.errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
