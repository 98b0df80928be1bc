"""Every DAG file imports cleanly and fast, and the whole DagBag follows the project's policies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ["pyarrow", "boto3", "great_expectations", "torch", "pandas", "paramiko", "asyncssh"]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_one_pipeline_per_tenant(dagbag):
    from aifactory.layout import pipeline_dag_id
    from aifactory.tenants import load_tenants

    for spec in load_tenants():
        dag = dagbag.dags.get(pipeline_dag_id(spec.tenant))
        assert dag is not None, f"no DAG for tenant {spec.tenant}"
        assert [t.task_id for t in dag.topological_sort()] == [
            "validate", "ingest", "quality", "stage", "train", "export"]
        assert f"tenant:{spec.tenant}" in dag.tags


def test_policies(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md, f"{dag_id} has no doc_md"
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id} has no owner"
            assert task.retries is not None


def test_trigger_form_is_bounded_by_the_tenant_spec(dagbag):
    from aifactory.tenants import load_tenant

    spec = load_tenant("demo")
    params = dagbag.dags["factory_demo"].params
    schema = {k: params.get_param(k).schema for k in params.keys()}
    assert set(schema) == {"dataset_uri", "recipe", "code_uri", "hyperparameters", "partition", "nodes",
                           "gpus_per_node", "cpus_per_task", "mem_gb", "time_limit_minutes"}
    # limits are stated in the form and enforced by validate (a limit lowered mid-run must not fail the run)
    assert f"At most {spec.limits.max_nodes} " in params.get_param("nodes").description
    assert f"At most {spec.limits.max_mem_gb} " in params.get_param("mem_gb").description
    assert "maximum" not in schema["nodes"] and schema["nodes"]["minimum"] == 1
    assert schema["partition"]["enum"] == list(spec.partitions)
    assert "tabular_classifier" in schema["recipe"]["enum"]
    assert schema["dataset_uri"]["pattern"].startswith("^s3://aifactory/demo/raw/")
    assert schema["hyperparameters"]["type"] == "object"
    # the tenant's own code (own_code: true): a choice of the recipe field, and a folder of its code area
    assert schema["recipe"]["enum"][-1] == "own-code"
    assert schema["code_uri"]["pattern"] == "^s3://aifactory/demo/code/[a-z0-9][a-z0-9_-]{0,63}/$"
    assert params["code_uri"] is None  # a platform recipe needs none


def test_dag_file_imports_no_heavy_library():
    """DAG files declare; heavy libraries load inside tasks only (parse time stays in milliseconds)."""
    code = (
        "import json, sys, runpy; runpy.run_path(sys.argv[1]); "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "dags" / "factory_pipelines.py")],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_later_stages_read_the_validated_params_natively(dagbag):
    """Validate once: every stage that needs the run's params gets validate's XCom (an XComArg,
    resolved to the native value), not the raw form and not a Jinja string."""
    from airflow.sdk.definitions.xcom_arg import XComArg

    dag = dagbag.dags["factory_demo"]
    for task_id, attr in (("ingest", "validated"), ("quality", "validated"), ("export", "validated"),
                          ("train", "run_params")):
        value = getattr(dag.get_task(task_id), attr)
        assert isinstance(value, XComArg), f"{task_id}.{attr} is {value!r}"
        assert value.operator.task_id == "validate", task_id
        assert attr in dag.get_task(task_id).template_fields, task_id


_BROKEN_BAG = """
import json, sys
from pathlib import Path
import aifactory.layout as layout
layout.TENANTS_DIR = Path(sys.argv[1])  # before the spec module binds it
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[2])
print(json.dumps({"dags": sorted(bag.dags), "errors": {Path(k).name: v for k, v in bag.import_errors.items()}}))
"""


def test_a_broken_tenant_spec_fails_that_tenant_alone(tmp_path: Path):
    """One broken YAML: every other tenant's DAGs still load, the broken tenant's are absent, and
    Airflow's import errors name the file and the key (on a DAG-less file, so no DAG goes stale)."""
    from aifactory.layout import TENANTS_DIR, pipeline_dag_id, probe_dag_id

    (tmp_path / "demo.yaml").write_text((TENANTS_DIR / "demo.yaml").read_text())
    acme = (TENANTS_DIR / "acme.yaml").read_text()
    (tmp_path / "acme.yaml").write_text("\n".join(ln for ln in acme.splitlines() if not ln.startswith("bucket:")))
    (tmp_path / "zeta.yaml").write_text("tenant: zeta\nbucket: [unclosed\n")
    out = subprocess.run([sys.executable, "-c", _BROKEN_BAG, str(tmp_path), str(REPO / "dags")],
                         capture_output=True, text=True, check=True)
    bag = json.loads(out.stdout.strip().splitlines()[-1])
    assert {pipeline_dag_id("demo"), probe_dag_id("demo")} <= set(bag["dags"])
    assert not {pipeline_dag_id("acme"), probe_dag_id("acme"), pipeline_dag_id("zeta")} & set(bag["dags"])
    assert set(bag["errors"]) == {"platform_tenant_specs.py"}
    error = bag["errors"]["platform_tenant_specs.py"]
    assert "acme.yaml: required key 'bucket' is missing" in error
    assert "zeta.yaml: cannot be read as YAML" in error
    # the dag-processor's log of the DAG file names it too
    assert "tenant spec skipped" in out.stderr + out.stdout and "acme.yaml" in out.stderr + out.stdout


def test_every_dag_serializes_as_the_dag_processor_stores_it(dagbag):
    """What the dag-processor does after the parse; a DAG that cannot be serialized never runs."""
    from airflow.serialization.serialized_objects import DagSerialization

    for dag_id, dag in dagbag.dags.items():
        back = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        assert back.dag_id == dag_id and set(back.task_dict) == set(dag.task_dict)
        assert set(back.params.keys()) == set(dag.params.keys()), dag_id
        for name in dag.params.keys():  # the form's rules survive (not boxed into a bare Param)
            assert back.params.get_param(name).schema == dag.params.get_param(name).schema, (dag_id, name)


def test_every_tenant_dag_notifies_the_tenant_of_a_failure(dagbag):
    """The pipeline, feed and training DAGs' tasks carry the tenant's notifiers (operators.dagfile)."""
    from aifactory.tenants import load_tenants
    from operators.notify import FailureNotification

    for spec in load_tenants():
        want = [t.kind for t in spec.notifications]
        assert want, f"{spec.tenant} declares no notification target: nothing to check"
        for dag_id in spec.dag_ids:
            for task in dagbag.dags[dag_id].tasks:
                callbacks = task.on_failure_callback or []
                assert all(isinstance(c, FailureNotification) for c in callbacks), (dag_id, task.task_id)
                assert [c.target.kind for c in callbacks] == want, (dag_id, task.task_id)
                assert f"tenant:{spec.tenant}" in dagbag.dags[dag_id].tags
