"""Bench: the project's staging (push: S3 -> SFTP, several files in flight; pull: presigned URLs
fetched by the HPC-side script) against scp of the same bytes over the same sshd, and a second
staging of the unchanged dataset.

    .venv/bin/python bench/staging.py                 # 5M rows (~850 MB CSV -> ~740 MB Parquet)
    .venv/bin/python bench/staging.py --rows 200000   # quick

The dataset is ingested once (content-addressed, reused). Each run stages into fresh tenant
directories under the HPC root and removes them afterwards. The last line is JSON.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=c.DEFAULT_ROWS)
    ap.add_argument("--parallel", type=int, default=4)
    args = ap.parse_args()
    env = c.stack_env()
    s3 = c.s3_client(env)
    import paramiko

    from aifactory.remote import ParamikoShell, q
    from aifactory.s3 import download_to
    from aifactory.staging import StagingOptions, stage_dataset

    m = c.ingested_dataset(s3, args.rows)
    total = m.total_bytes
    print(f"staging bench: {len(m.files)} file(s), {total / 1e6:.0f} MB; {c.machine_note()}", flush=True)

    # the same bytes, locally, for scp
    local = c.DATA_DIR / f"shards-{m.version}"
    local.mkdir(parents=True, exist_ok=True)
    for f in m.files:
        if not (local / f.path).exists():
            download_to(s3, c.BUCKET, m.prefix + f.path, local / f.path)

    client = paramiko.SSHClient()
    client.load_host_keys(env["AIFP_SSH_KNOWN_HOSTS"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(env["AIFP_SSH_HOST"], port=int(env["AIFP_SSH_PORT"]), username=env["AIFP_SSH_USER"],
                   key_filename=env["AIFP_SSH_KEY"], look_for_keys=False, allow_agent=False)
    root = env["AIFP_HPC_ROOT"]
    dirs: list[str] = []
    results: dict[str, float] = {}
    with ParamikoShell(client) as shell:
        try:
            scp_dir = f"{root}/bench-scp-{secrets.token_hex(3)}"
            dirs.append(scp_dir)
            shell.run("mkdir -p -m 0700 " + q(scp_dir))
            t0 = time.monotonic()
            subprocess.run(
                ["scp", "-q", "-P", env["AIFP_SSH_PORT"], "-i", env["AIFP_SSH_KEY"], "-o", "BatchMode=yes",
                 "-o", f"UserKnownHostsFile={env['AIFP_SSH_KNOWN_HOSTS']}", "-o", "StrictHostKeyChecking=yes",
                 *[str(local / f.path) for f in m.files], f"{env['AIFP_SSH_USER']}@{env['AIFP_SSH_HOST']}:{scp_dir}/"],
                check=True,
            )
            results["scp_s"] = time.monotonic() - t0
            print(f"  scp: {results['scp_s']:.1f}s", flush=True)

            for mode in ("push", "pull"):
                tdir = f"{root}/bench-{mode}-{secrets.token_hex(3)}"
                dirs.append(tdir)
                opts = StagingOptions(mode=mode, parallel=args.parallel, python="/srv/aifactory/venv/bin/python")  # type: ignore[arg-type]
                logs: list[str] = []
                t0 = time.monotonic()
                stage_dataset(s3, shell, bucket=c.BUCKET, dataset_prefix=m.prefix, manifest=m, tenant_dir=tdir,
                              log=logs.append, options=opts)
                results[f"{mode}_s"] = time.monotonic() - t0
                print("\n".join("  | " + line for line in logs[-3:]), flush=True)
                t0 = time.monotonic()
                again = stage_dataset(s3, shell, bucket=c.BUCKET, dataset_prefix=m.prefix, manifest=m,
                                      tenant_dir=tdir, log=lambda s: None, options=opts)
                assert again.skipped
                results[f"{mode}_restage_s"] = time.monotonic() - t0
        finally:
            for d in dirs:
                shell.run("rm -rf -- " + q(d), timeout=300)
    client.close()

    mbs = {k: total / v / 1e6 for k, v in results.items() if not k.endswith("restage_s")}
    c.print_table([
        ("contender", "wall s", "MB/s"),
        ("scp of the same files, same sshd", f"{results['scp_s']:.1f}", f"{mbs['scp_s']:.0f}"),
        (f"project push ({args.parallel} in flight, S3 -> SFTP, verified)", f"{results['push_s']:.1f}", f"{mbs['push_s']:.0f}"),
        (f"project pull ({args.parallel} in flight, presigned, verified)", f"{results['pull_s']:.1f}", f"{mbs['pull_s']:.0f}"),
        ("re-staging unchanged (push)", f"{results['push_restage_s']:.2f}", "-"),
        ("re-staging unchanged (pull)", f"{results['pull_restage_s']:.2f}", "-"),
    ])
    best = max(mbs["push_s"], mbs["pull_s"])
    frac = results["push_restage_s"] / results["push_s"]
    print(f"best project / scp throughput: {best / mbs['scp_s']:.2f}x (target >= 0.8x); push alone "
          f"{mbs['push_s'] / mbs['scp_s']:.2f}x; re-staging {100 * frac:.1f}% of first (target <= 5%)", flush=True)
    c.emit({
        "bytes": total,
        "files": len(m.files),
        "scp_mb_s": round(mbs["scp_s"], 1),
        "push_mb_s": round(mbs["push_s"], 1),
        "pull_mb_s": round(mbs["pull_s"], 1),
        "project_mb_s": round(best, 1),
        "project_mode": "push" if mbs["push_s"] >= mbs["pull_s"] else "pull",
        "restage_fraction": round(frac, 4),
        "restage_fraction_pull": round(results["pull_restage_s"] / results["pull_s"], 4),
        "push_s": round(results["push_s"], 2),
        "pull_s": round(results["pull_s"], 2),
        "scp_s": round(results["scp_s"], 2),
    })


if __name__ == "__main__":
    main()
