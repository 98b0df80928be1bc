from __future__ import annotations

from pathlib import Path

import pytest

from aifactory.errors import InputError
from aifactory.hpc.slurm import Resources
from aifactory.layout import TenantAreas
from aifactory.tenants import (
    FORM_FIELDS,
    RunParams,
    load_cluster,
    load_tenant,
    load_tenants,
    parse_cluster,
    parse_tenant,
    validate_run_params,
)

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
IDENTITY = {"unix_user": "aifp-acme", "ssh_conn_id": "aifactory_hpc_local_acme", "s3_conn_id": "aifactory_s3_acme"}
ALLOCATION = {"cpu_hours": 10, "gpu_hours": 0, "contact": "support@example.eu"}


@pytest.fixture()
def demo():
    return load_tenant("demo")


def test_shipped_specs_load():
    names = [t.tenant for t in load_tenants()]
    assert "demo" in names
    spec = load_tenant("demo")
    cluster = load_cluster(spec.cluster)
    assert spec.areas(cluster) == TenantAreas(project=f"{cluster.hpc_root}/project/demo",
                                              scratch=f"{cluster.hpc_root}/scratch/aifp-demo")
    assert cluster.effective_poll_interval_s >= cluster.poll_interval_floor_s
    assert spec.model_prefix("m", "v1") == "demo/models/m/v1/"


def test_valid_params_are_typed(demo):
    p = validate_run_params({**GOOD, "nodes": 1}, demo)
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
        ("nodes", "1", "expected an integer"),
        ("nodes", 1.0, "expected an integer, got '1.0'; write 1"),
        ("time_limit_minutes", float("nan"), "not a finite number"),
        ("nodes", "-1", "expected an integer"),
        ("nodes", True, "expected an integer"),
        ("mem_gb", "4\n#SBATCH --account=other", "expected an integer"),
        ("gpus_per_node", 3, "outside 0..2"),
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
         "slurm": {"account": "acme", "partitions": ["debug"]}, "identity": IDENTITY, "allocation": ALLOCATION,
         "limits": LIMITS}, "acme.yaml")
    assert narrowed.allows_recipe("a") and not narrowed.allows_recipe("b")
    with pytest.raises(InputError, match="not available to tenant acme"):
        validate_run_params({**GOOD, "recipe": "b"}, narrowed, recipes={"a": None, "b": None})


HP = GOOD["hyperparameters"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_refused_everywhere(demo, bad):
    # JSON schema's "number" lets NaN through (every comparison with NaN is false): checked after it
    with pytest.raises(InputError, match=r"hyperparameters\.learning_rate: .* not a finite number"):
        validate_run_params({**GOOD, "hyperparameters": {**HP, "learning_rate": bad}}, demo)
    with pytest.raises(InputError, match="not a finite number"):
        validate_run_params({**GOOD, "hyperparameters": {**HP, "test_fraction": bad}}, demo)
    # nested, in a field the schema does not type
    with pytest.raises(InputError, match=r"feature_columns\[1\]|not a finite number"):
        validate_run_params({**GOOD, "hyperparameters": {**HP, "feature_columns": ["a", bad]}}, demo)


@pytest.mark.parametrize(("value", "message"), [(5.0, "expected an integer, got '5.0'; write 5"),
                                                (True, "epochs"), ("5", "epochs")])
def test_integer_hyperparameters_take_only_integers(demo, value, message):
    with pytest.raises(InputError, match=message):
        validate_run_params({**GOOD, "hyperparameters": {**HP, "epochs": value}}, demo)
    assert validate_run_params({**GOOD, "hyperparameters": {**HP, "epochs": 5}}, demo).hyperparameters["epochs"] == 5


@pytest.mark.parametrize("key", ["account", "qos", "cluster", "step_sleep_s"])
def test_unknown_top_level_keys_refused_with_the_form_fields(demo, key):
    with pytest.raises(InputError, match=f"unknown parameter.*'{key}'") as exc:
        validate_run_params({**GOOD, key: "x"}, demo)
    for name in FORM_FIELDS:
        assert name in str(exc.value)


def test_unknown_key_is_shown_escaped(demo):
    with pytest.raises(InputError) as exc:
        validate_run_params({**GOOD, "a\nINFO forged\x1b[31m\u202e": 1}, demo)
    message = str(exc.value)
    assert "\n" not in message and "\x1b" not in message and "\u202e" not in message
    assert "a\\nINFO forged\\x1b[31m\\u202e" in message


def test_allocation_hold_is_capped(demo):
    cap = demo.limits.max_hold_minutes
    assert cap == 360
    ok = validate_run_params({**GOOD, "time_limit_minutes": 60, "hyperparameters": {**HP, "max_requeues": 5}}, demo)
    assert ok.resources.time_limit_minutes * (1 + ok.hyperparameters["max_requeues"]) == cap
    with pytest.raises(InputError) as exc:
        validate_run_params({**GOOD, "time_limit_minutes": 60, "hyperparameters": {**HP, "max_requeues": 10}}, demo)
    message = str(exc.value)
    assert "660 minutes" in message and "max_hold_minutes=360" in message and "at most 5" in message


def test_hold_limit_defaults_and_is_checked_in_the_spec():
    base = {"tenant": "acme", "bucket": "b-1", "cluster": "local", "quality_suite": "s", "recipes": ["*"],
            "slurm": {"account": "acme", "partitions": ["debug"]}, "identity": IDENTITY, "allocation": ALLOCATION}
    assert parse_tenant({**base, "limits": LIMITS}, "x.yaml").limits.max_hold_minutes == 6 * 5
    assert parse_tenant({**base, "limits": {**LIMITS, "max_hold_minutes": 7}}, "x").limits.max_hold_minutes == 7
    with pytest.raises(InputError, match="unknown key"):
        parse_tenant({**base, "limits": {**LIMITS, "max_hold_hours": 7}}, "x.yaml")
    with pytest.raises(InputError, match="whole number"):
        parse_tenant({**base, "limits": {**LIMITS, "max_nodes": 1.5}}, "x.yaml")


def test_xcom_round_trip_is_json_native(demo):
    import json

    params = validate_run_params(GOOD, demo)
    data = params.to_xcom()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert RunParams.from_xcom(data) == params
    assert data["resources"]["account"] == "demo"


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.pop("recipe"), "recipe"),
        (lambda d: d.update(hyperparameters="{'epochs': 5}"), "hyperparameters"),
        (lambda d: d["resources"].update(nodes="2"), "nodes"),
        (lambda d: d["resources"].update(nodes=True), "nodes"),
        (lambda d: d["resources"].update(qos=3), "qos"),
        (lambda d: d["hyperparameters"].update(learning_rate=float("nan")), "learning_rate"),
    ],
)
def test_from_xcom_checks_types(demo, edit, field):
    data = validate_run_params(GOOD, demo).to_xcom()
    edit(data)
    with pytest.raises(InputError, match=field):
        RunParams.from_xcom(data)
    with pytest.raises(InputError, match="validate task"):
        RunParams.from_xcom("not a dict")


def test_deeply_nested_values_are_refused_not_crashed(demo):
    deep: object = 1.0
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InputError, match="nested more than"):
        validate_run_params({**GOOD, "hyperparameters": {**HP, "extra": deep}}, demo)


# --- GPUs: the cluster spec's offers, the tenant's types ---------------------------------------

def _gpu_tenant(gpu_types, max_gpus=2, partitions=("debug",)):
    return parse_tenant(
        {"tenant": "acme", "bucket": "b-1", "cluster": "local", "quality_suite": "s", "recipes": ["*"],
         "slurm": {"account": "acme", "partitions": list(partitions), "gpu_types": gpu_types},
         "identity": IDENTITY, "allocation": ALLOCATION, "limits": {**LIMITS, "max_nodes": 2, "max_gpus_per_node": max_gpus}})


def test_the_local_cluster_offers_two_typed_gpus_per_node_and_demo_may_use_them():
    (offer,) = load_cluster("local").gpus
    assert (offer.partition, offer.gpu_type, offer.gpus_per_node) == ("debug", "a100", 2)
    policy = load_tenant("demo").slurm_policy()
    assert policy.gpu_offer("debug") == offer
    res = validate_run_params({**GOOD, "nodes": 2, "gpus_per_node": 2}, load_tenant("demo")).resources
    assert (res.gpu_type, res.tasks_per_node, res.as_dict()["gpu_type"]) == ("a100", 2, "a100")


def test_a_tenant_gets_only_the_gpu_types_its_spec_allows():
    assert _gpu_tenant(["a100"]).slurm_policy().gpu_offers == load_cluster("local").gpus
    other = _gpu_tenant(["h100"]).slurm_policy()
    assert other.gpu_offers == ()
    with pytest.raises(InputError, match="partition 'debug' has no GPUs this tenant may use; ask the platform"):
        Resources.from_request({"gpus_per_node": 1}, policy=other)


@pytest.mark.parametrize(
    ("gpu_types", "max_gpus", "message"),
    [
        ([], 2, "limits.max_gpus_per_node is 2 but slurm.gpu_types lists no GPU type"),
        ("a100", 2, "slurm.gpu_types must be a list of names"),
        (["a100;id"], 2, "must match"),
    ],
)
def test_bad_gpu_types_name_the_key(gpu_types, max_gpus, message):
    with pytest.raises(InputError, match=message):
        _gpu_tenant(gpu_types, max_gpus)


@pytest.mark.parametrize(
    ("partitions", "message"),
    [
        ({"gpu": {"gpu_type": "a100"}}, "partitions.gpu: required key 'gpus_per_node'"),
        ({"gpu": {"gpu_type": "a100", "gpus_per_node": 0}}, "partitions.gpu: gpus_per_node must be a whole number >= 1"),
        ({"gpu": {"gpu_type": "a 100", "gpus_per_node": 2}}, "partitions.gpu: gpu_type 'a 100' must match"),
        ({"gpu": {"gpu_type": "a100", "gpus_per_node": 2, "count": 1}}, r"unknown key\(s\) 'count'; known: gpu_type"),
        ({"gpu": "a100"}, "partitions.gpu must be a mapping"),
    ],
)
def test_bad_cluster_gpu_offers_name_the_partition(partitions, message):
    spec = {"name": "site", "ssh_conn_id": "c", "hpc_root": "/srv/x", "python": "/usr/bin/python3",
            "partitions": partitions}
    with pytest.raises(InputError, match=message):
        parse_cluster(spec)


@pytest.mark.parametrize(
    ("slurm", "message"),
    [
        ({"constraint": "a100|$(id)"}, "slurm.constraint '"),
        ({"constraint": ["a100"]}, "slurm.constraint"),
        ({"reservation": "week 1"}, "slurm.reservation 'week 1' must match"),
    ],
)
def test_bad_constraint_or_reservation_names_the_key(slurm, message):
    spec = {"tenant": "acme", "bucket": "b-1", "cluster": "local", "quality_suite": "s", "recipes": ["*"],
            "slurm": {"account": "acme", "partitions": ["debug"], **slurm}, "identity": IDENTITY,
            "allocation": ALLOCATION, "limits": LIMITS}
    with pytest.raises(InputError, match=message):
        parse_tenant(spec)


def test_a_tenants_constraint_and_reservation_reach_its_validated_resources():
    spec = parse_tenant({"tenant": "acme", "bucket": "b-1", "cluster": "local", "quality_suite": "s", "recipes": ["*"],
                         "slurm": {"account": "acme", "partitions": ["debug"], "constraint": "x86_64",
                                   "reservation": "acme-week"},
                         "identity": IDENTITY, "allocation": ALLOCATION, "limits": LIMITS})
    res = Resources.from_request({}, policy=spec.slurm_policy())
    assert (res.constraint, res.reservation) == ("x86_64", "acme-week")
    assert RunParams.from_xcom({"dataset_uri": "s3://b-1/acme/raw/x.csv", "recipe": "r", "hyperparameters": {},
                                "resources": res.as_dict()}).resources == res


def test_qos_per_purpose_one_name_for_all_or_none():
    from aifactory.tenants.spec import _qos

    assert _qos(None, "t") == {}
    assert _qos("normal", "t") == {"train": "normal", "feed": "normal", "probe": "normal"}
    assert _qos({"feed": "low", "probe": None}, "t") == {"feed": "low"}
    for bad, says in (({"nightly": "low"}, "unknown purpose"), ({"train": "low --x"}, "must match"),
                      (["low"], "a mapping of purpose")):
        with pytest.raises(InputError, match=says):
            _qos(bad, "t")
    demo = load_tenant("demo")
    assert demo.qos == demo.qos_by_purpose["train"] and demo.slurm_policy("probe").qos == "aifp-probe"
    with pytest.raises(InputError, match="job purpose"):
        demo.slurm_policy("backfill")
