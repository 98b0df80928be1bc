"""A canary secret in the tenant's S3 and SSH connections is found nowhere after a full pipeline run.

One real run of the demo tenant's pipeline (scheduler, workers, triggerer, Slurm, S3), triggered
through the REST API; then every place a secret must never reach is read back and searched:

- task logs of every task and every try, as the REST API serves them and as files under the
  Airflow log folder (plus whatever every stack component's log gained during the run);
- every XCom value of the run (REST, raw and deserialized);
- every task instance's rendered template fields (REST ``rendered_fields``);
- the HPC side: every file under the tenant's directory (staged datasets, the run directory with
  the job wrapper, params, outputs and the job's own logs);
- the batch script as Slurm keeps it (``scontrol write batch_script``, read while the job record
  exists), the environment sbatch handed to slurmctld (its state save directory) and
  ``scontrol show job``;
- every field ``sacct`` records for the job and its steps (Slurm 22.05: SubmitLine, WorkDir,
  Comment, AdminComment, SystemComment, ... all of ``sacct --helpformat``).

What is searched for: the real secrets of the connections the run used, the S3 secret access key
and the SSH private key material (the key file the connection names), and the Airflow platform's
own secrets (Fernet key, JWT secret, API secret key). Each is found when the whole value or ANY
16-character piece of it appears (a truncated or wrapped leak counts). For the private key the
pieces are those of the PEM body that carry key material: pieces that every OpenSSH key shares
(the format's header) or that encode the public key are left out, so a logged public key is no
finding.

The explicit canaries, random strings planted for the duration of the run in fields Airflow
treats as secret and the factory never uses, so that they cannot break the login:

- the SSH connection's ``password``: Airflow's secrets masker registers every connection's password
  when a task fetches it; the factory authenticates with the key only (``SSHEndpoint`` ignores the
  password, asyncssh and the OpenSSH pipe never get it, paramiko does not need it for an
  unencrypted key, and the login node's sshd refuses password authentication);
- the S3 connection's extra ``aifp_canary_secret``: the masker hides extra values whose key names
  a secret; the AWS hook ignores extra keys it does not know. The secret key itself gets no
  invented value: it IS the credential (a wrong one breaks the run under IAM), so the real key is
  the canary there.

Both connections are the tenant's, in the connections file of the secrets directory (onboarding's;
Airflow's file backend re-reads it at every lookup, so running components see the canaries).

The test reports where a secret was found and which one, never the secret itself.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from urllib.request import Request, urlopen

import pytest

from aifactory import layout
from aifactory.hpc.slurm import job_name
from aifactory.local.airflow_api import AirflowClient
from aifactory.local.localstack import secrets_dir
from aifactory.platform.secrets import ConnectionStore
from aifactory.tenants import load_cluster, load_tenant

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SPEC = load_tenant("demo")
DAG_ID = layout.pipeline_dag_id(SPEC.tenant)
CLUSTER = load_cluster(SPEC.cluster)
PIECE = 16  # a leaked piece this long is a leak
#: the S3 connection's extra that carries the canary: a name Airflow's secrets masker hides ("secret")
CANARY_EXTRA_KEY = "aifp_canary_secret"


# -- the secrets ---------------------------------------------------------------------------------
def pieces(secret: str) -> set[str]:
    """The whole secret if short, else every PIECE-character substring of it."""
    return {secret} if len(secret) <= PIECE else {secret[i:i + PIECE] for i in range(len(secret) - PIECE + 1)}


def pem_body(text: str) -> str:
    return "".join(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("-----"))


def reference_key_pieces(comment: str) -> set[str]:
    """Pieces of a fresh key's PEM body: what every OpenSSH key of this type and comment shares."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", f"{tmp}/k"], check=True)
        return pieces(pem_body(Path(tmp, "k").read_text()))


def public_pieces(pub_line: str) -> set[str]:
    """Pieces of the public key blob in base64 at each of the 3 byte alignments it can take."""
    import base64

    blob = base64.b64decode(pub_line.split()[1])
    out: set[str] = set()
    for shift in range(3):
        text = base64.b64encode(b"\0" * shift + blob).decode()
        out |= pieces(text[4:-4])  # the ends mix in neighbouring bytes
    return out


def key_material_pieces(key_file: Path) -> set[str]:
    pub = subprocess.run(["ssh-keygen", "-y", "-f", str(key_file)], capture_output=True, text=True,
                         check=True).stdout.strip()
    comment = pub.split(maxsplit=2)[2] if len(pub.split()) > 2 else ""
    found = pieces(pem_body(key_file.read_text())) - reference_key_pieces(comment) - public_pieces(pub)
    assert len(found) > 20, f"too few secret pieces left of {key_file}: is it an OpenSSH private key?"
    return found


# -- where to look ------------------------------------------------------------------------------
def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif node is not None:
        yield str(node)


class Corpus:
    """Named texts to search; a JSON answer is kept raw and with its strings unescaped."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: str | bytes) -> None:
        self.texts.append((where, text.decode("latin-1") if isinstance(text, bytes) else text))

    def add_json(self, where: str, raw: str) -> None:
        self.add(where, raw)
        try:
            self.add(f"{where} (decoded)", "\n".join(strings(json.loads(raw))))
        except ValueError:
            pass

    def findings(self, secrets_: dict[str, set[str]]) -> list[str]:
        out = []
        for where, text in self.texts:
            for name, parts in secrets_.items():
                hits = [p for p in parts if p in text]
                if hits:
                    out.append(f"{name} in {where} ({len(hits)} of {len(parts)} pieces)")
        return out


class Rest:
    """GETs as the platform admin, the raw JSON kept (what any reader of the API gets)."""

    def __init__(self, api: AirflowClient) -> None:
        self.base = api.base_url.rstrip("/") + "/api/v2"
        self.token = api.token()

    def get(self, path: str, **params: Any) -> str:
        url = self.base + path + (f"?{urlencode(params)}" if params else "")
        req = Request(url, headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"})
        with urlopen(req, timeout=60) as resp:
            return resp.read().decode()


def files_under(root: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath, n)
            if p.is_file() and not p.is_symlink():
                yield p


class LogDeltas:
    """What each stack log file (component logs, Airflow's log folder) gains while the run lasts."""

    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = [r for r in roots if r.is_dir()]
        self.start = {p: p.stat().st_size for r in self.roots for p in files_under(r)}

    def read(self, corpus: Corpus) -> None:
        for r in self.roots:
            for p in files_under(r):
                with p.open("rb") as fh:
                    fh.seek(self.start.get(p, 0) if p.stat().st_size >= self.start.get(p, 0) else 0)
                    corpus.add(f"log file {p}", fh.read())


class SlurmWatch(threading.Thread):
    """Reads the job's batch script and record from slurmctld while the job exists (they are gone
    MinJobAge seconds after it ends); the job is found by its deterministic name."""

    def __init__(self, name: str) -> None:
        super().__init__(daemon=True)
        self.name_ = name
        self.stop = threading.Event()
        self.jobs: dict[str, dict[str, str]] = {}

    def run(self) -> None:
        state_dir = next((line.split("=", 1)[1].strip() for line in subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("StateSaveLocation")), "/var/spool/slurmctld")
        while not self.stop.is_set():
            ids = subprocess.run(["squeue", "-h", "-o", "%i", f"--name={self.name_}"], capture_output=True,
                                 text=True).stdout.split()
            for job in ids:
                seen = self.jobs.setdefault(job, {})
                for what, cmd in [("batch script", ["scontrol", "write", "batch_script", job, "-"]),
                                  ("scontrol show job", ["scontrol", "show", "job", "-d", job])]:
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode == 0 and out.stdout.strip():
                        seen[what] = out.stdout
                # the environment sbatch handed to slurmctld, kept with the script while the job lives
                saved = Path(state_dir, f"hash.{int(job) % 10}", f"job.{job}")
                for name in ("environment", "script"):
                    try:
                        seen[f"saved {name}"] = (saved / name).read_bytes().decode("latin-1")
                    except OSError:
                        pass
            self.stop.wait(0.5)


def sacct_all_fields(job: str) -> str:
    fields = subprocess.run(["sacct", "--helpformat"], capture_output=True, text=True, check=True).stdout.split()
    return subprocess.run(["sacct", "-j", job, "--parsable2", "-o", ",".join(fields)], capture_output=True,
                          text=True, check=True).stdout


# -- the test -----------------------------------------------------------------------------------
@contextmanager
def planted(store: ConnectionStore, conn_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The connection with a canary in it while the block runs; then what was there, unless
    onboarding rewrote the connection meanwhile."""
    original = store.get(conn_id)
    assert original is not None, f"connection {conn_id!r} is not in {store.path}: run make onboard"
    with_canary = change(json.loads(json.dumps(original)))
    store.put(conn_id, with_canary)
    try:
        yield original
    finally:
        if store.get(conn_id) == with_canary:
            store.put(conn_id, original)


@pytest.fixture()
def canary_connections(stack_env):
    """The demo tenant's SSH and S3 connections (from the connections file: the backend re-reads it
    at every lookup) with a canary each; both restored afterwards."""
    store = ConnectionStore(secrets_dir(stack_env))
    ssh_canary, s3_canary = (f"aifp-canary-{secrets.token_hex(16)}" for _ in range(2))

    def in_password(c: dict[str, Any]) -> dict[str, Any]:
        return {**c, "password": ssh_canary}

    def in_extra(c: dict[str, Any]) -> dict[str, Any]:
        return {**c, "extra_dejson": {**(c.get("extra_dejson") or {}), CANARY_EXTRA_KEY: s3_canary}}

    with planted(store, SPEC.identity.ssh_conn_id, in_password) as ssh, \
            planted(store, SPEC.identity.s3_conn_id, in_extra) as s3:
        yield {"ssh": ssh, "s3": s3, "ssh_canary": ssh_canary, "s3_canary": s3_canary}


def test_canary_secret_is_nowhere(api, stack_env, s3_client, canary_connections):
    conns = canary_connections
    key_file = Path(conns["ssh"]["extra_dejson"]["key_file"])
    searched: dict[str, set[str]] = {
        "the S3 secret access key": pieces(str(conns["s3"]["password"])),
        f"the SSH private key ({key_file.name})": key_material_pieces(key_file),
    }
    searched["the canary in the SSH connection's password"] = pieces(conns["ssh_canary"])
    searched[f"the canary in the S3 connection's extra {CANARY_EXTRA_KEY}"] = pieces(conns["s3_canary"])
    for name in ["fernet_key", "jwt_secret", "api_secret_key"]:
        path = secrets_dir(stack_env) / name
        if path.is_file():
            searched[f"Airflow's {name}"] = pieces(path.read_text().strip())

    log_folder = Path(stack_env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"])
    deltas = LogDeltas([log_folder, Path(stack_env["AIFP_STATE_DIR"]) / "log"])
    run_id = f"manual__canary-{secrets.token_hex(6)}"
    watch = SlurmWatch(job_name(SPEC.tenant, DAG_ID, run_id, "train", -1))
    watch.start()
    body = (REPO / "include/sample_data/iris.csv").read_bytes()
    key = f"{layout.raw_prefix(SPEC.tenant)}canary/{secrets.token_hex(4)}.csv"
    s3_client.put_object(Bucket=SPEC.bucket, Key=key, Body=body)
    try:
        api.trigger(DAG_ID, {**SPEC.defaults, "dataset_uri": layout.s3_uri(SPEC.bucket, key)}, run_id=run_id)
        run = api.wait_for_run(DAG_ID, run_id, timeout=900)
    finally:
        time.sleep(2)  # one more look at slurmctld after the end
        watch.stop.set()
        watch.join()
    tis = api.task_instances(DAG_ID, run_id)
    assert run["state"] == "success", {t["task_id"]: t["state"] for t in tis}

    corpus = Corpus()
    rest = Rest(api)
    run_path = f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"
    # task instances with their rendered template fields
    corpus.add_json("REST task instances (rendered_fields)", rest.get(f"{run_path}/taskInstances", limit=100))
    for ti in tis:
        tid, mi = ti["task_id"], ti.get("map_index", -1)
        ti_path = f"{run_path}/taskInstances/{tid}" + ("" if mi == -1 else f"/{mi}")
        corpus.add_json(f"REST task instance {tid}", rest.get(ti_path))
        for try_number in range(1, (ti.get("try_number") or 1) + 1):
            corpus.add_json(f"REST log of {tid} try {try_number}", rest.get(
                f"{run_path}/taskInstances/{tid}/logs/{try_number}", full_content="true", map_index=mi))
    # every XCom of the run
    entries = json.loads(rest.get(f"{run_path}/taskInstances/~/xcomEntries", limit=100))["xcom_entries"]
    assert entries, "the run left no XCom: nothing was searched there"
    for e in entries:
        path = f"{run_path}/taskInstances/{e['task_id']}/xcomEntries/{quote(e['key'], safe='')}"
        corpus.add_json(f"REST XCom {e['task_id']}/{e['key']}", rest.get(path, map_index=e.get("map_index", -1)))
        corpus.add_json(f"REST XCom {e['task_id']}/{e['key']} (deserialized)",
                        rest.get(path, map_index=e.get("map_index", -1), deserialize="true"))
    # log files: this run's whole folder, and what every other log gained meanwhile
    run_logs = log_folder / f"dag_id={DAG_ID}" / f"run_id={run_id}"
    assert any(files_under(run_logs)), f"no task log files under {run_logs}"
    for p in files_under(run_logs):
        corpus.add(f"log file {p}", p.read_bytes())
    deltas.read(corpus)
    # the HPC side: the tenant's whole areas (staged data on scratch; run dirs and job logs in project)
    areas = SPEC.areas(CLUSTER)
    wrapper = Path(layout.run_dir(areas, watch.name_)) / layout.JOB_WRAPPER
    assert wrapper.is_file(), f"the job wrapper {wrapper} is missing: the run dir layout changed?"
    for p in (p for area in areas.roots for p in files_under(Path(area))):
        corpus.add(f"HPC file {p}", p.read_bytes())
    # Slurm: the job as slurmctld held it, and everything sacct recorded
    assert watch.jobs, f"the train job {watch.name_} was never seen in squeue"
    for job, seen in watch.jobs.items():
        assert "batch script" in seen and "saved environment" in seen, (
            f"the batch script or environment of job {job} could not be read while it existed")
        for what, text in seen.items():
            corpus.add(f"Slurm {what} of job {job}", text)
        record = sacct_all_fields(job)
        corpus.add(f"sacct of job {job}", record)
        # the job ran as the SSH connection's user: the searched key is the one the run used
        assert f"|{conns['ssh']['login']}|" in record, f"job {job} did not run as {conns['ssh']['login']}"

    findings = corpus.findings(searched)
    assert not findings, "secrets leaked:\n" + "\n".join(findings)
    assert len(corpus.texts) > 20, [w for w, _ in corpus.texts]


def test_the_search_finds_a_planted_secret():
    """The search itself: a piece of a secret embedded in a JSON answer, wrapped or escaped, is found."""
    secret = secrets.token_urlsafe(40)
    corpus = Corpus()
    corpus.add_json("answer", json.dumps({"log": f"boto said: {secret[5:23]}\n"}))
    corpus.add("clean", "nothing to see " * 100)
    assert corpus.findings({"s": pieces(secret)}) == ["s in answer (3 of 39 pieces)",
                                                      "s in answer (decoded) (3 of 39 pieces)"]
    # and it never prints the secret
    assert all(secret[5:21] not in f for f in corpus.findings({"s": pieces(secret)}))
