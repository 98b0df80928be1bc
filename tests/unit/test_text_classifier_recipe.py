"""The text classifier recipe: its schema and data checks, its tokenizer, its sample data, and a real run.

The run trains on the sample (include/sample_data/reviews.jsonl, converted to Parquet by ingest's own
converter) from the recipe's job bundle, as the cluster does, then checks what export relies on:
the marker, the formats, and that ONNX Runtime on the published files alone (tokenizer.json,
model.onnx) reproduces the reported held-out accuracy.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.errors import InputError
from aifactory.models import bundle
from aifactory.models.contract import parse_marker
from aifactory.models.recipes import (
    DEFAULT_RECIPES_ROOT,
    check_dataset,
    is_text_arrow_type,
    load_recipe,
    load_recipes,
)

REPO = Path(__file__).resolve().parents[2]
RECIPE_DIR = DEFAULT_RECIPES_ROOT / "text_classifier"
SAMPLE = REPO / "include" / "sample_data" / "reviews.jsonl"
HP = {"text_column": "text", "label_column": "label"}
CLASSES = ["negative", "neutral", "positive"]


# the Python with torch that trains, found as the tabular recipe's tests find it
from test_recipes import TRAIN_PY, needs_torch  # noqa: E402


@pytest.fixture()
def shipped(tmp_path, monkeypatch):
    """Import modules of the recipe's job bundle (the tokenizer, the runtime) as the job does."""
    run_dir = bundle.materialize(load_recipe(RECIPE_DIR), tmp_path / "bundle")
    for mod in [m for m in sys.modules if m.startswith(("aifp_runtime", "text_")) or m == "train"]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.syspath_prepend(str(run_dir))
    return importlib.import_module


# ------------------------------------------------------------------------------------------ recipe.yaml


def test_the_recipe_follows_the_contract():
    r = load_recipes()["text_classifier"]
    assert r.entrypoint_path.is_file() and not list(r.root.glob("*.sh*"))
    assert r.sbatch_signal(15) == "USR1@60"
    assert r.data_checks == {"label_column": {"min_classes": 2}, "text_column": {"text": True}}
    assert r.model_card["task"] == "text-classification" and r.model_card["license"] == "other"
    assert {"intended_use", "limitations"} <= set(r.model_card)
    assert r.schema["required"] == ["text_column", "label_column"]
    files = {remote for _, remote in bundle.job_files(r)}
    assert {"train.py", "text_tokenizer.py", "text_data.py", "text_model.py", "aifp_runtime/export.py",
            "aifp_runtime/training.py", "aifp_runtime/data.py", bundle.WRAPPER} <= files


def test_defaults_match_the_entry_points(shipped):
    out = load_recipe(RECIPE_DIR).validate_hyperparameters(HP)
    assert out == {**HP, **shipped("train").DEFAULTS}  # train.py's own defaults (outside the platform) too
    assert out["num_heads"] * out["head_dim"] == 64 and out["max_length"] == 32


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"text_column": ""}, "hyperparameters.text_column"),
        ({"text_column": 3}, "hyperparameters.text_column: 3 is not of type 'string'"),
        ({"epochs": 0}, "hyperparameters.epochs: 0 is less than the minimum of 1"),
        ({"max_length": 2}, "hyperparameters.max_length"),
        ({"max_length": 513}, "hyperparameters.max_length"),
        ({"vocab_size": 2}, "hyperparameters.vocab_size"),
        ({"num_heads": 0}, "hyperparameters.num_heads"),
        ({"head_dim": 256}, "hyperparameters.head_dim"),
        ({"num_layers": 13}, "hyperparameters.num_layers"),
        ({"dropout": 1}, "hyperparameters.dropout"),
        ({"dropout": -0.1}, "hyperparameters.dropout"),
        ({"learning_rate": 0}, "hyperparameters.learning_rate"),
        ({"max_requeues": 11}, "hyperparameters.max_requeues"),
        ({"feature_columns": ["a"]}, "Additional properties are not allowed ('feature_columns'"),
    ],
)
def test_hyperparameters_are_refused_naming_the_field(over, fragment):
    with pytest.raises(InputError) as exc:
        load_recipe(RECIPE_DIR).validate_hyperparameters({**HP, **over})
    assert fragment in str(exc.value)


def test_text_and_label_columns_are_required():
    with pytest.raises(InputError, match="'text_column' is a required property"):
        load_recipe(RECIPE_DIR).validate_hyperparameters({"label_column": "label"})


# ------------------------------------------------------------------------------------------ data checks


@pytest.mark.parametrize("name, text", [("string", True), ("large_string", True), ("string_view", True),
                                        ("dictionary<values=string, indices=int32, ordered=0>", True),
                                        ("binary", False), ("int64", False), ("double", False),
                                        ("list<item: string>", False),
                                        ("dictionary<values=int64, indices=int32, ordered=0>", False)])
def test_text_arrow_types(name, text):
    assert is_text_arrow_type(name) is text


def test_check_dataset_wants_a_text_column():
    r = load_recipe(RECIPE_DIR)
    hp = r.validate_hyperparameters(HP)
    schema = [{"name": "text", "type": "string"}, {"name": "label", "type": "string"},
              {"name": "stars", "type": "int64"}]
    reader = lambda col, limit: {"a", "b"} if col == "label" else {1}  # noqa: E731
    assert check_dataset(r, hp, schema, reader) == ["label_column:label:min_classes", "text_column:text:text"]
    with pytest.raises(InputError, match=r"hyperparameters.text_column: column 'stars' of s3://b/d/ has type int64, "
                                         r"not text"):
        check_dataset(r, {**hp, "text_column": "stars"}, schema, reader, dataset="s3://b/d/")
    with pytest.raises(InputError, match=r"hyperparameters.text_column: column 'body' is not in"):
        check_dataset(r, {**hp, "text_column": "body"}, schema, reader)
    with pytest.raises(InputError, match="has 1 distinct value"):
        check_dataset(r, {**hp, "label_column": "stars"}, schema, reader)


def test_a_recipe_may_not_give_the_text_check_a_wrong_argument(tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(RECIPE_DIR, bad)
    text = (bad / "recipe.yaml").read_text().replace("name: text_classifier", "name: bad")
    (bad / "recipe.yaml").write_text(text.replace("text: true", "text: 1"))
    with pytest.raises(InputError, match="data_checks.text_column.text: unknown check or wrong argument"):
        load_recipe(bad)


# ------------------------------------------------------------------------------------------ tokenizer


def _sample() -> list[dict[str, str]]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()]


def test_the_tokenizer_is_deterministic_and_order_free(shipped):
    tk = shipped("text_tokenizer")
    texts = [r["text"] for r in _sample()]

    def build(ts: list[str]):
        counts = Counter(t for text in ts for t in tk.words(text, 32))
        return tk.WordTokenizer.build(counts, vocab_size=20000, min_count=2, max_length=32)

    a, b, c = build(texts), build(texts), build(list(reversed(texts)))
    assert a.to_json() == b.to_json() == c.to_json() and a.sha256 == c.sha256
    assert a.tokens[:2] == ("[PAD]", "[UNK]") and a.tokens[2] == "the"  # most frequent first
    assert tk.WordTokenizer.from_json(a.to_json()) == a
    small = build(texts[:300])
    assert small.to_json() != a.to_json()  # another split, another vocabulary
    capped = tk.WordTokenizer.build(Counter(t for text in texts for t in tk.words(text, 32)), vocab_size=10,
                                    min_count=1, max_length=32)
    assert capped.tokens == a.tokens[:10]


def test_the_tokenizer_rules(shipped):
    tk = shipped("text_tokenizer")
    vocab = tk.WordTokenizer(("[PAD]", "[UNK]", "the", "lamp", "is", "great", "!"), max_length=6)
    assert tk.words("The LAMP is Great!", 10) == ["the", "lamp", "is", "great", "!"]
    assert vocab.encode("The LAMP is Great!") == [2, 3, 4, 5, 6, 0]
    assert vocab.encode("the lamp is awful") == [2, 3, 4, 1, 0, 0]  # unknown word: [UNK]
    assert vocab.encode("the lamp is great ! ! ! !") == [2, 3, 4, 5, 6, 6]  # cut at max_length
    assert vocab.encode("\uff34\uff28\uff25 lamp") == [2, 3, 0, 0, 0, 0]  # NFKC: full-width letters
    assert vocab.encode("[PAD] [UNK]")[:6] == [1, 1, 1, 1, 1, 1]  # text cannot forge a special token
    assert vocab.encode("") == [0] * 6
    with pytest.raises(ValueError):
        tk.WordTokenizer(("the", "[PAD]", "[UNK]"), max_length=4)
    with pytest.raises(ValueError):
        tk.WordTokenizer.from_json(json.dumps({**vocab.to_dict(), "pattern": r"\S+"}))


# ------------------------------------------------------------------------------------------ sample data


def test_the_sample_is_what_its_generator_writes():
    r = subprocess.run([sys.executable, str(SAMPLE.with_name("make_reviews.py"))], capture_output=True, check=True)
    assert r.stdout == SAMPLE.read_bytes()
    rows = _sample()
    assert Counter(r["label"] for r in rows) == {c: 200 for c in CLASSES}
    assert len({r["text"] for r in rows}) == len(rows)


def test_the_demo_tenant_gates_the_sample_with_its_suite():
    from aifactory.data.quality import expand_suite, load_suite, suite_path
    from aifactory.tenants import load_tenant

    spec = load_tenant("demo")
    assert spec.allows_recipe("text_classifier")
    suite = spec.quality_suites["reviews"]
    expectations = expand_suite(load_suite(suite_path(suite)), load_recipe(RECIPE_DIR).validate_hyperparameters(HP))
    assert {e["kwargs"].get("column") for e in expectations} == {None, "text", "label"}
    in_set = next(e for e in expectations if e["type"] == "expect_column_values_to_be_in_set")
    assert in_set["kwargs"]["value_set"] == CLASSES


def test_a_text_dataset_the_tenant_names_no_suite_for_is_gated_by_the_recipes_suite():
    from aifactory.tenants import load_tenant

    spec, recipe = load_tenant("demo"), load_recipe(RECIPE_DIR)
    assert recipe.quality_suite == "text_default"
    assert spec.suite_for("tickets", recipe.quality_suite) == "text_default"  # not the tabular default
    assert spec.suite_for("reviews", recipe.quality_suite) == "reviews"  # the tenant's own entry first
    assert spec.suite_for("tickets") == spec.quality_suite == "tabular_default"  # a recipe that names none


def test_the_text_suite_passes_the_sample_and_stops_empty_texts(tmp_path):
    import pyarrow as pa
    import pyarrow.dataset as ds

    from aifactory.data.quality import suite_path
    from aifactory.errors import QualityGateFailed
    from tests.unit.test_quality import _validate

    hyper = load_recipe(RECIPE_DIR).validate_hyperparameters(HP)
    table = ds.dataset(_dataset(tmp_path)).to_table()
    summary, _ = _validate(tmp_path / "good", [table], suite=suite_path("text_default"), params=hyper)
    assert summary["success"] is True and len(summary["expectations"]) == 7, summary
    broken = table.set_column(table.schema.get_field_index("text"), "text",
                              pa.array([""] + table.column("text").to_pylist()[1:]))
    with pytest.raises(QualityGateFailed, match="expect_column_value_lengths_to_be_between"):
        _validate(tmp_path / "bad", [broken], suite=suite_path("text_default"), params=hyper)


# ------------------------------------------------------------------------------------------ train.py


def _dataset(tmp_path: Path, rows: list[dict] | None = None) -> Path:
    """The sample (or ``rows``) as ingest writes it: JSON Lines through its own converter into Parquet."""
    from aifactory.data.ingest import SourceObject, convert_to_parquet, detect_format

    src = tmp_path / "reviews.jsonl"
    if rows is None:
        src.write_bytes(SAMPLE.read_bytes())
    else:
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ds"
    out.mkdir()
    convert_to_parquet([SourceObject.local(src, "s3://aifactory/demo/raw/reviews.jsonl")], detect_format(src.name),
                       out, log=lambda _: None)
    return out


def _train(tmp_path: Path, dataset: Path, **hp) -> subprocess.CompletedProcess:
    """Run the recipe as the cluster does: from its job bundle, in a run directory."""
    run_dir = tmp_path / "run"
    hyper = load_recipe(RECIPE_DIR).validate_hyperparameters({**HP, **hp})
    params = {"dataset_dir": str(dataset), "output_dir": str(run_dir / "output"), "hyperparameters": hyper,
              "job": {"tenant": "demo", "recipe": "text_classifier"}}
    run_dir.mkdir(exist_ok=True)
    (run_dir / "params.json").write_text(json.dumps(params, sort_keys=True))
    bundle.materialize(load_recipe(RECIPE_DIR), run_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    return subprocess.run([TRAIN_PY, "train.py", "--params", "params.json"], cwd=run_dir, env=env,
                          capture_output=True, text=True, timeout=300)


@needs_torch
def test_training_on_the_sample_learns_and_onnx_runtime_reproduces_it(tmp_path, shipped):
    from aifactory.models.export import recheck_onnx, safetensors_summary

    ds = _dataset(tmp_path)
    r = _train(tmp_path, ds)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "run" / "output"
    marker = parse_marker((out / layout.COMPLETION_MARKER).read_bytes(), output_dir=str(out))
    assert {f.path for f in marker.files} == {"model.pt", "model.safetensors", "model.onnx", "tokenizer.json",
                                               "onnx_check.json", "model_config.json", "metrics.json"}
    for f in marker.files:
        assert f.sha256 == hashlib.sha256((out / f.path).read_bytes()).hexdigest()
    assert marker.formats == {"pytorch": "model.pt", "safetensors": "model.safetensors", "onnx": "model.onnx"}
    assert marker.params_sha256 == hashlib.sha256((tmp_path / "run" / "params.json").read_bytes()).hexdigest()
    assert marker.recipe == "text_classifier" and marker.details["onnx_check"]["passed"]
    assert [line for line in r.stdout.splitlines() if line.startswith("epoch=")][-1].startswith("epoch=10/10 ")

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.8, metrics  # chance is 1/3 (three balanced labels)
    assert metrics["onnx_test_accuracy"] == metrics["test_accuracy"]
    check = json.loads((out / "onnx_check.json").read_text())
    assert check["heldout_rows"] == metrics["n_test"] and check["heldout_max_abs_diff"] <= check["tolerance"]["atol"]

    # ONNX Runtime on the published files alone: tokenizer.json + model.onnx, the split recomputed
    import numpy as np
    import onnxruntime as ort
    import pyarrow.parquet as pq

    tk, data = shipped("text_tokenizer"), shipped("aifp_runtime.data")
    config = json.loads((out / "model_config.json").read_text())
    tokenizer = tk.WordTokenizer.from_json((out / "tokenizer.json").read_bytes())
    assert tokenizer.sha256 == config["tokenizer"]["sha256"] and config["classes"] == CLASSES
    table = pq.read_table(data.dataset_files(ds)[0])
    mask = data.test_mask(np.arange(table.num_rows), config["split"]["seed"], config["split"]["test_fraction"])
    texts = [t for t, m in zip(table.column("text").to_pylist(), mask, strict=True) if m]
    labels = [v for v, m in zip(table.column("label").to_pylist(), mask, strict=True) if m]
    ids = np.array([tokenizer.encode(t) for t in texts], dtype=np.int64)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == config["onnx"]["input"] == "token_ids"
    assert session.get_inputs()[0].type == "tensor(int64)"
    logits = session.run(None, {"token_ids": ids})[0]
    predicted = [config["classes"][i] for i in logits.argmax(axis=1)]
    assert sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels) == metrics["test_accuracy"]
    # a shorter sequence (trailing padding dropped) gives the same logits: padding is masked out
    trimmed = session.run(None, {"token_ids": ids[:, : int((ids != 0).sum(1).max())]})[0]
    assert np.allclose(trimmed, logits, atol=1e-4)

    # export's own re-check (int64 probe) and safetensors header
    assert recheck_onnx(out / "model.onnx", out / "onnx_check.json")["export_recheck_max_abs_diff"] <= 1e-4
    assert "tokens.weight" in safetensors_summary(out / "model.safetensors")["tensors"]


@needs_torch
@pytest.mark.parametrize(
    "rows, hp, fragment",
    [
        ([{"text": f"the lamp {i}", "label": "positive"} for i in range(40)], {},
         "hyperparameters.label_column 'label' has only one class"),
        ([{"text": i, "label": ["a", "b"][i % 2]} for i in range(40)], {}, "text column 'text' has type int64, not text"),
        ([{"text": "x", "label": "a"}], {"label_column": "text"}, "is also the label column"),
    ],
)
def test_bad_data_exits_2_with_a_clear_message(tmp_path, rows, hp, fragment):
    r = _train(tmp_path, _dataset(tmp_path, rows), **hp)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("ERROR: ") and fragment in r.stderr
    assert not (tmp_path / "run" / "output" / layout.COMPLETION_MARKER).exists()
