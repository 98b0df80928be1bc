"""The fixed HPC-side script (``aifp_fetch.py``): installed into the tenant's area by its sha256,
run for pull (presigned URLs on stdin) and for push over OpenSSH (``--receive``), and what it
prints read back (``ok``, ``failed``, ``progress``, ``summary`` lines)."""

from __future__ import annotations

import json
import posixpath
import secrets
import time
from typing import Any

from aifactory.data.manifest import FileEntry, sha256_file
from aifactory.hpc.remote import RemoteError, RemoteShell, check, mkdir_private, q, sha256_many
from aifactory.hpc.staging.options import Log
from aifactory.hpc.staging.paths import refuse_symlinks
from aifactory.hpc.staging.progress import PROGRESS_EVERY_S, _Progress
from aifactory.layout import HPC_SCRIPTS_DIR, TenantAreas, platform_bin_dir
from aifactory.text import printable, shown, shown_list

FETCH_SCRIPT = HPC_SCRIPTS_DIR / "aifp_fetch.py"


def install_fetch_script(shell: RemoteShell, areas: TenantAreas) -> str:
    """Put the fixed fetch script into ``layout.platform_bin_dir`` (named by its sha256); its path.

    An existing copy is reused only if its sha256 still matches.
    """
    digest = sha256_file(FETCH_SCRIPT)
    bindir = platform_bin_dir(areas)
    target = posixpath.join(bindir, f"{FETCH_SCRIPT.stem}-{digest[:16]}{FETCH_SCRIPT.suffix}")
    if sha256_many(shell, [target]).get(target) == digest:
        return target
    refuse_symlinks(shell, areas.project, bindir)
    mkdir_private(shell, areas.project, posixpath.dirname(bindir), bindir)
    tmp = f"{target}.{secrets.token_hex(4)}"
    with shell.sftp_client().open(tmp, "wb") as fh:
        fh.write(FETCH_SCRIPT.read_bytes())
    if sha256_many(shell, [tmp]).get(tmp) != digest:
        shell.run("rm -f -- " + q(tmp))
        raise RemoteError(f"the fetch script did not arrive intact at {shown(tmp)}; retry the stage")
    check(shell, f"chmod 0500 -- {q(tmp)} && mv -f -- {q(tmp)} {q(target)}", what="installing the fetch script")
    return target


class _ScriptReport:
    """What the HPC-side script printed (``ok``, ``failed``, ``summary`` lines; see aifp_fetch)."""

    def __init__(self, log: Log, progress: _Progress | None = None) -> None:
        self.log, self.progress = log, progress
        self.failed: dict[str, str] = {}
        self.summary: dict[str, Any] = {}
        self._last_report = time.monotonic()

    def on_line(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "progress" and self.progress is not None:
            parts = rest.split()
            if len(parts) == 4 and all(p.lstrip("-").isdigit() for p in parts):
                now = time.monotonic()
                if now - self._last_report >= PROGRESS_EVERY_S:
                    self._last_report = now
                    self.progress.set(int(parts[0]), int(parts[2]))
                else:
                    self.progress.bytes, self.progress.files = int(parts[0]), int(parts[2])
        elif kind == "ok":
            parts = rest.split()
            if len(parts) >= 4:
                self.log(f"stage: {shown(parts[0])} verified on the HPC side (sha256, {parts[2]} B, "
                         f"{int(parts[2]) / max(float(parts[3]), 1e-6) / 1e6:.1f} MB/s)")
        elif kind == "failed":
            name, _, reason = rest.partition(" ")
            self.failed[name] = reason
        elif kind == "summary":
            try:
                self.summary.update(json.loads(rest))
            except ValueError:
                pass

    def check(self, rc: int, err: str, files: list[FileEntry], *, what: str) -> None:
        """Raise RemoteError unless every file was confirmed (nothing is moved into place then)."""
        if rc != 0 or self.failed or self.summary.get("error"):
            detail = (
                "; ".join(f"{shown(n)}: {printable(r)}" for n, r in sorted(self.failed.items()))
                or self.summary.get("error") or err.strip()[-500:]
            )
            hint = (
                "Check that the cluster can reach the object store's endpoint, then retry the stage"
                if what == "fetch" else "Retry the stage; if it repeats, check the HPC filesystem"
            )
            raise RemoteError(
                f"the HPC side could not {what} {len(self.failed) or 'some'} file(s) (exit {rc}): {detail}. "
                f"Nothing was moved into place. {hint}"
            )
        missing = {f.path for f in files} - set(self.summary.get("ok", []))
        if missing:
            raise RemoteError(f"the HPC-side script did not confirm {shown_list(sorted(missing))}; retry the stage")
