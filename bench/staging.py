"""Bench: the project's staging (push: S3 -> tar streams through the OpenSSH client, and the SFTP
fallback; pull: presigned URLs fetched by the HPC-side script) against scp of the same bytes over the same sshd, and a second
staging of the unchanged dataset.

    .venv/bin/python bench/staging.py                 # 5M rows (~850 MB CSV -> ~740 MB Parquet)
    .venv/bin/python bench/staging.py --rows 200000   # quick

The dataset is ingested once (content-addressed, reused). Each run stages into fresh tenant
directories under the HPC root and removes them afterwards. The last line is JSON.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
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
    ap.add_argument("--repeat", type=int, default=3, help="runs per contender; medians are reported")
    args = ap.parse_args()
    env = c.stack_env()
    s3 = c.s3_client(env)
    import paramiko

    from aifactory.data.s3 import download_to
    from aifactory.hpc.remote import ParamikoShell, q
    from aifactory.hpc.staging import StagingOptions, stage_dataset
    from aifactory.layout import TenantAreas
    from aifactory.local.localstack import bulk_pipe, tenant_login
    from aifactory.tenants import load_cluster, load_tenant

    m = c.ingested_dataset(s3, args.rows)
    total = m.total_bytes
    print(f"staging bench: {len(m.files)} file(s), {total / 1e6:.0f} MB; {c.machine_note()}", flush=True)

    # the same bytes, locally, for scp
    local = c.DATA_DIR / f"shards-{m.version}"
    local.mkdir(parents=True, exist_ok=True)
    for f in m.files:
        if not (local / f.path).exists():
            download_to(s3, c.BUCKET, m.prefix + f.path, local / f.path)

    # the demo tenant's own login, into its own area (0700; the HPC root belongs to root)
    user, key = tenant_login(env, "demo")
    client = paramiko.SSHClient()
    client.load_host_keys(env["AIFP_SSH_KNOWN_HOSTS"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(env["AIFP_SSH_HOST"], port=int(env["AIFP_SSH_PORT"]), username=user,
                   key_filename=key, look_for_keys=False, allow_agent=False)
    cluster = load_cluster("local")
    root = load_tenant("demo").areas(cluster).scratch
    runs: dict[str, list[float]] = {}
    scp_base = ["scp", "-q", "-P", env["AIFP_SSH_PORT"], "-i", key, "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={env['AIFP_SSH_KNOWN_HOSTS']}", "-o", "StrictHostKeyChecking=yes"]
    target = f"{user}@{env['AIFP_SSH_HOST']}"

    with ParamikoShell(client, bulk=bulk_pipe(env, "demo")) as shell:

        def fresh(tag: str) -> str:
            d = f"{root}/bench-{tag}-{secrets.token_hex(3)}"
            shell.run("mkdir -p -m 0700 " + q(d))
            return d

        def scp(tag: str, extra: list[str]) -> None:
            d = fresh(tag)
            try:
                t0 = time.monotonic()
                subprocess.run([*scp_base, *extra, *[str(local / f.path) for f in m.files], f"{target}:{d}/"], check=True)
                runs.setdefault(tag, []).append(time.monotonic() - t0)
            finally:
                shell.run("rm -rf -- " + q(d), timeout=300)

        def stage(mode: str) -> None:
            opts = StagingOptions(mode=mode.split("_")[0], parallel=args.parallel,  # type: ignore[arg-type]
                                  python=cluster.python)
            # push_sftp: the fallback of a worker without the ssh binary (paramiko SFTP)
            via = ParamikoShell(client) if mode == "push_sftp" else shell
            d = fresh(mode)
            try:
                logs: list[str] = []
                t0 = time.monotonic()
                stage_dataset(s3, via, bucket=c.BUCKET, dataset_prefix=m.prefix, manifest=m, areas=TenantAreas(d, d),
                              log=logs.append, options=opts)
                runs.setdefault(mode, []).append(time.monotonic() - t0)
                print(f"  {mode}: " + logs[-1][:160], flush=True)
                t0 = time.monotonic()
                again = stage_dataset(s3, via, bucket=c.BUCKET, dataset_prefix=m.prefix, manifest=m,
                                      areas=TenantAreas(d, d), log=lambda s: None, options=opts)
                assert again.skipped
                runs.setdefault(f"{mode}_restage", []).append(time.monotonic() - t0)
            finally:
                shell.run("rm -rf -- " + q(d), timeout=300)

        for round_ in range(args.repeat):  # interleaved, so that load changes hit every contender
            scp("scp", [])
            scp("scp_gcm", ["-c", "aes128-gcm@openssh.com"])
            stage("push")
            stage("pull")
            if round_ == 0:
                stage("push_sftp")
    client.close()

    med = {k: statistics.median(v) for k, v in runs.items()}
    mbs = {k: total / v / 1e6 for k, v in med.items() if not k.endswith("restage")}
    c.print_table([
        (f"contender (median of {args.repeat})", "wall s", "MB/s"),
        ("scp of the same files, same sshd (default cipher)", f"{med['scp']:.2f}", f"{mbs['scp']:.0f}"),
        ("scp with aes128-gcm (the cipher push prefers)", f"{med['scp_gcm']:.2f}", f"{mbs['scp_gcm']:.0f}"),
        (f"project push ({args.parallel} streams, S3 -> OpenSSH, verified)", f"{med['push']:.2f}", f"{mbs['push']:.0f}"),
        (f"project pull ({args.parallel} in flight, presigned, verified)", f"{med['pull']:.2f}", f"{mbs['pull']:.0f}"),
        ("project push without ssh binary (paramiko SFTP, once)", f"{med['push_sftp']:.2f}", f"{mbs['push_sftp']:.0f}"),
        ("re-staging unchanged (push)", f"{med['push_restage']:.3f}", "-"),
        ("re-staging unchanged (pull)", f"{med['pull_restage']:.3f}", "-"),
    ])
    worst = min(mbs["push"], mbs["pull"])  # the target holds for both modes
    frac = max(med["push_restage"] / med["push"], med["pull_restage"] / med["pull"])
    print(f"project / scp throughput: push {mbs['push'] / mbs['scp']:.2f}x, pull {mbs['pull'] / mbs['scp']:.2f}x "
          f"(target >= 0.8x; against scp with the same cipher: push {mbs['push'] / mbs['scp_gcm']:.2f}x); "
          f"re-staging at most {100 * frac:.1f}% of the first (target <= 5%)", flush=True)
    c.emit({
        "bytes": total,
        "files": len(m.files),
        "repeat": args.repeat,
        "scp_mb_s": round(mbs["scp"], 1),
        "scp_gcm_mb_s": round(mbs["scp_gcm"], 1),
        "push_mb_s": round(mbs["push"], 1),
        "pull_mb_s": round(mbs["pull"], 1),
        "push_sftp_mb_s": round(mbs["push_sftp"], 1),
        "project_mb_s": round(worst, 1),
        "project_vs_scp": round(worst / mbs["scp"], 3),
        "push_vs_scp_same_cipher": round(mbs["push"] / mbs["scp_gcm"], 3),
        "restage_fraction": round(frac, 4),
        "restage_fraction_push": round(med["push_restage"] / med["push"], 4),
        "restage_fraction_pull": round(med["pull_restage"] / med["pull"], 4),
        "runs_s": {k: [round(x, 3) for x in v] for k, v in runs.items()},
    })


if __name__ == "__main__":
    main()
