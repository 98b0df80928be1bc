"""What a real site's logins cost: straight to the login node, through the bastion, with a certificate.

Against the running local stack (``make up``), as the demo tenant's user, with the factory's own
hook (``operators.hooks.FactorySSHHook``, paramiko) and the triggerer's (asyncssh):

* ``direct_ms``: a login straight to the login node with the plain key, then ``true`` (the tests' way in);
* ``bastion_ms``: the factory's way: the bastion, its forward, the login node, each with the certificate;
* ``bastion_async_ms``: the same through asyncssh (``aconnect``: the triggerer's);
* ``renew_ms``: one certificate renewal by the local CA's command (a throw-away key);
* ``fresh_check_us``: the check a watch makes on every poll when nothing is due (the cached read).

Medians of ``--rounds`` (default 15). Prints one JSON line last.

Usage: ``.venv/bin/python bench/ssh_logins.py [--rounds N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, stack_env

CONN = "aifactory_hpc_local_demo"


def _ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    env = stack_env()
    sys.path.insert(0, str(REPO))
    import paramiko

    from aifactory.hpc.certificates import CertificateRenewal, certificate_file, ensure_fresh
    from aifactory.local.localstack import tenant_login
    from operators.hooks import FactorySSHHook

    user, key = tenant_login(env, "demo")

    def direct() -> None:
        c = paramiko.SSHClient()
        c.load_host_keys(env["AIFP_SSH_KNOWN_HOSTS"])
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.connect("127.0.0.1", port=int(env["AIFP_SSH_PORT"]), username=user, look_for_keys=False,
                  allow_agent=False, pkey=paramiko.Ed25519Key.from_private_key_file(key))
        c.exec_command("true")[1].channel.recv_exit_status()
        c.close()

    def bastion() -> None:
        h = FactorySSHHook(ssh_conn_id=CONN)
        h.run("true")
        h.close()

    async def abastion() -> None:
        h = FactorySSHHook(ssh_conn_id=CONN)
        conn = await h.aconnect()
        await h.run_on(conn, "true")
        conn.close()
        await conn.wait_closed()

    direct()
    bastion()  # warm: imports, the certificate
    result = {"direct_ms": _ms(direct, args.rounds), "bastion_ms": _ms(bastion, args.rounds),
              "bastion_async_ms": _ms(lambda: asyncio.run(abastion()), args.rounds)}

    ep = FactorySSHHook(ssh_conn_id=CONN).endpoint
    with tempfile.TemporaryDirectory() as tmp:
        k = Path(tmp) / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
        renewal = CertificateRenewal(command=ep.renewal.command)

        def renew() -> None:
            certificate_file(k).unlink(missing_ok=True)  # due: signed again every round
            assert ensure_fresh(str(k), user, renewal).renewed

        result["renew_ms"] = _ms(renew, max(3, args.rounds // 3))
    quiet = CertificateRenewal(command=ep.renewal.command)
    ensure_fresh(key, user, quiet)
    t = time.perf_counter()
    for _ in range(1000):
        ensure_fresh(key, user, quiet)
    result["fresh_check_us"] = round((time.perf_counter() - t) * 1000, 1)  # 1000 checks, in ms = us each
    result["rounds"] = args.rounds
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
