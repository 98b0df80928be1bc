"""Bench: the project's quality gate (GX 1.x, per-row checks by batch, aggregates exact on the whole
dataset) against the same checks written
directly in pyarrow.compute, on the same published shards fetched from the same S3 endpoint.

    .venv/bin/python bench/quality.py                 # 5M rows (~850 MB CSV)
    .venv/bin/python bench/quality.py --rows 200000   # quick

The dataset is ingested once (content-addressed, so later runs reuse it). Suite:
include/expectations/bench_synthetic.json (row count, id unique across all shards, label not null
and in a set, 15 features not null and within range, and dataset-wide aggregates: each feature's
mean and standard deviation, the label's distinct values, the id's median: 66 expectations). The
last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

PROJECT = """
import json, os, sys, tempfile
from pathlib import Path
from aifactory.data.manifest import load_manifest
from aifactory.data.quality import validate_dataset
from aifactory.data.s3 import make_client
s3 = make_client(endpoint_url=os.environ["AIFP_S3_ENDPOINT"], access_key=os.environ["AWS_ACCESS_KEY_ID"],
                 secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])
prefix, suite, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
m = load_manifest(s3, "aifactory", prefix)
with tempfile.TemporaryDirectory(dir=sys.argv[4]) as tmp:
    s = validate_dataset(s3, bucket="aifactory", manifest=m, dataset_prefix=prefix, suite_path=Path(suite),
                         params=params, workdir=Path(tmp), log=lambda x: print(x, flush=True))
print("RESULT", s["success"], s["evaluated_expectations"])
"""

PYARROW = """
import json, os, sys
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
from aifactory.data.manifest import load_manifest
from aifactory.data.s3 import make_client
s3 = make_client(endpoint_url=os.environ["AIFP_S3_ENDPOINT"], access_key=os.environ["AWS_ACCESS_KEY_ID"],
                 secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])
prefix, feats = sys.argv[1], json.loads(sys.argv[2])
m = load_manifest(s3, "aifactory", prefix)
labels = pa.array(["cat_a", "cat_b", "cat_c", "cat_d"])
rows, failures, ids, labels_seen = 0, 0, [], set()
n_valid, sums, sumsq = {f: 0 for f in feats}, {f: 0.0 for f in feats}, {f: 0.0 for f in feats}
for f in m.files:
    data = s3.get_object(Bucket="aifactory", Key=prefix + f.path)["Body"].read()
    t = pq.read_table(pa.BufferReader(data), columns=["id", "label", *feats])
    rows += t.num_rows
    failures += t["label"].null_count
    failures += t.num_rows - pc.sum(pc.is_in(t["label"], value_set=labels)).as_py()
    for col in feats:
        a = t[col]
        failures += a.null_count
        failures += pc.sum(pc.or_(pc.less(a, -100), pc.greater(a, 100))).as_py() or 0
        n_valid[col] += len(a) - a.null_count
        sums[col] += pc.sum(a).as_py()
        sumsq[col] += pc.sum(pc.multiply(a, a)).as_py()
    labels_seen |= set(pc.unique(t["label"]).to_pylist())
    ids.append(t["id"])
all_ids = pa.chunked_array([c for i in ids for c in i.chunks])
dupes = rows - pc.count_distinct(all_ids).as_py()
for col in feats:
    n = n_valid[col]
    mean = sums[col] / n
    std = ((sumsq[col] - n * mean * mean) / (n - 1)) ** 0.5
    failures += (not -10 <= mean <= 10) + (not 50 <= std <= 65)
failures += not labels_seen <= {"cat_a", "cat_b", "cat_c", "cat_d", None}
failures += not pc.quantile(all_ids, q=0.5).to_pylist()[0] >= 0
print("RESULT", rows >= 1000 and failures == 0 and dupes == 0, rows, failures, dupes)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=c.DEFAULT_ROWS)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each contender; medians are reported")
    args = ap.parse_args()
    env = c.stack_env()
    s3 = c.s3_client(env)
    m = c.ingested_dataset(s3, args.rows)
    print(f"quality bench: {m.rows} rows in {len(m.files)} shard(s), {m.total_bytes / 1e6:.0f} MB of Parquet; "
          f"{c.machine_note()}", flush=True)
    suite = c.REPO / "include" / "expectations" / "bench_synthetic.json"
    params = {"label_column": "label", "feature_columns": c.feature_columns()}
    projects, baselines = [], []
    for _ in range(args.repeat):  # interleaved, medians reported
        projects.append(c.run_child(PROJECT, m.prefix, str(suite), json.dumps(params), str(c.scratch_dir())))
        baselines.append(c.run_child(PYARROW, m.prefix, json.dumps(c.feature_columns())))
    project, baseline = c.median_run(projects), c.median_run(baselines)
    print("\n".join("  | " + line for line in project.output.splitlines()[-12:]), flush=True)
    print("  | pyarrow.compute: " + baseline.output.strip().splitlines()[-1], flush=True)
    c.print_table([
        (f"contender (median of {args.repeat})", "wall s", "peak MiB", "rows/s"),
        ("project quality gate (GX 1.x, S3 shards)", f"{project.wall_s:.1f}", f"{project.peak_mib:.0f}", f"{m.rows / project.wall_s:,.0f}"),
        ("same checks in pyarrow.compute (S3 shards)", f"{baseline.wall_s:.1f}", f"{baseline.peak_mib:.0f}", f"{m.rows / baseline.wall_s:,.0f}"),
    ])
    ratio = project.wall_s / baseline.wall_s
    print(f"project / pyarrow.compute: {ratio:.2f}x (target <= 1.5x)", flush=True)
    c.emit({
        "rows": m.rows,
        "shards": len(m.files),
        "project_wall_s": round(project.wall_s, 2),
        "project_peak_mib": round(project.peak_mib, 1),
        "pyarrow_wall_s": round(baseline.wall_s, 2),
        "pyarrow_peak_mib": round(baseline.peak_mib, 1),
        "project_vs_pyarrow": round(ratio, 3),
        "repeat": args.repeat,
        "project_runs_s": [round(r.wall_s, 2) for r in projects],
        "pyarrow_runs_s": [round(r.wall_s, 2) for r in baselines],
    })


if __name__ == "__main__":
    main()
