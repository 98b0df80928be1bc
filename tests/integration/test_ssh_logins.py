"""Logins of a real site on the local stack: the bastion (a second sshd) and SSH certificates.

Every connection of the factory names the bastion (``proxy_jump``) and a renewal command for its
login's certificate (``cert_renew_command``, the local CA); the bastion admits certificates only and
forwards to the login node only. Here, on the three SSH paths (paramiko in workers, asyncssh in the
triggerer, the OpenSSH client for bulk data): each passes the bastion, with a certificate; a wrong
bastion host key is refused on each; and a login whose certificate expired is renewed first, while
a broken CA gives a clear, retryable error instead of a refused login. Throw-away keys signed by the
stack's CA are used where a test changes a certificate, so the tenants' own logins are untouched.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import paramiko
import pytest

from aifactory.hpc.certificates import certificate_file, read_certificate
from aifactory.local.localstack import tenant_login

pytestmark = pytest.mark.integration

TENANT_CONN = "aifactory_hpc_local_demo"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def _log(stack_env, name: str) -> Path:
    return Path(stack_env["AIFP_STATE_DIR"]) / "log" / f"{name}.log"


def _accepted(stack_env, name: str, user: str) -> list[str]:
    """sshd's "Accepted publickey for <user>" lines (LogLevel VERBOSE names the certificate's id)."""
    text = _log(stack_env, name).read_text(errors="replace")
    return [line for line in text.splitlines() if f"Accepted publickey for {user} " in line]


def _conn(stack_env, conn_id: str = TENANT_CONN) -> dict:
    """A connection as the factory has it (onboarding's connections file)."""
    data = json.loads((Path(stack_env["AIFP_SECRETS_DIR"]) / "connections.json").read_text())
    conn = dict(data[conn_id])
    conn["extra"] = dict(conn.pop("extra_dejson", None) or conn.get("extra") or {})
    return conn


def _as_env(monkeypatch, conn_id: str, conn: dict) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return conn_id


def _fingerprint(key: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True,
                          check=True).stdout.split()[1]


@pytest.mark.parametrize("transfer, sshd", [(False, "sshd"), (True, "sshd-dtn")])
def test_all_three_ssh_paths_pass_the_bastion_with_a_certificate(stack_env, throwaway_login, transfer, sshd):
    """Each path logs in twice: at the bastion, then (through its forward) at the login node (or, for
    bulk data, the data-transfer node), both times with the certificate; the key has no
    authorized_keys entry anywhere."""
    from operators.hooks import FactorySSHHook

    cid, key, _ = throwaway_login
    mine = f"ED25519-CERT {_fingerprint(key)} "

    def logins(name: str) -> list[str]:
        return [line for line in _accepted(stack_env, name, "aifp-demo") if mine in line]

    hook = FactorySSHHook(ssh_conn_id=cid, transfer=transfer)
    assert hook.endpoint.jump is not None and hook.endpoint.renewal is not None
    port = int(stack_env["AIFP_DTN_PORT" if transfer else "AIFP_SSH_PORT"])
    assert hook.endpoint.port == port
    assert hook.run("whoami")[1].strip() == "aifp-demo"                               # paramiko
    pipe = hook.bulk_pipe()
    assert pipe is not None and pipe.jump == hook.endpoint.jump
    rc, out, err = pipe.run("wc -c", lambda f: f.write(b"x" * 4096))                 # OpenSSH
    assert (rc, out.strip()) == (0, "4096"), err
    hook.close()
    async_hook = FactorySSHHook(ssh_conn_id=cid, transfer=transfer)
    assert asyncio.run(async_hook.run_async("whoami"))[1].strip() == "aifp-demo"  # asyncssh
    assert len(logins("sshd-bastion")) == 3 and len(logins(sshd)) == 3, (logins("sshd-bastion"), logins(sshd))
    other = "sshd" if transfer else "sshd-dtn"
    assert logins(other) == []  # bulk data on the data-transfer node, jobs on the login node
    cert = read_certificate(certificate_file(key))
    assert all(f"ID {cert.key_id} " in line for line in logins("sshd-bastion"))


def test_the_bastion_admits_certificates_only_and_no_shell(stack_env):
    user, key = tenant_login(stack_env, "demo")
    known = Path(stack_env["AIFP_SSH_KNOWN_HOSTS"])
    port = int(stack_env["AIFP_BASTION_PORT"])

    def login(**kw) -> paramiko.SSHClient:
        c = paramiko.SSHClient()
        c.load_host_keys(str(known))
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.connect("127.0.0.1", port=port, username=user, look_for_keys=False, allow_agent=False, **kw)
        return c

    with pytest.raises(paramiko.AuthenticationException):  # the plain key that the login node accepts
        login(pkey=paramiko.Ed25519Key.from_private_key_file(key))
    c = login(key_filename=key)  # the key with its certificate beside it
    try:
        _, out, _ = c.exec_command("echo shell")
        assert "shell" not in out.read().decode() and out.channel.recv_exit_status() != 0  # nologin
        with pytest.raises(paramiko.ChannelException):  # forwarding goes to the login node only
            c.get_transport().open_channel("direct-tcpip", ("127.0.0.1", 5555), ("127.0.0.1", 0))
    finally:
        c.close()


def test_a_wrong_bastion_host_key_is_refused_on_all_three_paths(stack_env, monkeypatch):
    from operators.hooks import FactorySSHHook, SSHPermanentError

    conn = _conn(stack_env)
    conn["extra"]["proxy_jump"] = {**conn["extra"]["proxy_jump"], "host_key": OTHER_KEY}
    cid = _as_env(monkeypatch, "aifp_wrong_bastion", conn)
    hook = FactorySSHHook(ssh_conn_id=cid, connect_attempts=1)
    with pytest.raises(SSHPermanentError, match="via"):
        hook.run("true")
    with pytest.raises(SSHPermanentError):
        asyncio.run(FactorySSHHook(ssh_conn_id=cid, connect_attempts=1).run_async("true"))
    rc, _, err = hook.bulk_pipe().run("true", lambda f: None)
    assert rc == 255 and "Host key verification failed" in err


@pytest.fixture
def throwaway_login(stack_env, tmp_path, monkeypatch):
    """A new key of the demo tenant's user (no authorized_keys entry: certificates only), and a copy
    of the stack's CA to sign it with (the same CA key, so both sshds trust it; breaking the copy
    leaves the stack's CA alone)."""
    ca = tmp_path / "ca"
    shutil.copytree(stack_env["AIFP_SSH_CA_DIR"], ca, ignore=shutil.ignore_patterns("offline", "validity"))
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    conn = _conn(stack_env)
    command = conn["extra"]["cert_renew_command"]
    conn["extra"]["cert_renew_command"] = [str(ca) if prev == "--ca-dir" else a
                                           for prev, a in zip([None, *command], command, strict=False)]
    conn["extra"]["key_file"] = str(key)
    return _as_env(monkeypatch, "aifp_throwaway", conn), key, ca


def test_an_expired_certificate_is_renewed_before_the_login(stack_env, throwaway_login):
    from operators.hooks import FactorySSHHook

    cid, key, ca = throwaway_login
    (ca / "validity").write_text("+1m\n")
    # an expired certificate of this key, signed by the site CA an hour ago
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca / "ca"), "-I", "expired", "-n", "aifp-demo",
                    "-V", "-2h:-1h", f"{key}.pub"], check=True)
    assert read_certificate(certificate_file(key)).remaining_s(__import__("time").time()) < 0
    hook = FactorySSHHook(ssh_conn_id=cid, connect_attempts=1)
    assert hook.run("whoami")[1].strip() == "aifp-demo"
    fresh = read_certificate(certificate_file(key))
    assert fresh.key_id.startswith("aifp-demo@aifactory-local-") and 0 < fresh.validity_s <= 125
    hook.close()


def test_a_broken_ca_is_a_clear_retryable_error_not_a_refused_login(stack_env, throwaway_login):
    from operators.hooks import FactorySSHHook, SSHCredentialPending, SSHPermanentError

    cid, key, ca = throwaway_login
    (ca / "offline").touch()
    for run in (lambda h: h.run("true"), lambda h: asyncio.run(h.run_async("true"))):
        with pytest.raises(SSHCredentialPending) as info:
            run(FactorySSHHook(ssh_conn_id=cid, connect_attempts=1))
        assert not isinstance(info.value, SSHPermanentError)
        msg = str(info.value)
        assert re.search(r"no certificate .* yet", msg) and "the local CA is offline" in msg, msg
        assert "via [127.0.0.1]:" in msg and "a running job is not affected" in msg
    assert not os.path.exists(certificate_file(key))
