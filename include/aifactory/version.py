"""The code version recorded in every model card: package version plus the git commit, if known."""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata

from aifactory.layout import REPO_DIR

REPO = REPO_DIR


@functools.cache
def code_version() -> str:
    """``<package version>+g<commit>[.dirty]``; ``AIFP_CODE_VERSION`` overrides (for images built without git)."""
    if env := os.environ.get("AIFP_CODE_VERSION"):
        return env
    try:
        base = metadata.version("ai-factory-pipelines")
    except metadata.PackageNotFoundError:
        base = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return base
    return f"{base}+g{sha}{'.dirty' if dirty else ''}" if sha else base
