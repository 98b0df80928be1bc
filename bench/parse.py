"""How long does the dag-processor take to parse the DAG files with many tenants?

Generates ``--tenants`` tenant specs (copies of ``include/tenants/demo.yaml``, each with its own
name, identity, bucket, Slurm account and Airflow login) in a temporary folder, points the spec
loader at it (``$AIFP_TENANTS_DIR``, :func:`aifactory.layout.tenants_dir`), and times the parse of
the DAG files that read the tenant specs, beyond Airflow's own imports: Airflow, its SDK and our
operators are imported first, as a dag-processor has them loaded already, then each DAG file is
loaded by Airflow's ``DagBag`` (as the dag-processor does; the time Airflow's DAG import timeout
``core.dagbag_import_timeout`` bounds, 30 s by default).

Each file is parsed in a process of its own, forked after the imports, as the dag-processor does
(so a cache filled by one file's parse cannot flatter the next one's).

Figures (last line, JSON): ``tenants``, ``parse_s`` (the slowest file's parse: each DAG file is
parsed in a process of its own, bounded by the import timeout on its own, and the dag-processor
parses ``parsing_processes`` files at once), ``parse_total_s`` (the files' times added up: one
processor's CPU time for a full pass), ``per_tenant_ms`` (of the total), ``parse_cpu_s`` (the CPU time of the total: on
a busy machine, wall time minus waiting for a core), ``dags`` (DAGs the files declared), ``import_errors``, ``files`` (seconds per
file), ``serialize_s`` (serializing the DAGs afterwards, as the dag-processor does next: bounded
by ``dag_processor.dag_file_processor_timeout``, not by the import timeout; not in ``parse_s``),
``serialize_files`` (per file), ``task_parse_s`` (the most one task process pays at its start: the
task runner parses its DAG's file again, with Airflow's parsing context naming that DAG, so a DAG file
that reads ``get_parsing_context()`` builds only that one; per file in ``task_parse_files``, each timed
for the file's first DAG), ``imports_s`` (the imports done before timing, for comparison).
Target: ``parse_s`` under 5 s for 1000 tenants (each generated tenant has the demo's feed, so
``dags/factory_feeds.py`` builds 2000 DAGs and ``dags/factory_pipelines.py`` 1000).

    .venv/bin/python bench/parse.py --tenants 1000
    .venv/bin/python bench/parse.py --tenants 200 --profile /tmp/parse.prof   # /tmp/parse.<file>.prof
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: the DAG files whose parse grows with the number of tenants (feeds: each generated tenant has the demo's;
#: the sweep: one DAG per cluster)
DAG_FILES = tuple(f for f in ("factory_pipelines.py", "factory_feeds.py", "platform_slurm_probe.py",
                              "platform_tenant_specs.py", "platform_slurm_sweep.py") if (REPO / "dags" / f).is_file())


def write_specs(folder: Path, count: int) -> list[str]:
    """``count`` valid tenant specs in ``folder``, each a copy of the demo tenant's under its own names."""
    import yaml

    from aifactory import layout

    demo = yaml.safe_load((layout.TENANTS_DIR / "demo.yaml").read_text())
    names = []
    for i in range(count):
        tenant = f"t{i:04d}"
        spec: dict[str, Any] = copy.deepcopy(demo)  # YAML dates (a feed's start_date) included
        spec.update(tenant=tenant, display_name=f"Bench tenant {i}", bucket=f"aifp-bench-{tenant}",
                    airflow_users=[f"user-{tenant}"])
        spec["identity"] = {"unix_user": f"aifp-{tenant}", "ssh_conn_id": f"aifactory_hpc_local_{tenant}",
                            "s3_conn_id": f"aifactory_s3_{tenant}"}
        spec["slurm"]["account"] = tenant
        spec["defaults"]["dataset_uri"] = layout.s3_uri(spec["bucket"], layout.raw_prefix(tenant)) + "iris.csv"
        (folder / f"{tenant}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        names.append(tenant)
    return names


def preload() -> float:
    """Import what a dag-processor has loaded before it parses a file; return the seconds it took."""
    start = time.perf_counter()
    import airflow  # noqa: F401
    import airflow.sdk  # noqa: F401
    from airflow.dag_processing.dagbag import DagBag  # noqa: F401
    from airflow.serialization.serialized_objects import DagSerialization  # noqa: F401

    sys.path[:0] = [str(REPO), str(REPO / "include")]
    import operators.slurm  # noqa: F401
    import operators.stages  # noqa: F401
    import operators.sweep  # noqa: F401
    import operators.training  # noqa: F401
    return time.perf_counter() - start


def _parse_one(path: Path, profile: Path | None, context_dag_id: str | None = None,
               serialize: bool = True) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.context import _AIRFLOW_PARSING_CONTEXT_DAG_ID

    if context_dag_id:  # as the task runner sets it (task_runner.parse, _airflow_parsing_context_manager)
        os.environ[_AIRFLOW_PARSING_CONTEXT_DAG_ID] = context_dag_id
    from airflow.serialization.serialized_objects import DagSerialization

    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start, cpu = time.perf_counter(), time.process_time()
    bag = DagBag(dag_folder=str(path), safe_mode=False)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    if profile:
        profiler.disable()
        profiler.dump_stats(str(profile))
    start = time.perf_counter()
    for dag in bag.dags.values() if serialize else ():  # what the dag-processor does next, within dag_file_processor_timeout
        DagSerialization.to_dict(dag)
    serialize_s = time.perf_counter() - start
    return {"seconds": seconds, "cpu_s": cpu_s, "serialize_s": serialize_s, "dags": len(bag.dags),
            "first_dag": min(bag.dags, default=None),
            "errors": {Path(k).name: v.splitlines()[0] for k, v in bag.import_errors.items()}}


def parse(files: tuple[str, ...], profile: Path | None = None) -> dict[str, Any]:
    """Load each DAG file with a DagBag of its own in a forked child, as the dag-processor does (a
    fresh process per file, forked from one that has Airflow imported): no cache of one file's
    parse can make the next file's cheaper here if it could not there."""
    per_file: dict[str, float] = {}
    serialize: dict[str, float] = {}
    cpu_s = 0.0
    dags = 0
    errors: dict[str, str] = {}
    task_parse: dict[str, float] = {}
    for name in files:
        out = _in_child(name, lambda n=name: _parse_one(REPO / "dags" / n, profile and profile.with_suffix(
            f".{Path(n).stem}.prof")))
        per_file[name] = round(out["seconds"], 3)
        serialize[name] = round(out["serialize_s"], 3)
        cpu_s += out["cpu_s"]
        dags += out["dags"]
        errors.update(out["errors"])
        if out["first_dag"]:
            # a task process of that file's first DAG: the task runner parses the file with Airflow's
            # parsing context naming its DAG (a DAG file may build just that one)
            task = _in_child(name, lambda n=name, d=out["first_dag"]: _parse_one(REPO / "dags" / n, None, context_dag_id=d,
                                                                                 serialize=False))
            task_parse[name] = round(task["seconds"], 3)
    return {"files": per_file, "dags": dags, "import_errors": errors, "parse_s": max(per_file.values()),
            "parse_total_s": sum(per_file.values()), "parse_cpu_s": cpu_s,
            "serialize_files": serialize, "task_parse_files": task_parse}


def _in_child(name: str, work: Any) -> dict[str, Any]:
    """``work()`` in a forked child (see :func:`parse`); its JSON result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: parse, report, and end as a task process ends (no teardown)
        os.close(read_end)
        os.write(write_end, json.dumps(work()).encode())
        os.close(write_end)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not raw:
        raise SystemExit(f"parsing {name} failed in its child process (wait status {status}); see above")
    return json.loads(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--profile", type=Path, help="write a cProfile of each file's parse next to this path (<stem>.<file>.prof)")
    args = parser.parse_args(argv)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    imports_s = preload()
    with tempfile.TemporaryDirectory(prefix="aifp-parse-") as tmp:
        write_specs(Path(tmp), args.tenants)
        from aifactory import layout

        os.environ[layout.TENANTS_DIR_ENV] = tmp
        result = parse(DAG_FILES, args.profile)
    for name, secs in result["files"].items():
        print(f"{name:32s} {secs:8.3f} s", file=sys.stderr)
    print(json.dumps({
        "tenants": args.tenants,
        "parse_s": round(result["parse_s"], 3),
        "slowest_file": max(result["files"], key=result["files"].get),
        "parse_total_s": round(result["parse_total_s"], 3),
        "per_tenant_ms": round(1000 * result["parse_total_s"] / max(args.tenants, 1), 2),
        "parse_cpu_s": round(result["parse_cpu_s"], 3),
        "dags": result["dags"],
        "import_errors": result["import_errors"],
        "files": result["files"],
        "serialize_s": round(sum(result["serialize_files"].values()), 3),
        "serialize_files": result["serialize_files"],
        "task_parse_s": round(max(result["task_parse_files"].values(), default=0.0), 3),
        "task_parse_files": result["task_parse_files"],
        "imports_s": round(imports_s, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
