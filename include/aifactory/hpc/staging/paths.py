"""No symlinks anywhere in a staging destination (``docs/failure-modes.md#security-paths``).

A tenant's own jobs can write into its area, so one could plant ``datasets/iris -> /elsewhere``
(another tenant's directory, a shared scratch, a file the platform scripts later trust). Every
write of staging would then follow the link: ``mkdir -p`` creates directories at its target,
``mv`` renames into it, the marker and the fetch script land there. So before anything is
written, the HPC side checks each component of the destination, from the tenant's area down
(``test -L`` on each that exists), and staging stops, naming the link, when one is a symlink.
"""

from __future__ import annotations

import posixpath

from aifactory.errors import InputError
from aifactory.hpc.remote import RemoteError, RemoteShell, q
from aifactory.layout import path_inside
from aifactory.text import shown

#: the exit status of the walk when it met a symlink (any other failure is the shell's)
SYMLINK_FOUND = 3


class SymlinkInPath(InputError):
    """A component of a staging destination is a symlink: nothing was written. Not retried: the
    link stays until someone removes it."""


def components(area: str, path: str) -> list[str]:
    """``area`` and every directory from it down to ``path`` (``path`` included)."""
    area = area.rstrip("/")
    if path.rstrip("/") == area:
        return [area]
    if not path_inside(path, area):
        raise InputError(f"staging destination {shown(path)} is not inside the tenant's area "
                         f"{shown(area)}; nothing was written")
    out = [area]
    for part in path.rstrip("/")[len(area) + 1:].split("/"):
        out.append(posixpath.join(out[-1], part))
    return out


def walk_command(paths: list[str]) -> str:
    """Shell text: print ``symlink <path>`` and exit :data:`SYMLINK_FOUND` at the first symlink;
    stop at the first component that does not exist (nothing below it can)."""
    return (f"for p in {q(*paths)}; do if [ -L \"$p\" ]; then printf 'symlink %s\\n' \"$p\"; "
            f"exit {SYMLINK_FOUND}; fi; [ -e \"$p\" ] || break; done; exit 0")


def refuse_symlinks(shell: RemoteShell, area: str, path: str) -> None:
    """Raise :class:`SymlinkInPath` if any component from ``area`` down to ``path`` is a symlink."""
    rc, out, err = shell.run(walk_command(components(area, path)), timeout=60)
    if rc == SYMLINK_FOUND:
        link = out.strip().partition(" ")[2]
        raise SymlinkInPath(
            f"staging refused: {shown(link)} (on the way to {shown(path)}) is a symlink; staging never writes "
            "through a link. Nothing was written. Remove the link on the cluster (it was not made by the "
            "factory), then clear the stage task")
    if rc != 0:
        raise RemoteError(f"checking {shown(path)} for symlinks failed (exit {rc}): {err.strip()[-300:]}; "
                          "retry the stage")
