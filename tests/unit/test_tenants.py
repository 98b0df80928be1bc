from __future__ import annotations

from pathlib import Path

import pytest

from aifactory.errors import InputError
from aifactory.tenants import load_cluster, load_tenant, load_tenants, parse_tenant, validate_run_params

GOOD = {
    "dataset_uri": "s3://aifactory/demo/raw/iris.csv",
    "recipe": "tabular_classifier",
    "hyperparameters": {"label_column": "species", "feature_columns": ["a", "b"]},
    "partition": "debug",
    "nodes": 1,
    "gpus_per_node": 0,
    "cpus_per_task": 1,
    "mem_gb": 1,
    "time_limit_minutes": 10,
}


LIMITS = {"max_nodes": 1, "max_gpus_per_node": 0, "max_cpus_per_task": 1, "max_mem_gb": 1,
          "max_time_limit_minutes": 5}


@pytest.fixture()
def demo():
    return load_tenant("demo")


def test_shipped_specs_load():
    names = [t.tenant for t in load_tenants()]
    assert "demo" in names
    spec = load_tenant("demo")
    cluster = load_cluster(spec.cluster)
    assert spec.hpc_dir(cluster) == f"{cluster.hpc_root}/demo"
    assert cluster.effective_poll_interval_s >= cluster.poll_interval_floor_s
    assert spec.model_prefix("m", "v1") == "demo/models/m/v1/"


def test_valid_params_are_typed(demo):
    p = validate_run_params({**GOOD, "nodes": "1"}, demo)
    assert p.resources.nodes == 1 and p.resources.partition == "debug"
    assert p.resources.account == "demo"  # from the tenant spec, never from the user
    assert p.hyperparameters["epochs"] >= 1  # recipe defaults applied
    assert set(p.resource_request()) == {"partition", "nodes", "gpus_per_node", "cpus_per_task", "mem_gb",
                                         "time_limit_minutes"}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dataset_uri", "s3://aifactory/other/raw/x.csv", "outside this tenant"),
        ("dataset_uri", "s3://aifactory/demo/raw/../../other/raw/x.csv", "'..'"),
        ("dataset_uri", "s3://aifactory/demo/raw/a\nb.csv", "control characters"),
        ("dataset_uri", "s3://evil/demo/raw/x.csv", "outside this tenant"),
        ("dataset_uri", "s3://aifactory/demo/raw/", "whole upload area"),
        ("recipe", "rm -rf", "not a known recipe"),
        ("partition", "debug --qos=high", "must match"),
        ("partition", "gpu", "not allowed"),
        ("nodes", 99, r"outside 1\.\.2 allowed"),
        ("nodes", "-1", "expected an integer"),
        ("nodes", True, "expected an integer"),
        ("mem_gb", "4\n#SBATCH --account=other", "expected an integer"),
        ("gpus_per_node", 1, "outside 0..0"),
        ("time_limit_minutes", 0, "outside 1..60"),
        ("hyperparameters", "[1]", "JSON object"),
        ("hyperparameters", {"label_column": "species"}, "feature_columns"),
        ("hyperparameters", {"label_column": "s", "feature_columns": ["a"], "epochs": "$(id)"}, "epochs"),
    ],
)
def test_bad_params_name_the_field(demo, field, value, message):
    with pytest.raises(InputError, match=message) as exc:
        validate_run_params({**GOOD, field: value}, demo)
    assert field in str(exc.value) or "URI" in str(exc.value)


def test_spec_errors_name_the_file(tmp_path: Path):
    with pytest.raises(InputError, match="required key 'bucket'"):
        parse_tenant({"tenant": "abc", "slurm": {"account": "a", "partitions": ["p"]}, "limits": LIMITS}, "x.yaml")
    with pytest.raises(InputError, match="tenant name"):
        parse_tenant({"tenant": "../etc"}, "x.yaml")
    (tmp_path / "a.yaml").write_text("tenant: demo\n")
    with pytest.raises(InputError, match="a.yaml"):
        load_tenants(tmp_path)


def test_recipe_allowlist():
    spec = load_tenant("demo")
    assert spec.allows_recipe("anything-new")  # demo allows every recipe folder ("*")
    narrowed = parse_tenant(
        {"tenant": "acme", "bucket": "b-1", "cluster": "local", "quality_suite": "s", "recipes": ["a"],
         "slurm": {"account": "acme", "partitions": ["debug"]},
         "limits": LIMITS}, "acme.yaml")
    assert narrowed.allows_recipe("a") and not narrowed.allows_recipe("b")
    with pytest.raises(InputError, match="not available to tenant acme"):
        validate_run_params({**GOOD, "recipe": "b"}, narrowed, recipes={"a": None, "b": None})
