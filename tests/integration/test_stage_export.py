"""Staging (S3 -> HPC over SFTP, verified by sha256 there) and export (HPC -> S3, manifest last)
against the real sshd (pinned host key) and the real S3 endpoint of the local stack."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.data.ingest import ingest_dataset
from aifactory.data.s3 import list_keys
from aifactory.errors import FactoryError
from aifactory.hpc.remote import q, sha256_many
from aifactory.hpc.staging import stage_dataset
from aifactory.models.contract import CompletionMarker, MarkerFile
from aifactory.models.export import CardContext, ExportError, export_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BUCKET = "aifactory"




@pytest.fixture()
def dataset(s3_client, tmp_path):
    key = f"itest/raw/iris-{secrets.token_hex(3)}.csv"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=(REPO / "include/sample_data/iris.csv").read_bytes())
    manifest = ingest_dataset(s3_client, source_uri=f"s3://{BUCKET}/{key}", bucket=BUCKET, tenant="itest",
                              workdir=tmp_path, log=lambda m: None)
    return manifest, f"itest/datasets/{manifest.name}/{manifest.version}/"


def test_stage_verifies_skips_and_resends_tampered(s3_client, shell, test_areas, dataset):
    manifest, prefix = dataset
    logs: list[str] = []
    first = stage_dataset(s3_client, shell, bucket=BUCKET, dataset_prefix=prefix, manifest=manifest,
                          areas=test_areas, log=logs.append)
    assert not first.skipped and first.files == len(manifest.files)
    remote = first.remote_dir
    assert remote == f"{test_areas.scratch}/datasets/{manifest.name}/{manifest.version}"  # scratch: datasets
    sums = sha256_many(shell, [f"{remote}/{f.path}" for f in manifest.files])
    assert sums == {f"{remote}/{f.path}": f.sha256 for f in manifest.files}
    # private directories, no temporary leftovers
    rc, out, _ = shell.run(f"stat -c %a {q(test_areas.scratch)} {q(remote)}; ls -A {q(remote + '/..')}")
    modes, listing = out.split()[:2], out.split()[2:]
    assert modes == ["700", "700"]
    assert listing == [manifest.version]

    second = stage_dataset(s3_client, shell, bucket=BUCKET, dataset_prefix=prefix, manifest=manifest,
                           areas=test_areas, log=logs.append)
    assert second.skipped

    # tamper with a staged file: the next staging detects it and sends the data again
    victim = f"{remote}/{manifest.files[0].path}"
    shell.run(f"printf garbage >> {q(victim)}")
    third = stage_dataset(s3_client, shell, bucket=BUCKET, dataset_prefix=prefix, manifest=manifest,
                          areas=test_areas, log=logs.append)
    assert not third.skipped
    assert sha256_many(shell, [victim])[victim] == manifest.files[0].sha256
    assert any("missing or differ" in line for line in logs)


def _fake_job_outputs(shell, out_dir: str, *, tamper: bool = False,
                      extra: dict[str, bytes] | None = None) -> None:
    """Outputs and a completion marker as a job writes them; ``extra`` adds files (paths relative to
    ``out_dir``, written where they point) that the marker declares too."""
    files = {"model.pt": secrets.token_bytes(2048), "metrics.json": json.dumps({"accuracy": 0.93}).encode(),
             **(extra or {})}
    sftp = shell.sftp_client()
    shell.run("mkdir -p -m 0700 " + q(out_dir))
    for name, data in files.items():
        if not name.startswith("/"):  # an absolute path names an existing file
            with sftp.open(f"{out_dir}/{name}", "wb") as fh:
                fh.write(data)
    marker = CompletionMarker(
        files=tuple(MarkerFile(n, hashlib.sha256(d).hexdigest(), len(d)) for n, d in files.items()),
        params_sha256="0" * 64, formats={"pytorch": "model.pt"}, metrics={"accuracy": 0.93}, job_id="7",
    )
    with sftp.open(f"{out_dir}/{layout.COMPLETION_MARKER}", "wb") as fh:
        fh.write(json.dumps(marker.to_dict()).encode())
    if tamper:
        shell.run(f"printf x >> {q(out_dir + '/model.pt')}")


def _card(version: str) -> CardContext:
    return CardContext(
        tenant="itest", model="iris-tabular", version=version, dag_id="factory_itest", run_id="manual__1",
        recipe="tabular_classifier", hyperparameters={"epochs": 1},
        dataset={"name": "iris", "version": "v-1", "manifest_sha256": "ab" * 32, "rows": 150},
        quality={"verdict": "passed", "expectations": 5, "failed": 0, "suite": "tabular_default"},
        slurm={"job_ids": ["7"], "state": "COMPLETED", "elapsed_s": 3, "cpu_hours": 0.001, "gpu_hours": 0.0},
        code_version="test",
    )


def test_export_publishes_manifest_last_and_once(s3_client, shell, test_areas):
    out_dir = f"{test_areas.project}/runs/r1/output"
    _fake_job_outputs(shell, out_dir)
    version = "v-" + secrets.token_hex(6)
    prefix = f"itest/models/iris-tabular/{version}/"
    first = export_model(s3_client, shell, bucket=BUCKET, model_prefix=prefix, output_dir=out_dir,
                         card=_card(version), log=lambda m: None)
    assert first["published"] is True and first["metrics"] == {"accuracy": 0.93}
    keys = set(list_keys(s3_client, BUCKET, prefix))
    assert keys == {prefix + n for n in ("model.pt", "metrics.json", "model_card.json",
                                         "MODEL_CARD.md", "manifest.json")}
    manifest = json.loads(s3_client.get_object(Bucket=BUCKET, Key=prefix + "manifest.json")["Body"].read())
    for f in manifest["files"]:
        body = s3_client.get_object(Bucket=BUCKET, Key=prefix + f["path"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == f["sha256"]
    card = s3_client.get_object(Bucket=BUCKET, Key=prefix + "MODEL_CARD.md")["Body"].read().decode()
    for needle in ("iris", "v-1", "passed", "tabular_classifier", "Slurm job id(s): 7", "accuracy", "test"):
        assert needle in card

    etag = s3_client.head_object(Bucket=BUCKET, Key=prefix + "manifest.json")["ETag"]
    again = export_model(s3_client, shell, bucket=BUCKET, model_prefix=prefix, output_dir=out_dir,
                         card=_card(version), log=lambda m: None)
    assert again["published"] is False
    assert s3_client.head_object(Bucket=BUCKET, Key=prefix + "manifest.json")["ETag"] == etag


def test_export_refuses_damaged_outputs(s3_client, shell, test_areas):
    out_dir = f"{test_areas.project}/runs/r2/output"
    _fake_job_outputs(shell, out_dir, tamper=True)
    prefix = f"itest/models/iris-tabular/v-{secrets.token_hex(6)}/"
    with pytest.raises(ExportError, match="model.pt: sha256"):
        export_model(s3_client, shell, bucket=BUCKET, model_prefix=prefix, output_dir=out_dir,
                     card=_card("v-x"), log=lambda m: None)
    assert not any(k.endswith("manifest.json") for k in list_keys(s3_client, BUCKET, prefix))


def test_export_without_completion_marker_publishes_nothing(s3_client, shell, test_areas):
    out_dir = f"{test_areas.project}/runs/r3/output"
    shell.run("mkdir -p " + q(out_dir))
    prefix = f"itest/models/iris-tabular/v-{secrets.token_hex(6)}/"
    with pytest.raises(FactoryError, match="completion marker not found"):
        export_model(s3_client, shell, bucket=BUCKET, model_prefix=prefix, output_dir=out_dir,
                     card=_card("v-y"), log=lambda m: None)
    assert list_keys(s3_client, BUCKET, prefix) == []


@pytest.mark.parametrize("named", [layout.MANIFEST_NAME, "../x", "a/../../x", "/etc/passwd"])
def test_export_refuses_a_marker_naming_a_platform_file_or_a_path_outside_the_output_dir(
        s3_client, shell, test_areas, named):
    """The file exists and its digest matches the marker: only the path rule stops it."""
    out_dir = f"{test_areas.project}/runs/r4-{secrets.token_hex(3)}/output"
    shell.run("mkdir -p -m 0700 " + q(out_dir + "/a"))
    if named.startswith("/"):
        body = shell.run(f"cat {q(named)}")[1].encode()
    else:
        body = b'{"forged": true}'
        with shell.sftp_client().open(f"{out_dir}/{named}", "wb") as fh:
            fh.write(body)
    _fake_job_outputs(shell, out_dir, extra={named: body})
    prefix = f"itest/models/iris-tabular/v-{secrets.token_hex(6)}/"
    with pytest.raises(ExportError, match="completion marker names") as info:
        export_model(s3_client, shell, bucket=BUCKET, model_prefix=prefix, output_dir=out_dir,
                     card=_card("v-z"), log=lambda m: None)
    assert "nothing was published" in str(info.value)
    assert list_keys(s3_client, BUCKET, prefix) == []  # not one object: refused before any upload


def test_export_publishes_the_formats_the_marker_declares(s3_client, shell, test_areas):
    out_dir = f"{test_areas.project}/runs/r5/output"
    _fake_job_outputs(shell, out_dir)
    version = "v-" + secrets.token_hex(6)
    prefix = f"itest/models/iris-tabular/{version}/"
    export_model(s3_client, shell, bucket=BUCKET, model_prefix=prefix, output_dir=out_dir, card=_card(version),
                 params_sha256="0" * 64, log=lambda m: None)
    card = json.loads(s3_client.get_object(Bucket=BUCKET, Key=prefix + layout.MODEL_CARD_JSON)["Body"].read())
    assert card["formats"] == {"pytorch": "model.pt"}
    manifest = json.loads(s3_client.get_object(Bucket=BUCKET, Key=prefix + layout.MANIFEST_NAME)["Body"].read())
    assert manifest["formats"] == {"pytorch": "model.pt"} and manifest["params_sha256"] == "0" * 64
    with pytest.raises(ExportError, match="another run's"):  # the marker must be this run's
        export_model(s3_client, shell, bucket=BUCKET, model_prefix=f"itest/models/iris-tabular/v-{secrets.token_hex(6)}/",
                     output_dir=out_dir, card=_card(version), params_sha256="1" * 64, log=lambda m: None)
