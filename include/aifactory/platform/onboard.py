"""Onboarding: apply every tenant spec, idempotently.

``python -m aifactory.platform.onboard [--tenant NAME] [--check]`` (``make onboard``) runs, for
each tenant spec, every step of :data:`TENANT_STEPS` in order. A step looks at what exists, changes
only what differs from the spec, and returns the :class:`Change` list it made (with ``--check``:
would make). Onboarding twice therefore changes nothing the second time, and prints so.

Steps (each in its own module, each the one place its rule lives):

1. ``cluster``: the tenant's Unix user, SSH key, SSH connection and directories (0700)
2. ``slurm``: the tenant's Slurm account, the association of its user only, and its allocation
3. ``objectstore``: the tenant's bucket, its own S3 credential limited to it, and its connection
4. ``airflow``: the tenant's Airflow role, DAG permissions and users

A broken spec or a failing step fails that tenant alone: the others are still onboarded, and the
command exits non-zero naming each tenant that failed and why.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aifactory.platform.secrets import ConnectionStore
from aifactory.tenants.spec import ClusterSpec, TenantSpec


@dataclass(frozen=True)
class Change:
    """One thing onboarding changed (or, with ``--check``, would change)."""

    tenant: str
    step: str
    action: str


@dataclass
class Context:
    """What every step needs besides the specs.

    :param secrets_dir: where generated keys, credentials and the connections file live (0700).
    :param env: the local stack's environment (endpoints; ``.stack/stack.env``).
    :param dry_run: report what would change, change nothing.
    """

    secrets_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def connections(self) -> ConnectionStore:
        return ConnectionStore(self.secrets_dir)


Step = Callable[[Context, TenantSpec, ClusterSpec], list[Change]]


PlatformStep = Callable[[Context, list[TenantSpec], list[ClusterSpec]], list[Change]]


def platform_steps() -> list[tuple[str, PlatformStep]]:
    """The platform's own steps (once, before the tenants'), in order."""
    from aifactory.platform.slurm_accounts import onboard_slurm_platform

    steps: list[tuple[str, PlatformStep]] = []
    steps.append(("slurm", onboard_slurm_platform))
    return steps


def tenant_steps() -> list[tuple[str, Step]]:
    """The steps, in order (imported here so that each module stays the one place of its rule)."""
    from aifactory.platform.slurm_accounts import onboard_slurm

    steps: list[tuple[str, Step]] = []
    steps.append(("slurm", onboard_slurm))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aifactory.platform.onboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    parser.add_argument("--check", action="store_true", help="report what would change, change nothing")
    parser.parse_args(argv)
    raise NotImplementedError("the onboarding runner is being built (issue 11)")


if __name__ == "__main__":
    sys.exit(main())
