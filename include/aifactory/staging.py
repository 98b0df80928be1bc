"""Stage a dataset version from object storage to the tenant's area on the HPC side (push mode).

Bytes flow S3 -> worker -> SFTP as a stream (no local copy, no credentials on the cluster). Files
land in a private temporary directory, are checked by sha256 *on the HPC side* against the
dataset manifest, and the directory is renamed to ``<tenant_dir>/datasets/<name>/<version>/`` only
when every file matches. A version already present and verified is not sent again; a tampered or
partial one is replaced.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

from aifactory.manifest import DatasetManifest
from aifactory.remote import RemoteError, RemoteShell, check, exists, join, mkdir_private, q, sha256_many

CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class StageResult:
    remote_dir: str
    files: int
    bytes: int
    skipped: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "remote_dir": self.remote_dir,
            "files": self.files,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
        }


def dataset_remote_dir(tenant_dir: str, name: str, version: str) -> str:
    return join(tenant_dir, "datasets", name, version)


def _verify(shell: RemoteShell, directory: str, manifest: DatasetManifest) -> list[str]:
    """Names of the manifest's files that are missing or differ in ``directory``."""
    want = {join(directory, f.path): f.sha256 for f in manifest.files}
    have = sha256_many(shell, want)
    return [p.rsplit("/", 1)[-1] for p, sha in want.items() if have.get(p) != sha]


def stage_dataset(
    s3: Any,
    shell: RemoteShell,
    *,
    bucket: str,
    dataset_prefix: str,
    manifest: DatasetManifest,
    tenant_dir: str,
    log: Callable[[str], None] = print,
) -> StageResult:
    """Put exactly the manifest's files under the tenant's dataset dir; verify; rename into place."""
    started = time.monotonic()
    final = dataset_remote_dir(tenant_dir, manifest.name, manifest.version)
    total = sum(f.bytes for f in manifest.files)

    if exists(shell, final):
        bad = _verify(shell, final, manifest)
        if not bad:
            log(f"{final} already holds all {len(manifest.files)} files, verified by sha256: nothing to send")
            return StageResult(final, len(manifest.files), total, True, time.monotonic() - started)
        log(f"{final} exists but {len(bad)} file(s) are missing or differ ({', '.join(bad[:5])}): staging again")

    parent = join(tenant_dir, "datasets", manifest.name)
    mkdir_private(shell, tenant_dir, join(tenant_dir, "datasets"), parent)
    tmp = join(parent, f".staging-{manifest.version}-{secrets.token_hex(4)}")
    mkdir_private(shell, tmp)
    sftp = shell.sftp_client()
    sent = 0
    try:
        for i, entry in enumerate(manifest.files, 1):
            body = s3.get_object(Bucket=bucket, Key=dataset_prefix + entry.path)["Body"]
            t0 = time.monotonic()
            with sftp.open(join(tmp, entry.path), "wb") as remote:
                if hasattr(remote, "set_pipelined"):
                    remote.set_pipelined(True)  # paramiko: don't wait for an ack per write
                for chunk in iter(lambda: body.read(CHUNK), b""):
                    remote.write(chunk)
            sent += entry.bytes
            rate = entry.bytes / max(time.monotonic() - t0, 1e-6) / 1e6
            log(f"sent {entry.path} ({i}/{len(manifest.files)}, {entry.bytes} B, {rate:.1f} MB/s); {sent}/{total} B")
        with sftp.open(join(tmp, "manifest.json"), "wb") as remote:
            remote.write(manifest.to_json().encode())
        bad = _verify(shell, tmp, manifest)
        if bad:
            raise RemoteError(
                f"sha256 mismatch on the HPC side after transfer for {', '.join(bad)}; "
                "nothing was moved into place. Retry the stage; if it repeats, check the HPC filesystem."
            )
        # Swap into place: an old (bad) copy is moved aside first and removed after the rename.
        old = join(parent, f".old-{manifest.version}-{secrets.token_hex(4)}")
        check(
            shell,
            f"if [ -e {q(final)} ]; then mv -- {q(final)} {q(old)}; fi && mv -- {q(tmp)} {q(final)} "
            f"&& rm -rf -- {q(old)}",
            what=f"moving the staged dataset into {final}",
        )
    except BaseException:
        shell.run("rm -rf -- " + q(tmp), timeout=120)
        raise
    seconds = time.monotonic() - started
    log(f"staged {len(manifest.files)} files, {total} B to {final} in {seconds:.1f}s, verified by sha256 on the HPC side")
    return StageResult(final, len(manifest.files), total, False, seconds)
