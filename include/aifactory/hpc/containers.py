"""Running a job's ranks inside a container image, through the site's runtime (podman or Apptainer).

The cluster spec names the runtime and the images the site keeps (``containers:``); a recipe asks
for one of them by name (``container:`` in recipe.yaml). Nothing here is user input.

:func:`container_argv` builds the runtime's command line, the same way for every job of the cluster:
the image's interpreter then runs the entry point inside the image, on every rank. The plan carries
it (``JobPlan.container_argv``); the run directory gets it as ``container.argv`` (NUL-separated
arguments, no shell text), and the fixed wrapper puts it in front of the interpreter in its ``srun``
step. One rank is one container: each sees its own ``SLURM_*`` variables, the host's network (the
ranks' rendezvous) and the cluster's HPC root bound at the same path, with each of the tenant's areas
that lies outside it (:func:`container_binds`), where the kernel's permissions keep each tenant to
its own area as outside. Signals (Slurm's USR1 and TERM) reach the entry point:
podman proxies them, Apptainer's starter forwards them.

============  =============================================================================
runtime       command
============  =============================================================================
``podman``    ``podman run --rm --network=host --env=SLURM* ... --volume=<root>:<root> ... --workdir=<run>
              <options> --rootfs <image dir>`` (a directory image: rootless podman here)
``apptainer`` ``apptainer exec --bind=<root> ... --pwd=<run> <options> <image .sif or sandbox dir>``
============  =============================================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aifactory.errors import InputError
from aifactory.hpc.slurm.checks import check_remote_path
from aifactory.layout import NAME_RE, TenantAreas, path_inside
from aifactory.yamlfiles import spec_block

__all__ = ["CONTAINER_ARGV_SEPARATOR", "RUNTIMES", "ContainerImage", "Containers", "container_argv",
           "container_binds", "parse_containers"]

RUNTIMES = ("podman", "apptainer")
#: the variables every rank needs inside its container (podman passes only those it is told to)
PASSED_ENV = ("SLURM*", "AIFP_*", "OMP_NUM_THREADS", "PYTHONUNBUFFERED", "CUDA_VISIBLE_DEVICES", "MASTER_ADDR",
              "MASTER_PORT")
#: a site option of the runtime: one ``--flag`` or ``--flag=value`` argument
OPTION_RE = re.compile(r"^--[a-z][a-z0-9-]{0,40}(?:=[A-Za-z0-9_./:=+,@-]{1,200})?$")
CONTAINER_ARGV_SEPARATOR = b"\0"


@dataclass(frozen=True, kw_only=True)
class ContainerImage:
    """One image the site keeps: where it is, and the interpreter inside it that runs recipes."""

    name: str
    path: str
    python: str


@dataclass(frozen=True, kw_only=True)
class Containers:
    """The cluster's container runtime and images (``containers:`` in the cluster spec)."""

    runtime: str | None = None
    binary: str | None = None
    options: tuple[str, ...] = ()
    images: tuple[ContainerImage, ...] = field(default=())

    def image(self, name: str) -> ContainerImage:
        for image in self.images:
            if image.name == name:
                return image
        raise InputError(f"the cluster has no container image {name!r}"
                         + (f"; it has {[i.name for i in self.images]}" if self.images else
                            " (no containers: in its spec)") + ": fix the recipe's container: or the cluster spec")


def container_binds(hpc_root: str, areas: TenantAreas) -> tuple[str, ...]:
    """The directories a job's container sees at their own paths: the HPC root (what the site's image
    has a mount point for), and each of the tenant's areas outside it (a site's /project, /scratch)."""
    return (hpc_root, *(root for root in areas.roots if not path_inside(root, hpc_root)))


def container_argv(containers: Containers, image: ContainerImage, *, binds: tuple[str, ...],
                   run_dir: str) -> tuple[str, ...]:
    """The runtime's arguments in front of ``<image python> -u <entry point> --params params.json``."""
    for path in binds:
        check_remote_path(path, "container bind")
    check_remote_path(run_dir, "run dir")
    if containers.runtime == "podman":
        return (containers.binary or "/usr/bin/podman", "run", "--rm", "--network=host",
                *(f"--env={name}" for name in PASSED_ENV), *(f"--volume={path}:{path}" for path in binds),
                f"--workdir={run_dir}", *containers.options, "--rootfs", image.path)
    if containers.runtime == "apptainer":
        return (containers.binary or "/usr/bin/apptainer", "exec", *(f"--bind={path}" for path in binds),
                f"--pwd={run_dir}", *containers.options, image.path)
    raise InputError(f"container runtime {containers.runtime!r} must be one of {', '.join(RUNTIMES)}")


def parse_containers(raw: Any, where: str) -> Containers:
    """``containers: {runtime: podman, binary: ..., options: [...], images: {<name>: {path, python}}}``."""
    where = f"{where}: containers"
    if raw is None:
        return Containers()
    raw = spec_block(raw, where, ("runtime", "binary", "options", "images"),
                     "{runtime: podman, images: {name: {path, python}}}")
    runtime = raw.get("runtime")
    if runtime not in RUNTIMES:
        raise InputError(f"{where}: runtime {runtime!r} must be one of {', '.join(RUNTIMES)}")
    binary = raw.get("binary")
    if binary is not None:
        check_remote_path(binary, f"{where}: binary")
    options = raw.get("options") or []
    if isinstance(options, str) or not isinstance(options, list):
        raise InputError(f"{where}: options must be a list of --flag[=value] arguments")
    for option in options:
        if not isinstance(option, str) or not OPTION_RE.fullmatch(option):
            raise InputError(f"{where}: option {option!r:.80} must be one --flag or --flag=value argument "
                             f"({OPTION_RE.pattern})")
    images_raw = raw.get("images") or {}
    if not isinstance(images_raw, Mapping) or not images_raw:
        raise InputError(f"{where}: images must map image names to {{path: ..., python: ...}}")
    images = []
    for name, entry in images_raw.items():
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InputError(f"{where}: image name {name!r:.40} must match {NAME_RE.pattern}")
        if not isinstance(entry, Mapping) or set(entry) != {"path", "python"}:
            raise InputError(f"{where}: images.{name} must be {{path: <image>, python: <interpreter inside it>}}")
        images.append(ContainerImage(name=name, path=check_remote_path(entry["path"], f"{where}: images.{name}.path"),
                                     python=check_remote_path(entry["python"], f"{where}: images.{name}.python")))
    return Containers(runtime=runtime, binary=binary, options=tuple(options), images=tuple(images))
