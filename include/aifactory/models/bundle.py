"""The job bundle: every file a recipe's job needs in its run directory, and where it goes.

A run directory holds (``aifactory.layout`` names each part)::

    <run dir>/
        job.sh             the platform's fixed batch wrapper (WRAPPER), the same for every recipe
        params.json        written by the engine, not part of the bundle
        aifp_runtime/      the platform job runtime: distributed setup, signals and requeue,
                           checkpoints, the completion marker (with contract.py, layout.py,
                           errors.py and text.py of the core package: one definition serves job
                           and platform)
        train.py ...       the recipe's whole folder (its model code and recipe.yaml)

The recipe's files sit at the top of the run directory so that ``python train.py`` finds
``aifp_runtime`` on its own path; a recipe file may therefore not take a name the platform uses
there (:data:`RESERVED_TOP_LEVEL`). Caches, hidden files and symbolic links are never shipped.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import TYPE_CHECKING

from aifactory import layout
from aifactory.errors import InputError

if TYPE_CHECKING:
    from aifactory.models.recipes import Recipe

__all__ = ["RESERVED_TOP_LEVEL", "RUNTIME_SOURCES", "WRAPPER", "job_files", "materialize", "runtime_files"]

#: the sbatch script's path relative to the run directory
WRAPPER = layout.JOB_WRAPPER
#: the platform's wrapper in this repository
WRAPPER_SOURCE = layout.RUNTIME_DIR / "sbatch_wrapper.sh"
#: the runtime package in this repository
RUNTIME_SOURCE = layout.RUNTIME_DIR / layout.RUNTIME_PACKAGE
#: core modules the job imports from ``aifp_runtime`` (each standard-library only)
RUNTIME_SOURCES = (
    layout.PACKAGE_DIR / "models" / "contract.py",
    layout.PACKAGE_DIR / "layout.py",
    layout.PACKAGE_DIR / "errors.py",
    layout.PACKAGE_DIR / "text.py",
)
#: top-level names of a run directory that belong to the platform
RESERVED_TOP_LEVEL = frozenset({
    WRAPPER,
    layout.PARAMS_FILE,
    layout.CONTAINER_ARGV_FILE,
    layout.RUNTIME_PACKAGE,
    posixpath.basename(layout.run_output_dir("/r")),
    posixpath.basename(layout.run_checkpoint_dir("/r")),
})
_SKIP_DIRS = frozenset({"__pycache__"})


def _shipped(folder: Path) -> list[Path]:
    """Regular files below ``folder``, sorted, without caches, hidden files or symbolic links."""
    out: list[Path] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") or part in _SKIP_DIRS for part in rel.parts) or path.suffix == ".pyc":
            continue
        if path.is_symlink():
            raise InputError(f"{path} is a symbolic link; a job bundle ships regular files only")
        if path.is_file():
            out.append(path)
    return out


def runtime_files() -> list[tuple[Path, str]]:
    """The job runtime package: its own modules plus the shared core modules, under ``aifp_runtime/``."""
    files = [(p, f"{layout.RUNTIME_PACKAGE}/{p.relative_to(RUNTIME_SOURCE).as_posix()}")
             for p in _shipped(RUNTIME_SOURCE)]
    own = {remote for _, remote in files}
    for source in RUNTIME_SOURCES:
        remote = f"{layout.RUNTIME_PACKAGE}/{source.name}"
        if remote in own:
            raise InputError(f"the job runtime has its own {source.name}; it must come from {source} only")
        files.append((source, remote))
    return files


def job_files(recipe: Recipe) -> list[tuple[Path, str]]:
    """Every local file to upload into the run directory, with its path relative to it.

    The recipe's whole folder, the job runtime and the fixed wrapper (:data:`WRAPPER`, last).

    :raises InputError: if a recipe file takes a platform name (``job.sh``, ``params.json``, ...).
    """
    files: list[tuple[Path, str]] = []
    for path in _shipped(Path(recipe.root)):
        remote = path.relative_to(recipe.root).as_posix()
        if remote.split("/", 1)[0] in RESERVED_TOP_LEVEL:
            raise InputError(f"recipe {recipe.name!r}: {path} takes the name {remote!r}, which the platform "
                             f"uses in the run directory ({', '.join(sorted(RESERVED_TOP_LEVEL))}); rename it")
        files.append((path, remote))
    files += runtime_files()
    files.append((WRAPPER_SOURCE, WRAPPER))
    return files


def materialize(recipe: Recipe, run_dir: Path) -> Path:
    """Copy the bundle into a local ``run_dir`` (tests and local runs): the same files the engine uploads."""
    import shutil

    run_dir = Path(run_dir)
    for local, remote in job_files(recipe):
        target = run_dir.joinpath(*remote.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)
    return run_dir
