"""Each stage refuses a prefix or a path from XCom outside its tenant's area (an XCom value can be
rewritten through the REST API by anyone with edit rights on the run)."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from aifactory.tenants import load_cluster, load_tenant
from operators.stages import check_dataset_prefix, check_output_dir

SPEC = load_tenant("demo")
AREAS = SPEC.areas(load_cluster("local"))
TENANT_DIR = AREAS.project


def test_a_dataset_prefix_inside_the_tenants_area_passes():
    assert check_dataset_prefix("demo/datasets/iris/v-0123456789ab/", SPEC) == "demo/datasets/iris/v-0123456789ab/"
    assert check_dataset_prefix("demo/datasets/iris-2/v-0123456789abcdef/", SPEC)


@pytest.mark.parametrize("prefix", [
    "other-tenant/datasets/iris/v-0123456789ab/",
    "demo/datasets/",
    "demo/datasets/../../other-tenant/datasets/x/",
    "demo/raw/iris/",
    "demo/models/m/v1/",
    "demo/datasets/a\nb/",
    "demo/datasets/iris/v-0123456789ab/part-00000.parquet",
    "demo/datasets/iris/latest/",
    "demo/datasets/iris/v-0123456789ab",
    None,
    7,
])
def test_a_dataset_prefix_outside_is_refused_without_retry(prefix):
    with pytest.raises(AirflowFailException, match="not inside this tenant's datasets area"):
        check_dataset_prefix(prefix, SPEC)


def test_the_refusal_shows_the_prefix_escaped():
    with pytest.raises(AirflowFailException) as exc:
        check_dataset_prefix("x\n[2026-01-01] INFO forged\x1b[2J", SPEC)
    assert "\n" not in str(exc.value).split("Clear")[0] and "\x1b" not in str(exc.value)


def test_an_output_dir_inside_the_runs_dir_passes():
    out = f"{TENANT_DIR}/runs/aifp-demo-0123456789ab/output"
    assert check_output_dir(out, AREAS) == out


@pytest.mark.parametrize("out", [
    "/srv/aifactory/project/other-tenant/runs/aifp-other-tenant-0123456789ab/output",
    f"{TENANT_DIR}/runs",
    f"{TENANT_DIR}/runs/",
    f"{TENANT_DIR}/runs/../../other-tenant/runs/x/output",
    f"{TENANT_DIR}/runs//x",
    f"{TENANT_DIR}/datasets/iris/v-1",
    f"{AREAS.scratch}/datasets/iris/v-1",
    f"{AREAS.scratch}/runs/aifp-demo-0123456789ab/output",
    f"{TENANT_DIR}/runs-evil/x",
    "runs/x/output",
    None,
])
def test_an_output_dir_outside_is_refused_without_retry(out):
    with pytest.raises(AirflowFailException, match="not inside this tenant's runs directory"):
        check_output_dir(out, AREAS)


def test_stages_read_the_validated_params_and_refuse_a_broken_xcom():
    from aifactory.tenants import validate_run_params
    from operators.stages import IngestOperator

    params = validate_run_params({**SPEC.defaults}, SPEC)
    good = IngestOperator(task_id="ingest", tenant="demo", validated=params.to_xcom())
    # the raw form in the context is not read at all: only validate's typed result
    assert good.run_params({"params": {"recipe": "ignored"}}) == params
    with pytest.raises(AirflowFailException, match="validated=validate.output"):
        IngestOperator(task_id="ingest", tenant="demo").run_params({})
    broken = {**params.to_xcom(), "resources": {**params.to_xcom()["resources"], "nodes": "2"}}
    with pytest.raises(AirflowFailException, match="nodes must be int"):
        IngestOperator(task_id="ingest", tenant="demo", validated=broken).run_params({})
