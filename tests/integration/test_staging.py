"""Staging in both modes against the real sshd (pinned host key) and the real S3 endpoint.

push: the worker streams S3 objects to the HPC side, as tar streams through the OpenSSH client
(or, without an ``ssh`` binary, into SFTP files), several in flight; pull: a fixed script on
the HPC side fetches presigned URLs handed over on stdin. Both land in a private temporary
directory, are checked by sha256 on the HPC side, and are renamed into place only when all match.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from pathlib import Path

import pytest

from aifactory.data.ingest import ingest_dataset
from aifactory.data.manifest import DatasetManifest, FileEntry
from aifactory.hpc.remote import ParamikoShell, RemoteError, q, sha256_many
from aifactory.hpc.staging import StagingOptions, stage_dataset
from aifactory.layout import STAGING_MARKER
from tests.conftest import tenant_areas

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BUCKET = "aifactory"
#: push through the OpenSSH client (tar stream), push over SFTP (no ``ssh`` binary), pull
MODES = ["push", "push-sftp", "pull"]
TRANSPORT_LOG = {"push": "over OpenSSH", "push-sftp": "over SFTP", "pull": "fetched by the HPC side"}




@pytest.fixture(scope="module")
def sharded(s3_client, tmp_path_factory):
    """iris in 5 shards (several files to have in flight)."""
    key = f"itest/raw/iris-{secrets.token_hex(3)}.csv"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=(REPO / "include/sample_data/iris.csv").read_bytes())
    manifest = ingest_dataset(
        s3_client, source_uri=f"s3://{BUCKET}/{key}", bucket=BUCKET, tenant="itest",
        workdir=tmp_path_factory.mktemp("ingest"), log=lambda m: None, row_group_rows=16, shard_rows=32,
    )
    assert len(manifest.files) == 5
    return manifest, f"itest/datasets/{manifest.name}/{manifest.version}/"


def _stage(s3, shell, areas, dataset, mode, logs, **opts):
    manifest, prefix = dataset
    if mode == "push-sftp":
        shell, mode = ParamikoShell(shell.client), "push"  # the same login, no OpenSSH client
    return stage_dataset(
        s3, shell, bucket=BUCKET, dataset_prefix=prefix, manifest=manifest, areas=areas,
        log=logs.append, options=StagingOptions(mode=mode, parallel=3, python="/srv/aifactory/venv/bin/python", **opts),
    )


@pytest.mark.parametrize("mode", MODES)
def test_stage_verifies_skips_and_resends_only_tampered(s3_client, shell, test_areas, sharded, mode):
    manifest, _ = sharded
    logs: list[str] = []
    first = _stage(s3_client, shell, test_areas, sharded, mode, logs)
    assert not first.skipped and first.sent_files == 5 and first.mode == mode.split("-")[0]
    assert any(TRANSPORT_LOG[mode] in line for line in logs), logs
    remote = first.remote_dir
    sums = sha256_many(shell, [f"{remote}/{f.path}" for f in manifest.files])
    assert sums == {f"{remote}/{f.path}": f.sha256 for f in manifest.files}
    # private directories all the way down, nothing left over beside the version
    _, out, _ = shell.run(
        f"stat -c %a {q(test_areas.scratch)} {q(test_areas.scratch + '/datasets')} {q(remote + '/..')} {q(remote)}; "
        f"ls -A {q(remote + '/..')}"
    )
    assert out.split()[:4] == ["700"] * 4
    assert out.split()[4:] == [manifest.version]
    _, listing, _ = shell.run(f"ls -A {q(remote)}")
    assert sorted(listing.split()) == sorted([f.path for f in manifest.files] + ["manifest.json", STAGING_MARKER])
    assert any("MB/s" in line for line in logs)

    # unchanged: skipped from the marker, without hashing anything again
    logs.clear()
    second = _stage(s3_client, shell, test_areas, sharded, mode, logs)
    assert second.skipped and second.sent_files == 0
    assert not any("hashed" in line for line in logs)

    # tampered (same size, rewritten in place) and partial (truncated): detected, only those re-sent
    victim, partial = (f"{remote}/{manifest.files[i].path}" for i in (1, 3))
    shell.run(f"printf X | dd of={q(victim)} bs=1 seek=10 conv=notrunc 2>/dev/null; truncate -s 100 {q(partial)}")
    logs.clear()
    third = _stage(s3_client, shell, test_areas, sharded, mode, logs)
    assert not third.skipped and third.sent_files == 2 and third.reused_files == 3
    assert sha256_many(shell, [victim, partial]) == {victim: manifest.files[1].sha256, partial: manifest.files[3].sha256}
    assert any("missing or differ" in line for line in logs)


@pytest.mark.parametrize("mode", MODES)
def test_missing_file_is_resent_and_reverify_hashes_everything(s3_client, shell, test_areas, sharded, mode):
    manifest, _ = sharded
    first = _stage(s3_client, shell, test_areas, sharded, mode, [])
    shell.run("rm -f -- " + q(f"{first.remote_dir}/{manifest.files[0].path}"))
    again = _stage(s3_client, shell, test_areas, sharded, mode, [])
    assert again.sent_files == 1 and again.reused_files == 4
    logs: list[str] = []
    third = _stage(s3_client, shell, test_areas, sharded, mode, logs, reverify=True)
    assert third.skipped and any("hashed 5 file(s)" in line for line in logs)


@pytest.mark.parametrize("mode", MODES)
def test_mismatch_stages_nothing(s3_client, shell, test_areas, sharded, mode):
    manifest, prefix = sharded
    wrong = [dataclasses.replace(manifest.files[0], sha256="0" * 64), *manifest.files[1:]]
    bad = DatasetManifest.from_dict({**manifest.to_dict(), "files": [dataclasses.asdict(f) for f in wrong]})
    with pytest.raises(RemoteError, match="part-00000.parquet"):
        _stage(s3_client, shell, test_areas, (bad, prefix), mode, [])
    _, out, _ = shell.run(f"ls -A {q(test_areas.scratch + '/datasets/' + manifest.name)}")
    assert out.split() == []  # no version, no temporary directory


def test_pull_keeps_urls_out_of_logs_and_argv(s3_client, shell, test_areas, sharded):
    logs: list[str] = []
    _stage(s3_client, shell, test_areas, sharded, "pull", logs)
    text = "\n".join(logs)
    assert "X-Amz-Signature" not in text and "http" not in text
    assert any("fetched by the HPC side" in line for line in logs)
    # the fixed script is installed once, read-only, in the tenant's project area (not on scratch)
    _, out, _ = shell.run(f"stat -c '%a %n' {q(test_areas.project)}/.aifp/bin/aifp_fetch-*.py")
    assert out.startswith("500 ")


def test_fetch_script_refuses_bad_requests(shell, test_areas, sharded, s3_client):
    from aifactory.hpc.remote import run_with_input
    from aifactory.hpc.staging import install_fetch_script

    shell.run("mkdir -p -m 0700 " + q(test_areas.scratch + "/x"))
    script = install_fetch_script(shell, test_areas)
    bad = {"files": [{"name": "../evil", "url": "http://127.0.0.1:1/x", "sha256": "0" * 64, "bytes": 1}]}
    rc, out, _ = run_with_input(shell, f"/srv/aifactory/venv/bin/python {q(script)} --dest {q(test_areas.scratch + '/x')}",
                                json.dumps(bad).encode())
    assert rc == 2 and "bad request" in out
    expired = s3_client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "nope"}, ExpiresIn=1)
    req = {"files": [{"name": "a.bin", "url": expired, "sha256": "0" * 64, "bytes": 1}]}
    rc, out, _ = run_with_input(shell, f"/srv/aifactory/venv/bin/python {q(script)} --dest {q(test_areas.scratch + '/x')}",
                                json.dumps(req).encode())
    assert rc == 3 and "failed a.bin HTTP" in out and "X-Amz" not in out


def test_receive_mode_keeps_only_verified_files(shell, test_areas):
    """Push's HPC side: a file whose bytes do not match, a stream cut short and a bad header leave
    nothing under the file's name; good files before them stay."""
    import hashlib

    from aifactory.hpc.remote import run_with_input
    from aifactory.hpc.staging import install_fetch_script

    dest = test_areas.scratch + "/rx"
    shell.run("mkdir -p -m 0700 " + q(dest))
    script = install_fetch_script(shell, test_areas)
    command = f"/srv/aifactory/venv/bin/python {q(script)} --dest {q(dest)} --receive"

    def header(name: str, data: bytes, sha: str | None = None) -> bytes:
        entry = {"name": name, "bytes": len(data), "sha256": sha or hashlib.sha256(data).hexdigest()}
        return json.dumps(entry).encode() + b"\n"

    good, other = b"a" * 3_000_000, b"b" * 1000
    stream = header("good.bin", good) + good + header("tampered.bin", other, "0" * 64) + other
    stream += header("short.bin", good) + good[:5000]
    rc, out, _ = run_with_input(shell, command, stream)
    assert rc == 3
    assert "ok good.bin" in out and "failed tampered.bin got 1000 bytes with sha256" in out and "failed short.bin the stream ended early" in out
    _, listing, _ = shell.run(f"ls -A {q(dest)}")
    assert listing.split() == ["good.bin"]
    assert sha256_many(shell, [dest + "/good.bin"]) == {dest + "/good.bin": hashlib.sha256(good).hexdigest()}

    rc, out, _ = run_with_input(shell, command, json.dumps({"name": "../evil", "bytes": 1, "sha256": "0" * 64}).encode() + b"\nx")
    assert rc == 2 and "bad request" in out
    _, listing, _ = shell.run(f"ls -A {q(dest)} {q(test_areas.scratch)}")
    assert "evil" not in listing


def test_push_refuses_a_host_key_other_than_the_pinned_one(s3_client, ssh_client, stack_env, test_areas, sharded,
                                                           test_tenant):
    import dataclasses as dc

    from aifactory.local.localstack import bulk_pipe

    pipe = bulk_pipe(stack_env, test_tenant)
    pattern = pipe.known_hosts_line.split()[0]
    # a valid ed25519 key that is not the server's
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    sh = ParamikoShell(ssh_client, bulk=dc.replace(pipe, known_hosts_line=f"{pattern} {other}"))
    with pytest.raises(RemoteError, match="exit 255"):
        _stage(s3_client, sh, test_areas, sharded, "push", [])
    manifest, _ = sharded
    _, out, _ = sh.run(f"ls -A {q(test_areas.scratch + '/datasets/' + manifest.name)}")
    assert out.split() == []


@pytest.mark.parametrize("mode, link, target", [
    ("push", "datasets", "elsewhere"),  # the tenant's own other folder
    ("pull", "datasets/{name}", "elsewhere"),
    ("push-sftp", "datasets/{name}/{version}", "elsewhere"),
    ("push", "datasets", "acme"),  # another tenant's area: refused before any attempt
])
def test_a_real_symlink_in_the_destination_stops_the_stage_before_any_write(
        s3_client, shell, stack_env, test_areas, sharded, mode, link, target):
    from aifactory import layout
    from aifactory.hpc.staging import SymlinkInPath

    manifest, _ = sharded
    link_path = f"{test_areas.scratch}/{link.format(name=manifest.name, version=manifest.version)}"
    dest = (layout.hpc_datasets_dir(tenant_areas("acme")) if target == "acme" else f"{test_areas.scratch}/elsewhere")
    rc, _, err = shell.run(f"mkdir -p -m 0700 {q(test_areas.scratch + '/elsewhere')} {q(link_path.rsplit('/', 1)[0])} "
                           f"&& ln -s {q(dest)} {q(link_path)} && test -L {q(link_path)}")
    assert rc == 0, err
    with pytest.raises(SymlinkInPath, match=f"{link_path}.* is a symlink"):
        _stage(s3_client, shell, test_areas, sharded, mode, [])
    _, out, _ = shell.run(f"ls -A {q(test_areas.scratch + '/elsewhere')}")
    assert out.split() == []  # nothing was written through the link


def test_staging_options_are_checked():
    with pytest.raises(Exception, match="push.*pull"):
        StagingOptions(mode="carrier-pigeon")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="parallel"):
        StagingOptions(parallel=0)
    assert FileEntry  # imported for type use above
