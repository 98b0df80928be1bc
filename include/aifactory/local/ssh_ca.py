"""The local stack's SSH certificate authority: the site CA that a real AI Factory runs elsewhere.

The local bastion admits certificate logins only (``TrustedUserCAKeys``, no ``authorized_keys``), as
EuroHPC gateways do; the login node trusts the same CA. Each SSH connection of the local cluster
names ``python -m aifactory.local.ssh_ca sign --key {key_file} --principal {login}`` as its
``cert_renew_command``, so a login's certificate is signed here, when it is due
(:mod:`aifactory.hpc.certificates`). A real site's command asks its own CA instead (a web portal
token, ``step ssh certificate``, a site script); nothing else changes.

Files, in ``<secrets>/ssh_ca/`` (0700):

* ``ca``, ``ca.pub``: the CA key (``ca.pub`` is what sshd trusts);
* ``validity``: how long each certificate is valid, an ``ssh-keygen -V`` span such as ``+60m``
  (default :data:`DEFAULT_VALIDITY`); the tests shorten it to three minutes;
* ``offline``: while this file exists the CA refuses to sign (exit 3): the tests break renewal this way.

Usage: ``python -m aifactory.local.ssh_ca init`` | ``sign --key KEY --principal LOGIN``
(the CA directory: ``--ca-dir``, else ``$AIFP_SECRETS_DIR/ssh_ca``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aifactory.hpc.certificates import certificate_file

#: certificates last this long unless ``<ca dir>/validity`` says otherwise
DEFAULT_VALIDITY = "+60m"
#: an ``ssh-keygen -V`` span the validity file may hold: +<n>[smhdw]
_SPAN = re.compile(r"^\+[1-9][0-9]{0,6}[smhdw]?$")
#: the CA directory inside the secrets directory
CA_DIRNAME = "ssh_ca"


def ca_dir(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    secrets = os.environ.get("AIFP_SECRETS_DIR")
    if not secrets:
        raise SystemExit("ssh_ca: AIFP_SECRETS_DIR is not set; source .stack/stack.env or pass --ca-dir")
    return Path(secrets) / CA_DIRNAME


def init(directory: Path) -> Path:
    """Create the CA key once (0600, in a 0700 directory); return ``ca.pub``."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key = directory / "ca"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "aifactory-local-ssh-ca", "-f", str(key)],
                       check=True)
    os.chmod(key, 0o600)
    return directory / "ca.pub"


def validity(directory: Path) -> str:
    f = directory / "validity"
    span = f.read_text().strip() if f.exists() else DEFAULT_VALIDITY
    if not _SPAN.match(span):
        raise SystemExit(f"ssh_ca: {f} holds {span!r}; write an ssh-keygen span such as +60m or +3m")
    return span


def sign(directory: Path, key_file: Path, principal: str) -> Path:
    """Sign ``<key_file>.pub`` for ``principal``; write ``<key_file>-cert.pub`` atomically."""
    if (directory / "offline").exists():
        print(f"ssh_ca: the local CA is offline ({directory / 'offline'} exists); remove that file to sign again",
              file=sys.stderr)
        raise SystemExit(3)
    ca = directory / "ca"
    pub = Path(f"{key_file}.pub")
    if not ca.exists():
        raise SystemExit(f"ssh_ca: no CA key at {ca}; run python -m aifactory.local.ssh_ca init")
    if not pub.exists():
        raise SystemExit(f"ssh_ca: no public key {pub} beside {key_file}")
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", principal):
        raise SystemExit(f"ssh_ca: {principal!r} is not a Unix login name")
    target = certificate_file(key_file)
    with tempfile.TemporaryDirectory(prefix="aifp-ca-", dir=target.parent) as tmp:
        shutil.copyfile(pub, Path(tmp) / "key.pub")
        key_id = f"{principal}@aifactory-local-{int(time.time())}"
        # -V -1m:<span>: valid from a minute ago (clock skew), for <span>
        p = subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", key_id, "-n", principal,
                            "-V", f"-1m:{validity(directory)}", str(Path(tmp) / "key.pub")],
                           capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise SystemExit(f"ssh_ca: ssh-keygen -s failed: {p.stderr.strip()}")
        made = Path(tmp) / "key-cert.pub"
        os.chmod(made, 0o644)
        os.replace(made, target)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aifactory.local.ssh_ca", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ca-dir")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("init", help="create the CA key (once); print the path of ca.pub")
    s = sub.add_parser("sign", help="sign KEY.pub for PRINCIPAL into KEY-cert.pub")
    s.add_argument("--key", required=True)
    s.add_argument("--principal", required=True)
    args = ap.parse_args(argv)
    directory = ca_dir(args.ca_dir)
    if args.cmd == "init":
        print(init(directory))
    else:
        print(sign(directory, Path(args.key), args.principal))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
