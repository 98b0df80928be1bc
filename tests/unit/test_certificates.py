"""Short-lived SSH certificates: reading them, deciding when to renew, renewing once, failing clearly.

Real ``ssh-keygen`` signs real certificates with a throw-away CA (the local stack's CA script); the
clock and, where a failure is wanted, the renewal command are fakes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from aifactory.errors import FactoryError
from aifactory.hpc.certificates import (
    CertificateRenewal,
    CertificateUnavailable,
    certificate_file,
    ensure_fresh,
    parse_listing,
    read_certificate,
)
from aifactory.local import ssh_ca

LISTING = """k-cert.pub:
        Type: ssh-ed25519-cert-v01@openssh.com user certificate
        Key ID: "aifp-demo@aifactory-local-1"
        Serial: 0
        Valid: from 2026-12-03T17:48:00 to 2026-12-03T17:52:00
        Principals:
                aifp-demo
        Critical Options: (none)
"""


def test_listing_gives_validity_in_utc_and_principals():
    s = parse_listing("k-cert.pub", LISTING)
    assert s.key_id == "aifp-demo@aifactory-local-1" and s.principals == ("aifp-demo",)
    assert s.validity_s == 240 and time.strftime("%H:%M", time.gmtime(s.valid_before)) == "17:52"
    forever = parse_listing("k", LISTING.replace("from 2026-12-03T17:48:00 to 2026-12-03T17:52:00", "forever"))
    assert forever.valid_before == float("inf")
    with pytest.raises(CertificateUnavailable, match="no key id or validity"):
        parse_listing("k", "garbage")


def test_renewal_is_due_within_a_third_of_the_validity_or_the_lead_time():
    r = CertificateRenewal(command=("x",), renew_before_s=600)
    s = parse_listing("k", LISTING)  # 240 s valid: due in its last 80 s
    assert not r.due(s, s.valid_before - 81) and r.due(s, s.valid_before - 79) and r.due(None, 0)
    hour = parse_listing("k", LISTING.replace("17:52:00", "18:48:00"))  # 1 h valid: due in its last 600 s
    assert not r.due(hour, hour.valid_before - 601) and r.due(hour, hour.valid_before - 599)


@pytest.fixture
def ca(tmp_path, monkeypatch):
    directory = tmp_path / "ca"
    ssh_ca.init(directory)
    key = tmp_path / "tenant" / "id_ed25519"
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    command = (sys.executable, "-m", "aifactory.local.ssh_ca", "--ca-dir", str(directory), "sign",
               "--key", "{key_file}", "--principal", "{login}")
    return directory, key, CertificateRenewal(command=command, renew_before_s=600)


def test_a_missing_certificate_is_signed_then_left_alone_until_due(ca):
    directory, key, renewal = ca
    (directory / "validity").write_text("+3m\n")
    first = ensure_fresh(str(key), "aifp-demo", renewal)
    assert first.renewed and "SSH certificate renewed for aifp-demo" in first.message
    state = read_certificate(certificate_file(key))
    assert state.principals == ("aifp-demo",) and 170 < state.valid_before - time.time() <= 180
    again = ensure_fresh(str(key), "aifp-demo", renewal)
    assert not again.renewed and again.message is None and again.state == state
    # due (a fake clock in its last third): renewed again, now for ten minutes
    (directory / "validity").write_text("+10m\n")
    later = ensure_fresh(str(key), "aifp-demo", renewal, now=lambda: state.valid_before - 30)
    assert later.renewed


def test_a_broken_renewal_is_a_warning_while_valid_and_an_error_naming_why_once_expired(ca):
    directory, key, renewal = ca
    ensure_fresh(str(key), "aifp-demo", renewal)
    state = read_certificate(certificate_file(key))
    (directory / "offline").touch()
    soon = ensure_fresh(str(key), "aifp-demo", renewal, now=lambda: state.valid_before - 30)
    assert not soon.renewed and "logins keep working until it expires" in soon.message
    assert "the local CA is offline" in soon.message
    with pytest.raises(CertificateUnavailable, match=r"expired at .* exited 3: .*the local CA is offline"):
        ensure_fresh(str(key), "aifp-demo", renewal, now=lambda: state.valid_before + 1)
    (directory / "offline").unlink()
    (directory / "validity").write_text("+2h\n")  # outlasts the fake clock's "expired" hour
    # within 30 s of the failure the renewal is not run again: the same error, at once
    with pytest.raises(CertificateUnavailable, match="the local CA is offline"):
        ensure_fresh(str(key), "aifp-demo", renewal, now=lambda: state.valid_before + 20)
    assert ensure_fresh(str(key), "aifp-demo", renewal, now=lambda: state.valid_before + 40).renewed


def test_a_renewal_command_that_is_missing_or_writes_nothing_is_named(tmp_path):
    key = tmp_path / "id"
    with pytest.raises(CertificateUnavailable, match="exited 127"):
        ensure_fresh(str(key), "u", CertificateRenewal(command=("/nonexistent/site-cert", "{key_file}")))
    with pytest.raises(CertificateUnavailable, match="succeeded but left no certificate"):
        ensure_fresh(str(key), "u", CertificateRenewal(command=("true",)))


def test_renewal_commands_are_argv_with_known_placeholders_only():
    r = CertificateRenewal.from_extra({"cert_renew_command": ["site-cert", "--key={key_file}", "{login}"]})
    assert r.argv("/k/my key", "a; rm -rf /") == ["site-cert", "--key=/k/my key", "a; rm -rf /"]  # argv: no shell
    assert CertificateRenewal.from_extra({}) is None
    for bad in ("site-cert {key_file}", ["site-cert", "{host}"], ["site-cert", ""]):
        with pytest.raises(FactoryError):
            CertificateRenewal.from_extra({"cert_renew_command": bad})


def test_the_local_ca_refuses_a_principal_that_is_not_a_login(ca):
    directory, key, _ = ca
    with pytest.raises(SystemExit, match="not a Unix login"):
        ssh_ca.sign(directory, Path(key), "root; id")
