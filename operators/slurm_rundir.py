"""The run directory on the cluster: created 0700 over SFTP, filled with the plan's bytes, and an
earlier job's outputs moved aside before a job of other parameters runs there.

Every file is uploaded under a temporary name and renamed into place, so a job never reads a
half-written ``params.json`` or script. Symlinks and non-directories on the way are refused: the
tenant's area is the tenant's, but nothing in it may redirect a platform write.
"""

from __future__ import annotations

import io
import posixpath
import stat
import time
from pathlib import Path
from typing import Any

from aifactory import layout
from aifactory.errors import InputError
from aifactory.hpc.containers import CONTAINER_ARGV_SEPARATOR
from aifactory.hpc.slurm.plan import JobPlan
from operators.slurm_facts import read_marker

__all__ = ["move_outputs_aside", "prepare_run_dir"]


def _plain_dir(sftp: Any, path: str) -> bool:
    """True for a plain directory, False when nothing is there; anything else (a symlink, a file) is refused."""
    try:
        st = sftp.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode or 0) or not stat.S_ISDIR(st.st_mode or 0):
        raise InputError(f"{path} exists and is not a plain directory; refusing to use it")
    return True


def _mkdirs(sftp: Any, root: str, path: str) -> None:
    """Create every missing directory from ``root`` down to ``path`` 0700; refuse symlinks on the way."""
    current = root
    for part in path[len(root) + 1 :].split("/") if path != root else []:
        current = f"{current}/{part}"
        if not _plain_dir(sftp, current):
            sftp.mkdir(current, mode=0o700)
            sftp.chmod(current, 0o700)  # mkdir's mode is filtered by the remote umask


def _require_area(sftp: Any, area: str) -> None:
    """The tenant's project area must be there, a directory of its own: onboarding makes it (the
    tenant's login cannot: the directory above it is root's)."""
    if not _plain_dir(sftp, area):
        raise InputError(f"the tenant's project area {area} does not exist on the cluster; onboarding makes it "
                         "(make onboard), then clear the task")


def prepare_run_dir(hook: Any, plan: JobPlan) -> None:
    """Create the run directory and upload ``params.json`` and the plan's files into it.

    :raises InputError: the project area is missing or not a directory, or a path on the way to
        the run directory is not a plain directory: nothing was written.
    """
    uploads: list[tuple[str, bytes]] = [(layout.PARAMS_FILE, plan.params_json.encode())]
    uploads += [(remote, Path(local).read_bytes()) for local, remote in plan.files]
    if plan.container_argv:
        uploads.append((layout.CONTAINER_ARGV_FILE, CONTAINER_ARGV_SEPARATOR.join(a.encode() for a in plan.container_argv)))
    with hook.sftp() as sftp:
        _require_area(sftp, plan.project_dir)
        _mkdirs(sftp, plan.project_dir, plan.run_dir)
        sftp.chmod(plan.run_dir, 0o700)
        for name, data in uploads:
            if not name or name.startswith("/") or ".." in name.split("/"):
                raise InputError(f"job file {name!r:.80} must be a relative path inside the run directory")
            final = f"{plan.run_dir}/{name}"
            _mkdirs(sftp, plan.run_dir, posixpath.dirname(final))
            tmp = f"{posixpath.dirname(final)}/.{posixpath.basename(final)}.uploading"
            sftp.putfo(io.BytesIO(data), tmp, file_size=len(data), confirm=True)
            sftp.chmod(tmp, 0o600)
            sftp.posix_rename(tmp, final)


def move_outputs_aside(hook: Any, plan: JobPlan) -> str:
    """Rename the output directory (an earlier job's outputs and marker) out of the new job's way."""
    _, marker, _ = read_marker(hook, plan)
    tag = "".join(c for c in str(marker.job_id or "") if c.isalnum())[:24] if marker is not None else ""
    target = layout.superseded_output_dir(plan.run_dir, f"{tag or 'job'}-{time.time_ns()}")
    with hook.sftp() as sftp:
        sftp.posix_rename(plan.output_dir, target)
    return target
