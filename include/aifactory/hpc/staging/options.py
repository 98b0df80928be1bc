"""What a cluster's ``staging:`` spec says (:class:`StagingOptions`) and what a stage reports
(:class:`StageResult`, the stage task's XCom)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aifactory.errors import InputError
from aifactory.text import shown

StagingMode = Literal["push", "pull"]
#: the staging modes a cluster (or a tenant's override) may name
STAGING_MODES: tuple[StagingMode, ...] = ("push", "pull")
#: Where progress lines go (``print``, a logger's ``info``).
Log = Callable[[str], Any]


@dataclass(frozen=True)
class StagingOptions:
    """How a cluster receives datasets (``staging:`` in the cluster spec).

    :param mode: ``push`` (worker -> SFTP) or ``pull`` (the HPC side fetches presigned URLs).
    :param parallel: files in flight at once.
    :param url_ttl_s: lifetime of each presigned URL (pull); short, but long enough to start
        the last file's GET.
    :param python: the cluster's python, which runs the pull script.
    :param reverify: hash every staged file again on re-staging, ignoring the marker.
    """

    mode: StagingMode = "push"
    parallel: int = 4
    url_ttl_s: int = 900
    python: str = "python3"
    reverify: bool = False

    def __post_init__(self) -> None:
        if self.mode not in STAGING_MODES:
            raise InputError(f"staging mode {shown(self.mode)} is not known; use 'push' or 'pull' in the cluster spec")
        if not 1 <= int(self.parallel) <= 32:
            raise InputError(f"staging parallel={self.parallel} must be between 1 and 32 in the cluster spec")
        if not 60 <= int(self.url_ttl_s) <= 12 * 3600:
            raise InputError(f"staging url_ttl_s={self.url_ttl_s} must be between 60 and 43200 seconds")


@dataclass(frozen=True)
class StageResult:
    remote_dir: str
    files: int
    bytes: int
    skipped: bool
    seconds: float
    mode: str = "push"
    sent_files: int = 0
    sent_bytes: int = 0
    reused_files: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "remote_dir": self.remote_dir,
            "files": self.files,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "mode": self.mode,
            "sent_files": self.sent_files,
            "sent_bytes": self.sent_bytes,
            "reused_files": self.reused_files,
            "mb_per_s": round(self.sent_bytes / max(self.seconds, 1e-6) / 1e6, 1),
        }
