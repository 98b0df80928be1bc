"""The doctor's verdicts: a wrong host key and an unreachable cluster are told apart, each failure
says what to fix, and the command exits non-zero when anything failed."""

from __future__ import annotations

import base64
import socket

import paramiko
import pytest
from botocore.exceptions import ClientError

from aifactory.platform import doctor
from aifactory.platform.doctor_checks import (
    Finding,
    SSHTarget,
    association_finding,
    directory_finding,
    fingerprint,
    foreign_bucket_finding,
    limits_finding,
    own_bucket_finding,
    pinned_fingerprint,
    ssh_findings,
    unreachable,
)

# a throwaway host key and its fingerprint as `ssh-keygen -lf` prints it
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILPJDWtN8+jNtEzACNc6UYjj/KdnMYFtkDevfeR6VIjY"
FP_A = "SHA256:qi7qVbajQ6wZ83xXNcm/F+KoARd4fesNHtbFJ/uKG8w"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB"


def _pkey(line: str) -> paramiko.PKey:
    return paramiko.Ed25519Key(data=base64.b64decode(line.split()[1]))


TARGET = SSHTarget("aifactory_hpc_local_demo", "127.0.0.1", 2222, "aifp-demo", "/k/id_ed25519", KEY_B)


class PermanentError(Exception):
    """Stands in for operators.hooks.SSHPermanentError (raised *from* paramiko's exception)."""


def _raised_from(cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise PermanentError("SSH refused") from inner
    except PermanentError as outer:
        return outer


def test_fingerprint_is_openssh_s():
    assert fingerprint(base64.b64decode(KEY_A.split()[1])) == FP_A
    assert pinned_fingerprint(KEY_A) == f"ssh-ed25519 {FP_A}"
    assert pinned_fingerprint("garbage").startswith("unparsable host_key")


def test_host_key_mismatch_names_both_fingerprints_and_the_connection():
    exc = _raised_from(paramiko.BadHostKeyException("[127.0.0.1]:2222", _pkey(KEY_A), _pkey(KEY_B)))
    host_key, login = ssh_findings(TARGET, exc)
    assert (host_key.check, host_key.ok, login.ok) == ("host key", False, False)
    assert host_key.detail.startswith(f"host key mismatch: the cluster presents ssh-ed25519 {FP_A}, the connection "
                                      f"pins {pinned_fingerprint(KEY_B)}")
    assert "update extra.host_key of aifactory_hpc_local_demo" in host_key.detail
    assert "unreachable" not in host_key.detail


@pytest.mark.parametrize("exc, words", [
    (ConnectionRefusedError(111, "Connection refused"), "unreachable: connection refused at 127.0.0.1:2222"),
    (TimeoutError("timed out"), "unreachable: connection timed out at 127.0.0.1:2222"),
    (socket.gaierror(-2, "Name or service not known"), "does not resolve"),
    (OSError(113, "No route to host"), "unreachable: [Errno 113] No route to host at 127.0.0.1:2222"),
])
def test_unreachable_is_its_own_verdict(exc, words):
    text = unreachable(exc, "127.0.0.1", 2222)
    assert words in text and "host key" not in text


def test_login_refused_is_not_a_host_key_problem():
    host_key, login = ssh_findings(TARGET, _raised_from(paramiko.AuthenticationException("Authentication failed.")))
    assert host_key.ok and not login.ok
    assert "login refused for aifp-demo with key /k/id_ed25519" in login.detail and "authorized_keys" in login.detail


def test_success_and_other_ssh_failures():
    assert all(f.ok for f in ssh_findings(TARGET, None))
    other = ssh_findings(TARGET, EOFError("banner"))
    assert not any(f.ok for f in other) and "check the connection aifactory_hpc_local_demo" in other[1].detail


def test_directory_owner_and_mode():
    assert directory_finding("demo", "/srv/demo", "aifp-demo", (0, "aifp-demo 700\n", "")).ok
    bad = directory_finding("demo", "/srv/demo", "aifp-demo", (0, "aifactory 755\n", ""))
    assert not bad.ok and "must be aifp-demo, 700" in bad.detail
    assert "make onboard" in directory_finding("demo", "/srv/demo", "aifp-demo", (1, "", "No such file")).detail


def test_slurm_association_and_limits():
    assert association_finding("demo", "demo", "aifp-demo", ["aifp-demo"]).ok
    shared = association_finding("demo", "demo", "aifp-demo", ["aifactory", "aifp-demo"])
    assert not shared.ok and "also associated: aifactory" in shared.detail
    assert "is not associated" in association_finding("demo", "demo", "aifp-demo", []).detail
    want = {"cpu": 30000, "gres/gpu": 0}
    assert limits_finding("demo", "demo", want, dict(want)).ok
    wrong = limits_finding("demo", "demo", want, {})
    assert not wrong.ok and "GrpTRESMins is unlimited, the allocation says cpu=30000,gres/gpu=0" in wrong.detail


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "ListObjectsV2")


def test_s3_verdicts():
    assert own_bucket_finding("demo", "c", "b", None, "listed").ok
    assert "run make onboard" in own_bucket_finding("demo", "c", "b", _client_error("InvalidAccessKeyId"), "").detail
    assert foreign_bucket_finding("demo", "c", "other", "acme", _client_error("AccessDenied"), "listing").ok
    allowed = foreign_bucket_finding("demo", "c", "other", "acme", None, "writing")
    assert not allowed.ok and "writing was ALLOWED in acme's bucket" in allowed.detail
    unclear = foreign_bucket_finding("demo", "c", "other", "acme", _client_error("NoSuchBucket"), "listing")
    assert not unclear.ok and "not AccessDenied" in unclear.detail


def test_report_and_exit_status(monkeypatch, capsys):
    rows = [Finding("reachable", "x", True, "answers"), Finding("host key", "x", False, "host key mismatch: ...")]
    monkeypatch.setattr(doctor, "diagnose", lambda tenants, conns, **kw: rows)
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    assert "host key   x       FAIL    host key mismatch" in out and out.rstrip().endswith("2 check(s), 1 FAILED")
    monkeypatch.setattr(doctor, "diagnose", lambda tenants, conns, **kw: rows[:1])
    assert doctor.main([]) == 0


def test_a_broken_spec_is_a_failed_row_naming_file_and_key(tmp_path, monkeypatch):
    (tmp_path / "zeta.yaml").write_text("tenant: zeta\n")
    monkeypatch.setattr(doctor, "check_cluster", lambda cluster, tenants, findings: None)  # no cluster here
    findings = doctor.diagnose(tenants_dir=tmp_path)
    spec = [f for f in findings if f.check == "spec"]
    assert len(spec) == 1 and not spec[0].ok and spec[0].target.endswith("zeta.yaml")
    assert "zeta.yaml: required key" in spec[0].detail
