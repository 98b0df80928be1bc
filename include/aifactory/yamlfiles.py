"""Reading the platform's YAML files (tenant, cluster and recipe specs): one parser, one cache.

A DAG file builds every tenant's DAGs in one parse, and each of those DAGs reads the same cluster
spec and the same recipe folders. Parsed and checked once per version of the file instead of once
per tenant, a parse with 1000 tenants stays within seconds (``bench/parse.py``).

The cache is keyed on each file's path, modification time, size and inode, and holds one entry
per file (the latest version read): a long-lived process (the dag-processor, the triggerer) sees
an edited, replaced or removed file at its very next read, never a stale copy. Only what is read
as a whole and never mutated is cached (frozen specs); a broken file is not cached and fails
again at every read, with its message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

#: PyYAML's C (libyaml) safe loader where the wheel has it, ten times faster than the pure-Python
#: one and the same YAML 1.1 subset (safe tags only)
SafeLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_cache: dict[tuple[str, str], tuple[tuple[Any, ...], Any]] = {}


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the fastest safe loader available; raises ``yaml.YAMLError`` alike."""
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 (a safe loader)


def _stamp(paths: Sequence[Path]) -> tuple[Any, ...] | None:
    """What changes when any of ``paths`` changes (None when one cannot be examined)."""
    try:
        stats = [os.stat(p) for p in paths]
    except OSError:
        return None
    return tuple((s.st_mtime_ns, s.st_size, s.st_ino, s.st_ctime_ns) for s in stats)


def cached(kind: str, paths: Sequence[Path], load: Callable[[], T]) -> T:
    """``load()``, reused while none of ``paths`` has changed since it last succeeded.

    :param kind: what is loaded (``"cluster"``, ``"recipe"``): one entry per kind and first path.
    :param paths: every file or folder the result depends on (a folder's stamp changes when a file
        is added to it, removed or renamed).
    """
    key = (kind, str(paths[0]))
    stamp = _stamp(paths)
    hit = _cache.get(key)
    if stamp is not None and hit is not None and hit[0] == stamp:
        return hit[1]
    value = load()
    if stamp is not None:
        _cache[key] = (stamp, value)
    return value


def spec_block(raw: Any, where: str, known: Sequence[str], example: str) -> Mapping[str, Any]:
    """One block of a spec file (``environment:``, ``containers:``, a partition): a mapping of only
    ``known`` keys; ``None`` reads as empty. The error names ``where``, the wrong keys and an example.

    :raises InputError: not a mapping, or a key that is not known.
    """
    from aifactory.errors import InputError

    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InputError(f"{where} must be a mapping like {example}")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    return raw
