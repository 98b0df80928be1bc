"""Bench: the project's ingest (S3 -> Parquet in S3, everything included) against raw pyarrow.dataset
and pandas CSV->Parquet on a local copy of the same file, plus the S3 endpoint's own GET and PUT
of the same bytes; peak RSS of each, and the project's peak RSS when the input doubles.

    .venv/bin/python bench/ingest.py                 # 5M rows, ~850 MB
    .venv/bin/python bench/ingest.py --rows 200000   # quick

Runs against the local stack (.stack/stack.env). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

PROJECT = """
import sys, tempfile
from pathlib import Path
from aifactory.data.ingest import ingest_dataset
from aifactory.data.s3 import make_client
import os
s3 = make_client(endpoint_url=os.environ["AIFP_S3_ENDPOINT"], access_key=os.environ["AWS_ACCESS_KEY_ID"],
                 secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])
with tempfile.TemporaryDirectory(dir=sys.argv[3]) as tmp:
    m = ingest_dataset(s3, source_uri=sys.argv[1], bucket="aifactory", tenant="benchmark",
                       dataset_name=sys.argv[2], workdir=Path(tmp), log=lambda s: print(s, flush=True))
print("RESULT", m.rows, len(m.files), m.total_bytes)
"""

PYARROW = """
import sys, tempfile
import pyarrow.dataset as ds
with tempfile.TemporaryDirectory(dir=sys.argv[2]) as out:
    src = ds.dataset(sys.argv[1], format="csv")
    ds.write_dataset(src, out, format="parquet",
                     file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"),
                     max_rows_per_group=131072, min_rows_per_group=131072, max_rows_per_file=1048576)
"""

PANDAS = """
import sys, tempfile, os
import pandas as pd
with tempfile.TemporaryDirectory(dir=sys.argv[2]) as out:
    pd.read_csv(sys.argv[1]).to_parquet(os.path.join(out, "x.parquet"), compression="zstd", index=False)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=c.DEFAULT_ROWS)
    ap.add_argument("--no-double", action="store_true", help="skip the doubled-input run")
    ap.add_argument("--no-pandas", action="store_true", help="skip pandas (slow, GBs of RAM)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of project and pyarrow; medians are reported")
    args = ap.parse_args()

    env = c.stack_env()
    s3 = c.s3_client(env)
    from aifactory.data.s3 import head, upload_file
    from aifactory.layout import datasets_prefix, raw_prefix, s3_uri

    path = c.ensure_csv(args.rows)
    size = path.stat().st_size
    scratch = c.DATA_DIR / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"ingest bench: {path.name}, {size / 1e6:.0f} MB, {args.rows} rows; {c.machine_note()}", flush=True)

    key = raw_prefix(c.TENANT) + f"synthetic-{args.rows}.csv"
    info = head(s3, c.BUCKET, key)
    if info is None or info.size != size:
        upload_file(s3, path, c.BUCKET, key)

    # the endpoint's own cost for the same bytes: one streaming GET, one single-part PUT
    t0 = time.monotonic()
    body = s3.get_object(Bucket=c.BUCKET, Key=key)["Body"]
    for _ in body.iter_chunks(8 << 20):
        pass
    get_s = time.monotonic() - t0
    probe = f"{c.TENANT}/scratch/put-{secrets.token_hex(4)}"
    t0 = time.monotonic()
    with open(path, "rb") as fh:
        s3.put_object(Bucket=c.BUCKET, Key=probe, Body=fh, ContentLength=size)
    put_s = time.monotonic() - t0
    s3.delete_object(Bucket=c.BUCKET, Key=probe)

    # project and pyarrow interleaved, medians reported: load changes on a shared machine hit both
    projects, pyarrows = [], []
    for _ in range(args.repeat):
        name = f"bench-{secrets.token_hex(4)}"
        try:
            projects.append(c.run_child(PROJECT, s3_uri(c.BUCKET, key), name, str(scratch)))
        finally:
            c.delete_prefix(s3, datasets_prefix(c.TENANT) + f"{name}/")
        pyarrows.append(c.run_child(PYARROW, str(path), str(scratch)))
    project, pyarrow = c.median_run(projects), c.median_run(pyarrows)
    print("\n".join("  | " + line for line in project.output.splitlines()[-8:]), flush=True)
    pandas = None if args.no_pandas else c.run_child(PANDAS, str(path), str(scratch))

    double = None
    if not args.no_double:
        folder = raw_prefix(c.TENANT) + f"double-{args.rows}/"
        for part in ("a.csv", "b.csv"):
            if head(s3, c.BUCKET, folder + part) is None:
                s3.copy_object(Bucket=c.BUCKET, Key=folder + part, CopySource={"Bucket": c.BUCKET, "Key": key})
        dname = f"bench-{secrets.token_hex(4)}"
        try:
            double = c.run_child(PROJECT, s3_uri(c.BUCKET, folder), dname, str(scratch))
        finally:
            c.delete_prefix(s3, datasets_prefix(c.TENANT) + f"{dname}/")

    rows = [
        (f"contender (project, pyarrow: median of {args.repeat})", "wall s", "peak MiB", "MB/s of CSV"),
        ("project ingest (S3 -> S3, all included)", f"{project.wall_s:.1f}", f"{project.peak_mib:.0f}", f"{size / project.wall_s / 1e6:.0f}"),
        ("pyarrow.dataset (local file -> local)", f"{pyarrow.wall_s:.1f}", f"{pyarrow.peak_mib:.0f}", f"{size / pyarrow.wall_s / 1e6:.0f}"),
    ]
    if pandas:
        rows.append(("pandas read_csv -> to_parquet (local)", f"{pandas.wall_s:.1f}", f"{pandas.peak_mib:.0f}", f"{size / pandas.wall_s / 1e6:.0f}"))
    rows.append(("S3 endpoint: one streaming GET", f"{get_s:.1f}", "-", f"{size / get_s / 1e6:.0f}"))
    rows.append(("S3 endpoint: one single-part PUT", f"{put_s:.1f}", "-", f"{size / put_s / 1e6:.0f}"))
    if double:
        rows.append(("project ingest, input doubled", f"{double.wall_s:.1f}", f"{double.peak_mib:.0f}", f"{2 * size / double.wall_s / 1e6:.0f}"))
    c.print_table(rows)
    ratio = project.wall_s / pyarrow.wall_s
    print(f"project / pyarrow wall: {ratio:.2f}x (target <= 1.25x); project peak {project.peak_mib:.0f} MiB "
          f"(target <= 512), doubled input {double.peak_mib if double else float('nan'):.0f} MiB", flush=True)
    c.emit({
        "rows": args.rows,
        "csv_bytes": size,
        "project_wall_s": round(project.wall_s, 2),
        "project_peak_mib": round(project.peak_mib, 1),
        "pyarrow_wall_s": round(pyarrow.wall_s, 2),
        "pyarrow_peak_mib": round(pyarrow.peak_mib, 1),
        "pandas_wall_s": round(pandas.wall_s, 2) if pandas else None,
        "pandas_peak_mib": round(pandas.peak_mib, 1) if pandas else None,
        "s3_get_s": round(get_s, 2),
        "s3_put_s": round(put_s, 2),
        "project_vs_pyarrow": round(ratio, 3),
        "peak_mib_at_double_input": round(double.peak_mib, 1) if double else None,
        "double_wall_s": round(double.wall_s, 2) if double else None,
        "repeat": args.repeat,
        "project_runs_s": [round(r.wall_s, 2) for r in projects],
        "pyarrow_runs_s": [round(r.wall_s, 2) for r in pyarrows],
    })


if __name__ == "__main__":
    main()
