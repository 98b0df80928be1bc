"""Recipes: loading, hyperparameter validation, and the tabular classifier run from its job bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.errors import InputError
from aifactory.models import bundle
from aifactory.models.contract import parse_marker
from aifactory.models.recipes import DEFAULT_RECIPES_ROOT, load_recipe, load_recipes

RECIPE_DIR = DEFAULT_RECIPES_ROOT / "tabular_classifier"
HP = {"label_column": "species", "feature_columns": ["a", "b"]}


def _train_python() -> str | None:
    """A Python with torch: the cluster's venv, the helper venv, or this one."""
    for candidate in (os.environ.get("AIFP_TRAIN_PYTHON"), "/srv/aifactory/venv/bin/python", "/tmp/trainvenv/bin/python"):
        if candidate and Path(candidate).exists():
            return candidate
    try:
        import torch  # noqa: F401

        return sys.executable
    except ImportError:
        return None


TRAIN_PY = _train_python()
needs_torch = pytest.mark.skipif(TRAIN_PY is None, reason="no Python with torch (set AIFP_TRAIN_PYTHON)")


def test_load_recipes_finds_tabular_classifier():
    recipes = load_recipes()
    r = recipes["tabular_classifier"]
    assert r.entrypoint_path.is_file()
    assert not list(r.root.glob("*.sh*")), "recipes carry no batch wrapper: every recipe runs through the platform's"
    assert r.resources["time_limit_minutes"] >= 1
    assert r.defaults()["epochs"] == 20


def test_defaults_applied_and_input_not_mutated():
    r = load_recipe(RECIPE_DIR)
    hp = dict(HP)
    out = r.validate_hyperparameters(hp)
    assert hp == HP
    assert out == {**HP, "epochs": 20, "hidden_units": 32, "learning_rate": 0.01, "batch_size": 64,
                   "test_fraction": 0.2, "seed": 42, "checkpoint_every_steps": 100,
                   "checkpoint_every_minutes": 5, "log_every_steps": 10, "max_requeues": 5,
                   "read_batch_rows": 8192, "shuffle_buffer_rows": 65536}


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"epochs": 0}, "hyperparameters.epochs: 0 is less than the minimum of 1"),
        ({"epochs": 1001}, "hyperparameters.epochs"),
        ({"epochs": "10"}, "hyperparameters.epochs: '10' is not of type 'integer'"),
        ({"learning_rate": 0}, "hyperparameters.learning_rate"),
        ({"learning_rate": 1.5}, "hyperparameters.learning_rate"),
        ({"test_fraction": 1}, "hyperparameters.test_fraction"),
        ({"hidden_units": 5000}, "hyperparameters.hidden_units"),
        ({"feature_columns": []}, "hyperparameters.feature_columns"),
        ({"feature_columns": ["a", "a"]}, "hyperparameters.feature_columns"),
        ({"label_column": 3}, "hyperparameters.label_column"),
        ({"surprise": 1}, "Additional properties are not allowed ('surprise'"),
    ],
)
def test_validation_errors_name_the_field(over, fragment):
    r = load_recipe(RECIPE_DIR)
    with pytest.raises(InputError) as exc:
        r.validate_hyperparameters({**HP, **over})
    assert fragment in str(exc.value)


def test_missing_required_and_not_a_mapping():
    r = load_recipe(RECIPE_DIR)
    with pytest.raises(InputError, match="'label_column' is a required property"):
        r.validate_hyperparameters({"feature_columns": ["a"]})
    with pytest.raises(InputError, match="must be an object"):
        r.validate_hyperparameters(["x"])  # type: ignore[arg-type]


def test_huge_values_are_capped_in_messages():
    r = load_recipe(RECIPE_DIR)
    with pytest.raises(InputError) as exc:
        r.validate_hyperparameters({**HP, "label_column": "x" * 100_000})
    assert len(str(exc.value)) < 1000


def test_broken_recipes_are_reported(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "recipe.yaml").write_text("name: bad\nhyperparameters: {type: object, properties: {x: {type: 7}}}\n")
    with pytest.raises(InputError, match="schema is invalid"):
        load_recipe(bad)
    (bad / "recipe.yaml").write_text("name: bad\nentrypoint: ../evil.py\nhyperparameters: {type: object}\n")
    with pytest.raises(InputError, match="plain .py file name"):
        load_recipe(bad)
    (bad / "recipe.yaml").write_text("name: bad\nsbatch_template: job.sh\nhyperparameters: {type: object}\n")
    with pytest.raises(InputError, match="no longer carry a batch wrapper"):
        load_recipe(bad)
    (bad / "recipe.yaml").write_text("name: other\nhyperparameters: {type: object}\n")
    with pytest.raises(InputError, match="folder name"):
        load_recipe(bad)


def test_test_knobs_are_not_in_the_form_and_requeues_are_bounded():
    r = load_recipe(RECIPE_DIR)
    props = r.schema["properties"]
    assert "step_sleep_s" not in props  # a test-only knob (layout.slow_steps_switch_path), not the startup's
    assert props["max_requeues"]["maximum"] <= 10
    with pytest.raises(InputError, match="max_requeues"):
        r.validate_hyperparameters({**HP, "max_requeues": 11})
    with pytest.raises(InputError, match="step_sleep_s"):
        r.validate_hyperparameters({**HP, "step_sleep_s": 1.0})


# ------------------------------------------------------------------------------------------ train.py


def _dataset(path: Path, *, n: int = 120, classes: int = 3, text_feature: bool = False) -> Path:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, 2)) + y[:, None] * 2.0
    cols = {"a": x[:, 0], "b": x[:, 1] if not text_feature else [str(v) for v in x[:, 1]],
            "species": np.array(["setosa", "versicolor", "virginica"])[y]}
    table = pa.table(cols)
    pq.write_table(table.slice(0, n // 2), path / "part-00000.parquet")
    pq.write_table(table.slice(n // 2), path / "part-00001.parquet")
    return path


def _train(tmp_path: Path, dataset: Path, **hp) -> subprocess.CompletedProcess:
    """Run the recipe as the cluster does: from its job bundle, in a run directory."""
    params = {"dataset_dir": str(dataset), "output_dir": str(tmp_path / "out"),
              "hyperparameters": {**HP, "epochs": 3, **hp}, "job": {"tenant": "demo", "recipe": "tabular_classifier"}}
    (tmp_path / "params.json").write_text(json.dumps(params))
    bundle.materialize(load_recipe(RECIPE_DIR), tmp_path)
    return subprocess.run([TRAIN_PY, "train.py", "--params", "params.json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


@needs_torch
def test_train_end_to_end_and_deterministic(tmp_path):
    pytest.importorskip("pyarrow")
    ds = _dataset(tmp_path / "ds")
    r = _train(tmp_path, ds, epochs=4)
    assert r.returncode == 0, r.stderr
    epoch_lines = [line for line in r.stdout.splitlines() if line.startswith("epoch=")]
    assert len(epoch_lines) == 4 and epoch_lines[-1].startswith("epoch=4/4 step=")
    out = tmp_path / "out"
    marker = parse_marker((out / layout.COMPLETION_MARKER).read_bytes(), output_dir=str(out))
    import hashlib

    assert {f.path for f in marker.files} == {"model.pt", "model.safetensors", "model.onnx", "onnx_check.json",
                                               "model_config.json", "metrics.json"}
    for f in marker.files:
        assert f.sha256 == hashlib.sha256((out / f.path).read_bytes()).hexdigest()
    assert marker.formats == {"pytorch": "model.pt", "safetensors": "model.safetensors", "onnx": "model.onnx"}
    assert marker.params_sha256 == hashlib.sha256((tmp_path / "params.json").read_bytes()).hexdigest()
    assert marker.recipe == "tabular_classifier" and marker.metrics["epochs"] == 4
    metrics = json.loads((out / "metrics.json").read_text())
    # the split is fixed per row by the seed: recompute it here with the recipe's own function
    split = _recipe_module("tabular_data").test_mask(__import__("numpy").arange(120), 42, 0.2)
    assert metrics["n_train"] + metrics["n_test"] == 120 and metrics["n_test"] == int(split.sum())
    assert metrics["onnx_test_accuracy"] == metrics["test_accuracy"]
    check = json.loads((out / "onnx_check.json").read_text())
    assert check["passed"] and check["heldout_max_abs_diff"] <= check["tolerance"]["atol"]
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["epochs"] == 4
    config = json.loads((out / "model_config.json").read_text())
    assert config["classes"] == ["setosa", "versicolor", "virginica"] and config["input_dim"] == 2
    assert len(config["normalisation"]["mean"]) == 2
    first = (out / "model.pt").read_bytes()
    r2 = _train(tmp_path, ds, epochs=4)
    assert r2.returncode == 0
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    assert (out / "model.pt").read_bytes() == first
    # a second run in the same directory resumes from the final checkpoint: no step is trained again
    assert "resume: from checkpoint step=" in r2.stdout and not any(
        line.startswith("step=") for line in r2.stdout.splitlines())


def _recipe_module(name: str):
    """A module of the recipe's folder, imported from its job bundle (where aifp_runtime sits beside it)."""
    import importlib
    import tempfile

    run_dir = bundle.materialize(load_recipe(RECIPE_DIR), Path(tempfile.mkdtemp(prefix="aifp-bundle-")))
    sys.path.insert(0, str(run_dir))
    try:
        for mod in [m for m in sys.modules if m == "aifp_runtime" or m.startswith("aifp_runtime.") or m == name]:
            del sys.modules[mod]
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(run_dir))


def test_split_is_fixed_by_seed_and_independent_of_batching():
    import numpy as np

    train = _recipe_module("tabular_data")
    rows = np.arange(100_000)
    mask = train.test_mask(rows, 7, 0.2)
    assert abs(mask.mean() - 0.2) < 0.01
    pieces = np.concatenate([train.test_mask(rows[i:i + 999], 7, 0.2) for i in range(0, len(rows), 999)])
    assert (pieces == mask).all()
    assert not (train.test_mask(rows, 8, 0.2) == mask).all()


def test_steps_per_epoch_covers_every_rank():
    train = _recipe_module("tabular_data")
    assert train.steps_per_epoch(117, 64, 1) == 2
    assert train.steps_per_epoch(117, 64, 2) == 1
    assert train.steps_per_epoch(129, 64, 2) == 1  # one leftover row cannot feed two ranks
    assert train.steps_per_epoch(130, 64, 2) == 2


def test_recipe_slurm_signal_and_data_checks(tmp_path):
    r = load_recipe(RECIPE_DIR)
    assert r.sbatch_signal(10) == "USR1@60"
    assert r.sbatch_signal(1) == "USR1@15"  # never more than a quarter of the limit
    assert r.data_checks == {"label_column": {"min_classes": 2}, "feature_columns": {"numeric": True}}
    bad = tmp_path / "bad"
    shutil.copytree(RECIPE_DIR, bad)
    text = (bad / "recipe.yaml").read_text().replace("name: tabular_classifier", "name: bad")
    (bad / "recipe.yaml").write_text(text.replace("min_classes: 2", "min_classes: two"))
    with pytest.raises(InputError, match="data_checks.label_column.min_classes"):
        load_recipe(bad)
    (bad / "recipe.yaml").write_text(text.replace("signal: USR1", "signal: KILL"))
    with pytest.raises(InputError, match="slurm.signal"):
        load_recipe(bad)


SCHEMA = [{"name": "a", "type": "double"}, {"name": "b", "type": "int64"}, {"name": "t", "type": "string"},
          {"name": "species", "type": "string"}]


def test_check_dataset_names_the_field():
    from aifactory.models.recipes import check_dataset

    r = load_recipe(RECIPE_DIR)
    hp = r.validate_hyperparameters(HP)
    values = {"species": {"x", "y"}, "a": {1.0}}
    reader = lambda col, limit: set(list(values.get(col, set()))[:limit])  # noqa: E731
    assert check_dataset(r, hp, SCHEMA, reader, dataset="s3://b/d/") == [
        "label_column:species:min_classes", "feature_columns:a:numeric", "feature_columns:b:numeric"]
    with pytest.raises(InputError, match=r"hyperparameters.feature_columns: column 't' of s3://b/d/ has type string"):
        check_dataset(r, {**hp, "feature_columns": ["a", "t"]}, SCHEMA, reader, dataset="s3://b/d/")
    with pytest.raises(InputError, match=r"hyperparameters.label_column: column 'a' of .* has 1 distinct value;"):
        check_dataset(r, {**hp, "label_column": "a", "feature_columns": ["b"]}, SCHEMA, reader)
    with pytest.raises(InputError, match=r"hyperparameters.feature_columns: column 'zz' is not in"):
        check_dataset(r, {**hp, "feature_columns": ["zz"]}, SCHEMA, reader)
    # a column name cannot forge a log line or repaint a terminal: it is shown escaped
    with pytest.raises(InputError) as info:
        check_dataset(r, {**hp, "feature_columns": ["x\nINFO forged\x1b[31m"]}, SCHEMA, reader)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


@pytest.mark.parametrize("name, numeric", [("int8", True), ("uint64", True), ("double", True), ("float", True),
                                           ("halffloat", True), ("bool", True), ("decimal128(10, 2)", True),
                                           ("string", False), ("large_string", False), ("timestamp[ns]", False),
                                           ("date32[day]", False), ("dictionary<values=string, indices=int32>", False)])
def test_numeric_arrow_types(name, numeric):
    from aifactory.models.recipes import is_numeric_arrow_type

    assert is_numeric_arrow_type(name) is numeric


def test_new_recipe_folder_appears_in_the_trigger_form(tmp_path, monkeypatch):
    """Adding a recipe is adding a folder: the DAG file, parsed again, offers it (no other change)."""
    import runpy

    import aifactory.models.recipes as recipes_mod

    root = tmp_path / "recipes"
    shutil.copytree(DEFAULT_RECIPES_ROOT / "tabular_classifier", root / "tabular_classifier")
    new = root / "tiny_test_recipe"
    new.mkdir()
    (new / "train.py").write_text("print('hello')\n")
    (new / "sbatch.sh.tmpl").write_text("#!/bin/bash\nexec srun \"$AIFP_PYTHON\" \"$AIFP_ENTRYPOINT\"\n")
    (new / "recipe.yaml").write_text(
        "name: tiny_test_recipe\ndescription: a recipe added by a test\n"
        "resources: {nodes: 1, time_limit_minutes: 5}\n"
        "hyperparameters: {type: object, additionalProperties: false, properties: {x: {type: integer, default: 1}}}\n")
    monkeypatch.setattr(recipes_mod, "DEFAULT_RECIPES_ROOT", root)
    monkeypatch.setattr(recipes_mod.load_recipes, "__defaults__", (root,))
    dag = runpy.run_path(str(Path(__file__).resolve().parents[2] / "dags" / "factory_pipelines.py"))["factory_demo"]
    # and the tenant's own code, which the demo tenant may run (own_code: true)
    assert dag.params.get_param("recipe").schema["enum"] == ["tabular_classifier", "tiny_test_recipe", "own-code"]
    from aifactory.tenants import load_tenant, validate_run_params

    params = validate_run_params({"dataset_uri": "s3://aifactory/demo/raw/x.csv", "recipe": "tiny_test_recipe",
                                  "hyperparameters": {}}, load_tenant("demo"))
    assert params.hyperparameters == {"x": 1} and params.resources.time_limit_minutes == 5


@needs_torch
@pytest.mark.parametrize(
    "kind, hp, fragment",
    [
        ("one_class", {}, "hyperparameters.label_column 'species' has only one class"),
        ("text_feature", {}, "not numeric"),
        ("ok", {"feature_columns": ["a", "nope"]}, "not found"),
        ("ok", {"label_column": "a", "feature_columns": ["a", "b"]}, "also listed in feature_columns"),
    ],
)
def test_train_bad_data_exits_2_with_clear_message(tmp_path, kind, hp, fragment):
    pytest.importorskip("pyarrow")
    ds = _dataset(tmp_path / "ds", classes=1 if kind == "one_class" else 3, text_feature=kind == "text_feature")
    r = _train(tmp_path, ds, **hp)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("ERROR: ") and fragment in r.stderr
    assert not (tmp_path / "out" / layout.COMPLETION_MARKER).exists()


@needs_torch
def test_train_empty_dataset_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    r = _train(tmp_path, tmp_path / "empty")
    assert r.returncode == 2 and "no Parquet files" in r.stderr


@pytest.mark.parametrize("suite, ok", [("text_default", True), ("no_such_suite", False), ("../iris", False), (7, False)])
def test_a_recipes_quality_suite_must_be_one_of_the_platforms(tmp_path, suite, ok):
    import shutil

    folder = tmp_path / RECIPE_DIR.name
    shutil.copytree(RECIPE_DIR, folder)
    (folder / "recipe.yaml").write_text((folder / "recipe.yaml").read_text() + f"quality_suite: {suite}\n")
    if ok:
        assert load_recipe(folder).quality_suite == suite
    else:
        with pytest.raises(InputError, match="quality_suite .* must name a suite of"):
            load_recipe(folder)
