"""The Airflow pools of a deployment: one per cluster spec, bounding its concurrent SSH sessions.

Every task that SSHes to a cluster's login node opens its own connection (operators/hooks.py);
under fan-out (backfills, many tenants, two Celery workers) the login node's sshd throttles new
connections (MaxStartups; docs/failure-modes.md, 10). A pool per cluster caps how many such tasks
run at once. Deferred tasks hold no SSH session, so they do not count (``include_deferred``).

One generator for both deployments: the native stack (include/stack/stack.sh) and compose's
airflow-init (docker-compose.yaml) run
``python include/stack/pools.py [CLUSTERS_DIR] > pools.json && airflow pools import pools.json``.
``AIFP_SSH_POOL_SLOTS`` overrides :data:`DEFAULT_SLOTS`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from aifactory.layout import CLUSTERS_DIR, ssh_pool
from aifactory.tenants.spec import load_cluster

#: tasks of one cluster holding an SSH session at once (well under the stack sshd's MaxStartups)
DEFAULT_SLOTS = 16
SLOTS_ENV = "AIFP_SSH_POOL_SLOTS"


def pool_name(cluster: str) -> str:
    """The pool of a cluster's SSH sessions (the rule: :func:`aifactory.layout.ssh_pool`, which the DAGs use)."""
    return ssh_pool(cluster)


def pools(clusters_dir: Path = CLUSTERS_DIR, slots: int | None = None) -> dict[str, dict[str, object]]:
    """``airflow pools import``'s document: each cluster spec of ``clusters_dir`` (validated by
    the spec loader, so a broken spec fails here rather than leaving a cluster unbounded)."""
    if slots is None:
        raw = os.environ.get(SLOTS_ENV, str(DEFAULT_SLOTS))
        if not raw.isdigit() or int(raw) < 1:
            raise SystemExit(f"{SLOTS_ENV}={raw!r}: must be a whole number of pool slots, at least 1")
        slots = int(raw)
    specs = [load_cluster(p.stem, clusters_dir) for p in sorted(clusters_dir.glob("*.yaml"))]
    if not specs:
        raise SystemExit(f"no cluster spec (*.yaml) in {clusters_dir}: nothing to make pools for")
    return {pool_name(c.name): {"slots": slots, "include_deferred": False,
                                "description": f"tasks holding an SSH session to cluster {c.name}"}
            for c in specs}


def main(argv: list[str]) -> int:
    if len(argv) > 2:
        print("usage: pools.py [CLUSTERS_DIR]  (writes airflow pools import's JSON to stdout)", file=sys.stderr)
        return 2
    print(json.dumps(pools(Path(argv[1]) if len(argv) == 2 else CLUSTERS_DIR), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
