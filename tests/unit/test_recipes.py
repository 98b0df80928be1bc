"""Recipes: loading, hyperparameter validation, the fixed batch wrapper, and train.py itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aifactory.errors import InputError
from aifactory.recipes import DEFAULT_RECIPES_ROOT, load_recipe, load_recipes

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
    assert r.entrypoint_path.is_file() and r.sbatch_template_path.is_file()
    assert r.resources["time_limit_minutes"] >= 1
    assert r.defaults()["epochs"] == 20


def test_defaults_applied_and_input_not_mutated():
    r = load_recipe(RECIPE_DIR)
    hp = dict(HP)
    out = r.validate_hyperparameters(hp)
    assert hp == HP
    assert out == {**HP, "epochs": 20, "hidden_units": 32, "learning_rate": 0.01, "batch_size": 64,
                   "test_fraction": 0.2, "seed": 42}


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
    with pytest.raises(InputError, match="plain file name"):
        load_recipe(bad)
    (bad / "recipe.yaml").write_text("name: other\nhyperparameters: {type: object}\n")
    with pytest.raises(InputError, match="folder name"):
        load_recipe(bad)


def test_sbatch_wrapper_is_fixed():
    text = (RECIPE_DIR / "sbatch.sh.tmpl").read_text()
    assert "#SBATCH" not in text.replace("#SBATCH lines", "")  # no directives, only the comment
    assert "{{" not in text and "${AIFP_PYTHON" in text and "set -euo pipefail" in text
    assert 'srun --export=ALL --ntasks=1 "$AIFP_PYTHON"' in text
    r = subprocess.run(["bash", "-n", str(RECIPE_DIR / "sbatch.sh.tmpl")], capture_output=True)
    assert r.returncode == 0, r.stderr


def test_sbatch_wrapper_runs_with_fake_srun(tmp_path):
    """The wrapper with a fake srun: it must pass the entrypoint and params.json, nothing else."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    (bindir / "srun").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "AIFP_PYTHON": "/usr/bin/python3", "AIFP_ENTRYPOINT": "train.py",
           "SLURM_JOB_ID": "5", "SLURM_CPUS_PER_TASK": "2"}
    out = subprocess.run(["bash", str(RECIPE_DIR / "sbatch.sh.tmpl")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[-7:] == ["--export=ALL", "--ntasks=1", "/usr/bin/python3", "-u", "train.py", "--params", "params.json"]
    missing = subprocess.run(["bash", str(RECIPE_DIR / "sbatch.sh.tmpl")], env={"PATH": env["PATH"]},
                             cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode != 0 and "AIFP_PYTHON" in missing.stderr


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
    params = {"dataset_dir": str(dataset), "output_dir": str(tmp_path / "out"),
              "hyperparameters": {**HP, "epochs": 3, **hp}, "job": {"tenant": "demo"}}
    (tmp_path / "params.json").write_text(json.dumps(params))
    shutil.copy(RECIPE_DIR / "train.py", tmp_path / "train.py")
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
    marker = json.loads((out / "_COMPLETED.json").read_text())
    import hashlib

    for name in ("model.pt", "model_config.json", "metrics.json"):
        assert marker["files"][name]["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_test"] == 120 and metrics["n_test"] == 24
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["epochs"] == 4
    config = json.loads((out / "model_config.json").read_text())
    assert config["classes"] == ["setosa", "versicolor", "virginica"] and config["input_dim"] == 2
    assert len(config["normalisation"]["mean"]) == 2
    first = (out / "model.pt").read_bytes()
    r2 = _train(tmp_path, ds, epochs=4)
    assert r2.returncode == 0
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    assert (out / "model.pt").read_bytes() == first


@needs_torch
@pytest.mark.parametrize(
    "kind, hp, fragment",
    [
        ("one_class", {}, "only one class"),
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
    assert not (tmp_path / "out" / "_COMPLETED.json").exists()


@needs_torch
def test_train_empty_dataset_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    r = _train(tmp_path, tmp_path / "empty")
    assert r.returncode == 2 and "no Parquet files" in r.stderr
