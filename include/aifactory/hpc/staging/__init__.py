"""Stage a dataset version from object storage to the tenant's area on the HPC side.

Two modes, chosen per cluster (``staging.mode`` in ``include/clusters/<name>.yaml``):

* **push**: the worker streams each object from S3 to the HPC side (one streaming GET per file,
  read ahead, no local copy), ``parallel`` streams at once, each taking the next file when free.
  Where the worker has the OpenSSH client (``shell.bulk``, from ``FactorySSHHook.bulk_pipe``), each
  stream is one ``ssh`` run of the fixed HPC-side script (``aifp_fetch.py --receive``, installed
  and checked by sha256 as for pull) with the same login and pinned host key, AES-GCM preferred;
  the script hashes every file while writing it and keeps it only when size and sha256 match.
  Without the ``ssh`` binary, files go over SFTP (paramiko, pipelined writes) and are hashed on
  the HPC side (``sha256sum``) as each lands: same result, about half the speed.
* **pull**: the worker uploads a fixed script (``include/stack/hpc/aifp_fetch.py``, checked by
  sha256) and hands it, **on stdin**, presigned GET URLs that expire after ``url_ttl_s`` for
  exactly the manifest's files that are not there yet. The script fetches them in parallel with
  Python's standard library, hashing as it writes. No credentials reach the cluster: a presigned
  URL grants one GET of one object until it expires, and it never appears in argv or in a log.

Either way files land in a private (0700) temporary directory beside the target, and the directory
is renamed to the dataset's directory (``layout.hpc_dataset_dir``) only when every file matches the
manifest's sha256. Then a marker (``layout.STAGING_MARKER``) records each file's sha256 with its size,
inode and ctime.

Re-staging: files whose size, inode and ctime still equal the marker's were not rewritten since
they were verified (an unprivileged user cannot set ctime), so they are skipped without reading
them again; any other file present is hashed on the HPC side; matching files are hard-linked into
the new temporary directory and only missing, partial or tampered files are sent. Set
``reverify: true`` to hash every file regardless of the marker.

Where each part lives:

==============  ========================================================================
``stage``       :func:`stage_dataset`: the orchestration (inspect, send, verify, rename)
``options``     :class:`StagingOptions` (the cluster's ``staging:``), :class:`StageResult`
``existing``    what is already there (marker, sha256), and writing the marker
``push``        the worker streams the objects (OpenSSH through the script, or SFTP)
``pull``        the HPC side fetches presigned URLs itself
``script``      the fixed HPC-side script: installing it, reading what it prints
``paths``       no symlink anywhere from the tenant's directory down to a destination
``progress``    progress lines of a transfer
==============  ========================================================================
"""

from __future__ import annotations

from aifactory.hpc.staging.options import STAGING_MODES, Log, StageResult, StagingMode, StagingOptions
from aifactory.hpc.staging.paths import SymlinkInPath, refuse_symlinks
from aifactory.hpc.staging.script import FETCH_SCRIPT, install_fetch_script
from aifactory.hpc.staging.stage import ABANDONED_AFTER_MIN, stage_dataset

__all__ = [
    "ABANDONED_AFTER_MIN",
    "FETCH_SCRIPT",
    "STAGING_MODES",
    "Log",
    "StageResult",
    "StagingMode",
    "StagingOptions",
    "SymlinkInPath",
    "install_fetch_script",
    "refuse_symlinks",
    "stage_dataset",
]
