"""The doctor: check every cluster and every tenant, and say what to fix.

``python -m aifactory.platform.doctor [--tenant NAME] [--ssh-conn CONN_ID]`` (``make doctor``)
checks, through the same Airflow connections the tasks use:

* each tenant spec file loads (a broken one is named with its key);
* each cluster's service connection: reachable (TCP), host key (the pinned one), login;
* each tenant's SSH connection: the same, its login is the spec's Unix user, and its areas
  on the cluster (project and scratch) are its own, mode 700; on a site with a data-transfer node,
  the same login there (reachable, host key, login) and the scratch area as that node sees it;
* each tenant's Slurm account, through the service identity (``sacctmgr show assoc``): only the
  tenant's user is associated, and ``GrpTRESMins`` is the spec's allocation;
* each tenant's S3 credential: its own bucket can be listed, written, read and cleaned up; every
  other tenant's bucket is refused (list and write).

It prints a table (check, target, OK/FAIL, what was verified or what to fix) and exits 1 if
anything failed (``--json``: the same rows as JSON). ``--ssh-conn`` checks only the named SSH connections (reachability, host key,
login). The verdicts are :mod:`aifactory.platform.doctor_checks`; this module runs the probes. It
is a platform tool that runs in the Airflow venv: it reads connections through Airflow (the stack's
environment and the connections file) and reuses the factory's SSH hook, imported when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aifactory import layout
from aifactory.platform.doctor_checks import (
    Finding,
    SSHTarget,
    association_finding,
    directory_finding,
    environment_finding,
    foreign_bucket_finding,
    limits_finding,
    own_bucket_finding,
    ssh_findings,
    unreachable,
)
from aifactory.platform.onboard import format_table
from aifactory.tenants.spec import ClusterSpec, TenantSpec, load_cluster, load_tenant_specs
from aifactory.text import printable

#: seconds for a TCP connect and for the SSH handshake: a doctor answers quickly or says why not
CONNECT_TIMEOUT_S = 8.0


def _tcp(host: str, port: int) -> BaseException | None:
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
        return None
    except OSError as exc:
        return exc


@contextlib.contextmanager
def ssh_session(conn_id: str, findings: list[Finding], *, fix: str, transfer: bool = False) -> Iterator[Any]:
    """Check one SSH connection (definition, reachability, host key, login); yield the connected
    hook, or ``None`` when a check failed (the failure is in ``findings``).

    :param transfer: the connection's login on the site's data-transfer node (``transfer_host``)
        instead of the login node, as staging and export reach it.
    """
    from operators.hooks import FactorySSHHook

    hook = FactorySSHHook(ssh_conn_id=conn_id, conn_timeout=CONNECT_TIMEOUT_S, connect_attempts=1,
                          transfer=transfer)
    try:
        ep = hook.endpoint  # the login node's, or the data-transfer node's for a transfer hook
    except Exception as exc:  # not defined, or refused by the factory's rules (no pinned key, ...)
        findings.append(Finding("connection", conn_id, False, f"{printable(exc, max_chars=400)}; {fix}"))
        yield None
        return
    target = SSHTarget(conn_id, ep.host, ep.port, ep.username, ep.key_file, ep.host_key)
    tcp = _tcp(ep.host, ep.port)
    if tcp is not None:
        findings.append(Finding("reachable", target.where, False, unreachable(tcp, ep.host, ep.port)))
        findings.extend(Finding(c, target.where, False, "not checked: the cluster is unreachable")
                        for c in ("host key", "login"))
        yield None
        return
    findings.append(Finding("reachable", target.where, True, f"{ep.host}:{ep.port} answers"))
    try:
        hook.get_conn()
    except Exception as exc:
        findings.extend(ssh_findings(target, exc))
        yield None
        return
    findings.extend(ssh_findings(target, None))
    try:
        yield hook
    finally:
        hook.close()


def check_cluster(cluster: ClusterSpec, tenants: Sequence[TenantSpec], findings: list[Finding]) -> None:
    """The service connection, and every tenant's Slurm association and limits through it."""
    from aifactory.platform.slurm_accounts import SlurmAdmin, allocation_tres_mins

    fix = f"set the cluster's service connection {cluster.ssh_conn_id} (stack.env: AIRFLOW_CONN_...)"
    with ssh_session(cluster.ssh_conn_id, findings, fix=fix) as hook:
        if hook is not None and cluster.environment.declared:
            findings.append(environment_finding(cluster.name, cluster.environment,
                                                hook.run(cluster.environment.check_command(), timeout=60)))
        for spec in tenants:
            target = f"{spec.tenant}: account {spec.slurm_account}"
            if hook is None:
                findings.extend(Finding(c, target, False, f"not checked: the service connection of cluster "
                                        f"{cluster.name} failed (above)") for c in ("slurm association", "slurm limits"))
                continue
            admin = SlurmAdmin(run=lambda argv: hook.run(shlex.join(argv), timeout=60))
            try:
                findings.append(association_finding(spec.tenant, spec.slurm_account, _unix_user(spec),
                                                    admin.users_of(spec.slurm_account)))
                want = allocation_tres_mins(spec, tracks_gpu=admin.tracks_gpu())
                findings.append(limits_finding(spec.tenant, spec.slurm_account, want,
                                               admin.grp_tres_mins(spec.slurm_account)))
            except Exception as exc:
                findings.append(Finding("slurm association", target, False,
                                        f"sacctmgr through {cluster.ssh_conn_id}: {printable(exc, max_chars=400)}"))


def _unix_user(spec: TenantSpec) -> str:
    return spec.identity.unix_user if spec.identity else "-"


def check_tenant_ssh(spec: TenantSpec, cluster: ClusterSpec, findings: list[Finding]) -> None:
    if spec.identity is None:
        findings.append(Finding("connection", spec.tenant, False, "the spec has no identity; add identity: to it"))
        return
    conn_id, user = spec.identity.ssh_conn_id, spec.identity.unix_user
    with ssh_session(conn_id, findings, fix="run make onboard (it writes the tenant's connection)") as hook:
        if hook is None:
            return
        if hook.endpoint.username != user:
            findings.append(Finding("identity", conn_id, False, f"the connection logs in as "
                                    f"{printable(hook.endpoint.username)}, the spec says {user}; run make onboard"))
        areas = spec.areas(cluster)  # a loaded spec's: its templates were checked when it was read
        for path in areas.roots:  # the project area and, when it is another directory, the scratch area
            findings.append(_area_finding(spec.tenant, hook, path, user))
        if hook.endpoint.transfer is None:
            return
    # staging and export log in to the data-transfer node: the same login, and the scratch area seen there
    with ssh_session(conn_id, findings, fix="fix the connection's transfer_host, or the node", transfer=True) as dtn:
        if dtn is not None:
            findings.append(_area_finding(f"{spec.tenant} (data-transfer node)", dtn, areas.scratch, user))


def _area_finding(label: str, hook: Any, path: str, user: str) -> Finding:
    """``stat`` of one of the tenant's areas as its own login: the user's, mode 700."""
    return directory_finding(label, path, user, hook.run(f"stat -c '%U %a' -- {shlex.quote(path)}", timeout=30))


def _s3_client(conn_id: str) -> Any:
    """A client with the connection's own credential. The connection must exist: S3Hook would
    otherwise fall back to the process's credentials (the platform's, in the stack's environment)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    S3Hook.get_connection(conn_id)
    return S3Hook(aws_conn_id=conn_id).get_conn()


def _attempt(call: Any) -> BaseException | None:
    try:
        call()
        return None
    except Exception as exc:
        return exc


def check_tenant_s3(spec: TenantSpec, others: Sequence[TenantSpec], findings: list[Finding]) -> None:
    if spec.identity is None:
        return
    conn_id = spec.identity.s3_conn_id
    try:
        s3 = _s3_client(conn_id)
    except Exception as exc:
        findings.append(Finding("s3 own bucket", f"{spec.tenant}: {conn_id}", False,
                                f"{printable(exc, max_chars=300)}; run make onboard (it writes the connection)"))
        return
    key = layout.doctor_probe_key(spec.tenant)

    def own() -> None:
        s3.list_objects_v2(Bucket=spec.bucket, Prefix=layout.tenant_prefix(spec.tenant), MaxKeys=1)
        s3.put_object(Bucket=spec.bucket, Key=key, Body=b"doctor")
        if s3.get_object(Bucket=spec.bucket, Key=key)["Body"].read() != b"doctor":
            raise RuntimeError(f"s3://{spec.bucket}/{key} read back other bytes than were written")
        s3.delete_object(Bucket=spec.bucket, Key=key)

    findings.append(own_bucket_finding(spec.tenant, conn_id, spec.bucket, _attempt(own),
                                       f"listed, wrote, read back and deleted s3://{spec.bucket}/{key}"))
    for other in others:
        if other.bucket == spec.bucket:
            continue  # a shared bucket cannot be told apart by bucket policies; specs give each tenant its own
        findings.append(foreign_bucket_finding(spec.tenant, conn_id, other.bucket, other.tenant, _attempt(
            lambda b=other.bucket: s3.list_objects_v2(Bucket=b, MaxKeys=1)), "listing"))
        foreign_key = layout.doctor_probe_key(other.tenant)
        written = _attempt(lambda b=other.bucket, k=foreign_key: s3.put_object(Bucket=b, Key=k, Body=b"doctor"))
        if written is None:  # it should not have been: leave nothing behind
            _attempt(lambda b=other.bucket, k=foreign_key: s3.delete_object(Bucket=b, Key=k))
        findings.append(foreign_bucket_finding(spec.tenant, conn_id, other.bucket, other.tenant, written, "writing"))


def diagnose(tenant_names: Sequence[str] | None = None, ssh_conns: Sequence[str] = (), *,
             tenants_dir: Path | None = None) -> list[Finding]:
    """Every check, in table order: every cluster spec (only the named tenants' with
    ``tenant_names``), each with its tenants."""
    findings: list[Finding] = []
    if ssh_conns:
        for conn_id in ssh_conns:
            with ssh_session(conn_id, findings, fix="define the connection"):
                pass
        return findings
    loaded = load_tenant_specs(tenants_dir)
    tenants = [t for t in loaded.specs if not tenant_names or t.tenant in tenant_names]
    findings.extend(Finding("spec", str(e.path), False, e.message) for e in loaded.errors
                    if not tenant_names or e.path.stem in tenant_names)
    findings.extend(Finding("spec", f"{t.tenant}", True, "loads") for t in tenants)
    every = set() if tenant_names else {p.stem for p in layout.CLUSTERS_DIR.glob("*.yaml")}
    for name in sorted(every | {t.cluster for t in tenants}):
        cluster = load_cluster(name)
        mine = [t for t in tenants if t.cluster == name]
        check_cluster(cluster, mine, findings)
        for spec in mine:
            check_tenant_ssh(spec, cluster, findings)
    for spec in tenants:
        check_tenant_s3(spec, [t for t in loaded.specs if t.tenant != spec.tenant], findings)
    return findings


def report(findings: Sequence[Finding]) -> str:
    rows = [(f.check, f.target, f.verdict, f.detail) for f in findings]
    failed = sum(not f.ok for f in findings)
    summary = f"{len(findings)} check(s), {failed} FAILED" if failed else f"{len(findings)} check(s), all OK"
    return format_table(("check", "target", "result", "detail / what to fix"), rows) + "\n" + summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aifactory.platform.doctor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    parser.add_argument("--ssh-conn", action="append", default=[], metavar="CONN_ID",
                        help="only check these SSH connections: reachability, host key, login (repeatable)")
    parser.add_argument("--json", action="store_true", help="one JSON object per check instead of the table")
    parser.add_argument("--tenants-dir", type=Path, default=layout.tenants_dir(),
                        help="the tenant specs (default: $AIFP_TENANTS_DIR, else %(default)s)")
    args = parser.parse_args(argv)
    logging.getLogger("paramiko").setLevel(logging.WARNING)  # one line per login is noise in a report
    with contextlib.redirect_stdout(sys.stderr):  # Airflow's and boto's log lines stay out of the report
        findings = diagnose(args.tenant, args.ssh_conn, tenants_dir=args.tenants_dir)
    if args.json:
        print(json.dumps([{**asdict(f), "verdict": f.verdict} for f in findings], indent=1))
    else:
        print(report(findings))
    return 1 if any(not f.ok for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
