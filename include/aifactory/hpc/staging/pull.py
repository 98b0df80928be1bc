"""Pull: the HPC side fetches the files itself from presigned GET URLs handed over on stdin (no
credentials reach the cluster; a URL grants one GET of one object until it expires)."""

from __future__ import annotations

import json
from typing import Any

from aifactory.data.manifest import FileEntry
from aifactory.hpc.remote import RemoteShell, q, run_with_input
from aifactory.hpc.staging.options import Log, StagingOptions
from aifactory.hpc.staging.progress import _Progress
from aifactory.hpc.staging.script import _ScriptReport


def _pull(
    s3: Any, shell: RemoteShell, *, bucket: str, prefix: str, tmp: str, files: list[FileEntry],
    options: StagingOptions, script: str, log: Log,
) -> None:
    """Have the HPC side fetch ``files`` into ``tmp`` from presigned URLs (given on stdin)."""
    request = {
        "files": [
            {
                "name": f.path,
                "bytes": f.bytes,
                "sha256": f.sha256,
                "url": s3.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": prefix + f.path}, ExpiresIn=int(options.url_ttl_s)
                ),
            }
            for f in files
        ]
    }
    progress = _Progress(sum(f.bytes for f in files), len(files), log, "fetched by the HPC side")
    report = _ScriptReport(log, progress)
    command = f"{q(options.python, script)} --dest {q(tmp)} --parallel {int(options.parallel)}"
    payload = json.dumps(request).encode()
    del request  # the URLs live only in the payload sent on stdin
    rc, _, err = run_with_input(shell, command, payload, timeout=24 * 3600, on_line=report.on_line)
    progress.report()
    report.check(rc, err, files, what="fetch")
