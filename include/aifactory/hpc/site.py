"""A site's software environment for jobs: a setup script, environment module paths and modules.

Platform engineers declare it in the cluster spec (``environment:``); no trigger form reaches it.
It travels to the job as three ``--export`` variables that the fixed wrapper
(``include/runtime/sbatch_wrapper.sh``) reads, in this order, before it starts the ranks:

``AIFP_SITE_SETUP``   a script the wrapper sources (the site's ``/etc/profile.d/lmod.sh``: it
                      defines ``module`` in a job started with ``--export=NONE``);
``AIFP_MODULEPATH``   ``module use`` of each directory (``:``-separated);
``AIFP_MODULES``      ``module load`` of each module (``:``-separated); one that does not load
                      fails the job at once, naming it, before any rank starts.

Nothing here is user input, but every value is still checked: it reaches a shell on the cluster.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from aifactory.errors import InputError
from aifactory.hpc.slurm.checks import check_remote_path
from aifactory.yamlfiles import spec_block

__all__ = ["MODULE_RE", "SiteEnvironment", "parse_environment"]

#: an environment module, ``name`` or ``name/version`` (Lmod's hierarchical names: up to four parts)
MODULE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}(?:/[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}){0,3}$")


@dataclass(frozen=True, kw_only=True)
class SiteEnvironment:
    """What a job sources and loads before its ranks start (see the module docstring)."""

    setup: str | None = None
    module_path: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for path in ([self.setup] if self.setup else []) + list(self.module_path):
            check_remote_path(path, "environment path")
        for module in self.modules:
            if not isinstance(module, str) or not MODULE_RE.fullmatch(module):
                raise InputError(f"module {module!r:.80} must match {MODULE_RE.pattern}")
        if self.modules and not self.setup:
            raise InputError("modules need a setup script that defines the module command (e.g. "
                             "setup: /etc/profile.d/lmod.sh): a job starts with --export=NONE, without it")

    @property
    def declared(self) -> bool:
        return bool(self.setup or self.module_path or self.modules)

    def check_command(self) -> str:
        """A shell command that prepares the environment as the wrapper does and prints what loaded
        (``make doctor``, on the login node); exit 3: the setup failed, 4: a module did not load."""
        lines = ["set +eu"]
        if self.setup:
            lines.append(f"source {shlex.quote(self.setup)} || {{ echo {shlex.quote('cannot source ' + self.setup)}; exit 3; }}")
        lines += [f"module use {shlex.quote(path)}" for path in self.module_path]
        for module in self.modules:
            lines.append(f"{{ module load {shlex.quote(module)} && module is-loaded {shlex.quote(module)}; }} 2>&1 "
                         f"|| {{ echo {shlex.quote('module ' + module + ' does not load')}; exit 4; }}")
        lines.append('echo "loaded: ${LOADEDMODULES:-}"')
        return "bash -c " + shlex.quote("\n".join(lines))

    def exports(self) -> dict[str, str]:
        """The job's ``--export`` variables (only those that are set)."""
        out = {}
        if self.setup:
            out["AIFP_SITE_SETUP"] = self.setup
        if self.module_path:
            out["AIFP_MODULEPATH"] = ":".join(self.module_path)
        if self.modules:
            out["AIFP_MODULES"] = ":".join(self.modules)
        return out


def parse_environment(raw: Any, where: str) -> SiteEnvironment:
    """``environment: {setup: /etc/profile.d/lmod.sh, module_path: [...], modules: [...]}`` (all optional)."""
    where = f"{where}: environment"
    raw = spec_block(raw, where, ("setup", "module_path", "modules"),
                     "{setup: /etc/profile.d/lmod.sh, modules: [gcc/12]}")
    lists = {}
    for key in ("module_path", "modules"):
        value = raw.get(key) or ()
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: {key} must be a list")
        lists[key] = tuple(value)
    try:
        return SiteEnvironment(setup=raw.get("setup"), **lists)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from exc
