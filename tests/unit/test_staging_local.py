"""Staging logic against a local stand-in for the HPC side (bash and files on this machine) and an
in-memory object store: push, marker-based skip, partial/tampered detection, nothing half-staged."""

from __future__ import annotations

import hashlib
import io
import subprocess
from pathlib import Path
from typing import Any

import pytest

from aifactory.data.manifest import DatasetManifest, FileEntry
from aifactory.errors import InputError
from aifactory.hpc.remote import OpenSSHPipe, RemoteError, stat_files
from aifactory.hpc.staging import StagingOptions, stage_dataset
from aifactory.layout import STAGING_MARKER, TenantAreas, hpc_dataset_dir, platform_bin_dir


class LocalShell:
    """RemoteShell over local bash; its SFTP is plain ``open`` (no ``open_sftp``: one at a time)."""

    def run(self, command: str, *, timeout: float | None = None) -> tuple[int, str, str]:
        p = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr

    def sftp_client(self) -> Any:
        class _Sftp:
            def open(self, filename: str, mode: str = "r", bufsize: int = -1) -> Any:
                return open(filename, mode)

        return _Sftp()


class LocalPipe(OpenSSHPipe):
    """The bulk channel's own code (stdin pipe, output files, exit status) with ``bash -c`` where
    the ``ssh`` client would run."""

    def argv(self, command: str, known_hosts_file: str) -> list[str]:
        return ["bash", "-c", command]


class StreamingLocalShell(LocalShell):
    """LocalShell that also offers the bulk channel: push streams through the receiving script."""

    bulk = LocalPipe(host="localhost", port=22, username="nobody", key_file="-", known_hosts_line="-")


TRANSPORTS = {"sftp": LocalShell, "stream": StreamingLocalShell}


class Store:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.gets: list[str] = []

    def get_object(self, *, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:
        self.gets.append(Key)
        return {"Body": io.BytesIO(self.objects[Key])}


def _dataset(n: int = 3) -> tuple[Store, DatasetManifest]:
    blobs = {f"part-{i:05d}.parquet": bytes([i]) * (1000 + i) for i in range(n)}
    files = [FileEntry(path=k, bytes=len(v), sha256=hashlib.sha256(v).hexdigest(), rows=1) for k, v in blobs.items()]
    m = DatasetManifest(tenant="t", name="d", version="v-1", created_at="x", schema=[], rows=n, files=files,
                        sources=[])
    return Store({"t/datasets/d/v-1/" + k: v for k, v in blobs.items()}), m


def _stage(store: Store, m: DatasetManifest, tenant_dir: Path, transport: str = "sftp", *,
           areas: TenantAreas | None = None, **kw: Any):
    """Stage into ``tenant_dir`` (project and scratch area in one), or into ``areas``."""
    logs: list[str] = []
    r = stage_dataset(store, TRANSPORTS[transport](), bucket="b", dataset_prefix="t/datasets/d/v-1/", manifest=m,
                      areas=areas or TenantAreas(str(tenant_dir), str(tenant_dir)), log=logs.append, **kw)
    return r, logs


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_the_dataset_goes_to_the_scratch_area_and_the_fetch_script_to_the_project_area(tmp_path, transport):
    store, m = _dataset()
    areas = TenantAreas(project=str(tmp_path / "project" / "t"), scratch=str(tmp_path / "scratch" / "u"))
    result, _ = _stage(store, m, tmp_path, transport, areas=areas)
    assert result.remote_dir == hpc_dataset_dir(areas, "d", "v-1")
    assert (Path(areas.scratch) / "datasets" / "d" / "v-1" / STAGING_MARKER).exists()
    assert oct(Path(areas.scratch).stat().st_mode & 0o777) == "0o700"
    assert not (Path(areas.project) / "datasets").exists()  # nothing of the dataset in the project area
    scripts = list(Path(platform_bin_dir(areas)).glob("aifp_fetch-*.py")) if transport == "stream" else []
    assert len(scripts) == (1 if transport == "stream" else 0)  # a streamed push runs the fetch script
    assert not (Path(areas.scratch) / ".aifp").exists()


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_push_skip_and_resend_only_what_changed(tmp_path, transport):
    store, m = _dataset()
    first, logs = _stage(store, m, tmp_path / "t", transport)
    assert any({"sftp": "over SFTP", "stream": "over OpenSSH"}[transport] in line for line in logs)
    final = Path(first.remote_dir)
    assert first.sent_files == 3 and (final / STAGING_MARKER).exists() and (final / "manifest.json").exists()
    assert oct((tmp_path / "t").stat().st_mode & 0o777) == "0o700" and oct(final.stat().st_mode & 0o777) == "0o700"
    assert any("MB/s" in line for line in logs)

    store.gets.clear()
    again, logs = _stage(store, m, tmp_path / "t", transport)
    assert again.skipped and store.gets == [] and not any("hashed" in line for line in logs)

    # same size, rewritten in place: ctime moves, the file is hashed, found bad, re-sent
    victim = final / "part-00001.parquet"
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF
    victim.write_bytes(bytes(data))
    third, logs = _stage(store, m, tmp_path / "t", transport)
    assert third.sent_files == 1 and third.reused_files == 2 and store.gets == ["t/datasets/d/v-1/part-00001.parquet"]
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == m.files[1].sha256
    assert sorted(p.name for p in final.parent.iterdir()) == ["v-1"]  # no leftovers


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
@pytest.mark.parametrize("stored", [b"tampered in the store", b"\x03" * 1002], ids=["size", "content"])
def test_mismatch_stages_nothing(tmp_path, transport, stored):
    store, m = _dataset()
    store.objects["t/datasets/d/v-1/part-00002.parquet"] = stored
    with pytest.raises(RemoteError, match="part-00002.parquet"):
        _stage(store, m, tmp_path / "t", transport, options=StagingOptions(parallel=2))
    assert list((tmp_path / "t" / "datasets" / "d").iterdir()) == []


def test_stat_files_parses_find_output(tmp_path):
    (tmp_path / "a b.bin").write_bytes(b"xyz")
    stats = stat_files(LocalShell(), str(tmp_path))
    assert stats["a b.bin"].size == 3 and stats["a b.bin"].inode == (tmp_path / "a b.bin").stat().st_ino
    assert stat_files(LocalShell(), str(tmp_path / "missing")) == {}


def test_pull_needs_a_shell_that_takes_stdin(tmp_path):
    store, m = _dataset()
    store.generate_presigned_url = lambda *a, **k: "http://127.0.0.1:1/x"  # type: ignore[attr-defined]
    with pytest.raises(RemoteError, match="cannot pass data on stdin"):
        _stage(store, m, tmp_path / "t", options=StagingOptions(mode="pull"))


@pytest.mark.parametrize("kw, says", [({"mode": "ftp"}, "push.*pull"), ({"parallel": 99}, "parallel"),
                                      ({"url_ttl_s": 5}, "url_ttl_s")])
def test_options_are_checked(kw, says):
    with pytest.raises(InputError, match=says):
        StagingOptions(**kw)


def test_ssh_command_line_pins_the_login():
    pipe = OpenSSHPipe(host="login.example", port=2222, username="svc", key_file="/k/id",
                       known_hosts_line="[login.example]:2222 ssh-ed25519 AAAA")
    argv = pipe.argv("echo 'a b'", "/tmp/kh")
    opts = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert {"BatchMode=yes", "StrictHostKeyChecking=yes", "UserKnownHostsFile=/tmp/kh",
            "GlobalKnownHostsFile=/dev/null", "IdentitiesOnly=yes", "PasswordAuthentication=no"} <= opts
    assert argv[:3] == ["ssh", "-F", "/dev/null"]  # no ~/.ssh/config can redirect the host
    assert argv[-3:] == ["--", "login.example", "echo 'a b'"]  # the command stays one argument
    assert argv[argv.index("-i") + 1] == "/k/id" and argv[argv.index("-p") + 1] == "2222"


def test_ssh_command_line_through_a_bastion_pins_both_hosts_and_quotes_the_hop():
    import shlex

    from aifactory.hpc.remote import PinnedHost

    pipe = OpenSSHPipe(host="login.example", port=2222, username="svc", key_file="/k/my id",
                       known_hosts_line="[login.example]:2222 ssh-ed25519 AAAA",
                       jump=PinnedHost(host="bastion.example", port=2223, host_key="ssh-ed25519 BBBB"))
    argv = pipe.argv("true", "/tmp/k h")
    proxy = next(argv[i + 1] for i, a in enumerate(argv) if a == "-o" and argv[i + 1].startswith("ProxyCommand="))
    hop = shlex.split(proxy.removeprefix("ProxyCommand="))  # ssh runs it through /bin/sh
    assert hop[:3] == ["ssh", "-F", "/dev/null"] and hop[-2:] == ["--", "bastion.example"]
    assert hop[hop.index("-W") + 1] == "login.example:2222" and hop[hop.index("-p") + 1] == "2223"
    assert hop[hop.index("-i") + 1] == "/k/my id" and "UserKnownHostsFile=/tmp/k h" in hop
    assert "StrictHostKeyChecking=yes" in hop and "BatchMode=yes" in hop
    assert argv[-3:] == ["--", "login.example", "true"]
    assert pipe.jump.known_hosts_line == "[bastion.example]:2223 ssh-ed25519 BBBB"


def test_abandoned_temporary_dirs_of_killed_stages_are_removed(tmp_path):
    import os
    import time

    store, m = _dataset()
    parent = tmp_path / "t" / "datasets" / "d"
    dead, live = parent / ".staging-v-1-dead", parent / ".staging-v-1-live"
    for d in (dead, live):
        d.mkdir(parents=True)
        (d / "part-00000.parquet").write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 86400
    os.utime(dead, (two_days_ago, two_days_ago))
    _result, logs = _stage(store, m, tmp_path / "t")
    assert not dead.exists() and live.exists()  # a stage still running elsewhere keeps its directory
    assert any("abandoned" in line for line in logs)


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
@pytest.mark.parametrize("link", ["datasets", "datasets/d", "datasets/d/v-1", ".aifp"])
def test_a_symlink_anywhere_in_the_destination_stops_the_stage_before_any_write(tmp_path, transport, link):
    """A link planted in the tenant's area (a job of the tenant can write there) would make every
    write of staging land at its target: refused, naming the link, nothing written anywhere."""
    from aifactory.hpc.staging import SymlinkInPath

    store, m = _dataset()
    tenant, elsewhere = tmp_path / "t", tmp_path / "other-tenant"
    elsewhere.mkdir()
    (tenant / link).parent.mkdir(parents=True, exist_ok=True)
    (tenant / link).symlink_to(elsewhere, target_is_directory=True)
    options = StagingOptions(mode="pull") if link == ".aifp" else None
    if options is not None:  # the fetch script's folder: only pull and streamed push install it
        store.generate_presigned_url = lambda *a, **k: "http://127.0.0.1:1/x"  # type: ignore[attr-defined]
    with pytest.raises(SymlinkInPath, match=f"{tenant / link}.* is a symlink"):
        _stage(store, m, tenant, transport, **({"options": options} if options else {}))
    assert list(elsewhere.iterdir()) == []
    assert store.gets == []


def test_the_symlink_walk_checks_every_component_from_the_tenant_dir_down(tmp_path):
    from aifactory.hpc.staging import SymlinkInPath, refuse_symlinks
    from aifactory.hpc.staging.paths import components

    assert components("/srv/t", "/srv/t/datasets/d/v") == ["/srv/t", "/srv/t/datasets", "/srv/t/datasets/d",
                                                           "/srv/t/datasets/d/v"]
    with pytest.raises(InputError, match="not inside"):
        components("/srv/t", "/srv/t/../u/datasets")
    (tmp_path / "real").mkdir()
    (tmp_path / "t").symlink_to(tmp_path / "real")  # the tenant's directory itself
    with pytest.raises(SymlinkInPath, match="is a symlink"):
        refuse_symlinks(LocalShell(), str(tmp_path / "t"), str(tmp_path / "t" / "datasets"))
    refuse_symlinks(LocalShell(), str(tmp_path / "real"), str(tmp_path / "real" / "not" / "yet" / "there"))
