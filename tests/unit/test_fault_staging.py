"""What the fault suite found in staging (``docs/fault-suite.md``), pinned on the local stand-in for
the HPC side (bash and files on this machine):

* a connection lost mid-staging: the failure itself is reported (not the clean-up's, which cannot
  run over the lost connection), and the task's next try removes what the lost try left;
* the owner token is checked; temporary directories of other stages younger than a day are kept;
* a lost connection names the service it was to, and a refusal of the object store is told apart
  (the task failure says which, and what to do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_staging_local import LocalShell, _dataset, _stage

from aifactory.errors import InputError
from aifactory.hpc.staging import stage_dataset
from aifactory.layout import TenantAreas

OWNER = "0123456789ab"


class LostShell(LocalShell):
    """The HPC login whose connection drops at the transfer: every command after it fails too."""

    lost = False

    def run(self, command: str, *, timeout: float | None = None) -> tuple[int, str, str]:
        if self.lost:
            raise EOFError("the SSH connection is gone")
        return super().run(command, timeout=timeout)

    def sftp_client(self) -> Any:
        shell, sftp = self, super().sftp_client()

        class _Sftp:
            def open(self, filename: str, mode: str = "r", bufsize: int = -1) -> Any:
                if "w" in mode and "/.staging-" in filename:
                    shell.lost = True
                    raise ConnectionResetError("connection reset by peer")
                return sftp.open(filename, mode, bufsize)

        return _Sftp()


def test_a_lost_connection_reports_itself_and_the_next_try_removes_what_it_left(tmp_path):
    store, m = _dataset()
    logs: list[str] = []
    with pytest.raises(ConnectionResetError, match="connection reset by peer"):
        stage_dataset(store, LostShell(), bucket="b", dataset_prefix="t/datasets/d/v-1/", manifest=m,
                      areas=TenantAreas(str(tmp_path / "t"), str(tmp_path / "t")), log=logs.append, owner=OWNER)
    parent = tmp_path / "t" / "datasets" / "d"
    left = [p.name for p in parent.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".staging-v-1-{OWNER}-"), left
    assert any("could not remove" in line and "the next try of this task removes it" in line for line in logs)

    other = parent / ".staging-v-1-fedcba987654-00000000"  # another task's stage, alive (young)
    other.mkdir()
    again, _ = _stage(store, m, tmp_path / "t", owner=OWNER)
    assert again.sent_files == 3
    assert sorted(p.name for p in parent.iterdir()) == sorted(["v-1", other.name])


@pytest.mark.parametrize("owner", ["", "XYZ", "0123", "../../x", "a" * 33])
def test_the_owner_token_is_checked(tmp_path, owner):
    store, m = _dataset()
    with pytest.raises(InputError, match="staging owner"):
        _stage(store, m, Path(tmp_path) / "t", owner=owner)


def test_a_lost_connection_names_the_service():
    from botocore.exceptions import EndpointConnectionError
    from paramiko import SSHException

    from operators.stages import lost_connection

    assert lost_connection(EndpointConnectionError(endpoint_url="http://127.0.0.1:1")) == "the object store"
    assert lost_connection(SSHException("SSH session not active")) == "the cluster's sshd"
    assert lost_connection(EOFError()) == "the cluster's sshd"
    assert lost_connection(OSError("Socket is closed")) == "the cluster's sshd"
    assert lost_connection(OSError("No such file")) is None
    assert lost_connection(ValueError("bad")) is None


def test_an_object_store_refusal_is_told_apart():
    from botocore.exceptions import ClientError

    from operators.stages import store_refusal

    def error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "PutObject")

    assert store_refusal(error("AccessDenied", 403)) == "PutObject"
    assert store_refusal(error("Forbidden", 403)) == "PutObject"
    assert store_refusal(error("NoSuchKey", 404)) is None
    assert store_refusal(error("PreconditionFailed", 412)) is None
    assert store_refusal(ValueError("x")) is None
