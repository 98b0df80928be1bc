"""The model card in the Hugging Face format: its metadata read back by huggingface_hub, its sections."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from aifactory.errors import InputError
from aifactory.models.modelcard import CardContext, build_card, missing_fields, render_card_markdown
from aifactory.models.recipes import load_recipe, load_recipes

RECIPE = load_recipes()["tabular_classifier"]


def _card(usage=None, metrics=None):
    ctx = CardContext(
        tenant="demo", model="iris-tabular-classifier", version="v-20261203-abc", dag_id="factory_demo",
        run_id="manual__1", recipe="tabular_classifier", hyperparameters={"epochs": 3},
        dataset={"name": "iris", "version": "v-1", "uri": "s3://aifactory/demo/raw/iris.csv",
                 "manifest_sha256": "ab" * 32, "rows": 150},
        quality={"verdict": "passed", "suite": "iris", "expectations": 7, "failed": 0},
        slurm={"job_ids": ["42"], "state": "COMPLETED", "elapsed_s": 12, "cpu_hours": 0.0067, "gpu_hours": 0.0,
               "account": "demo", "alloc_tres": "cpu=2,node=1", "resources": {"nodes": 1, "gpus_per_node": 0}},
        code_version="0.1.0+abc", usage=RECIPE.model_card if usage is None else usage)
    return build_card(ctx, metrics=metrics or {"test_accuracy": 0.9667, "test_loss": 0.12, "world_size": 1,
                                               "train_accuracy": 0.98, "n_test": 30, "onnx_test_accuracy": 0.9667},
                      files=[{"path": "model.onnx", "bytes": 10, "sha256": "cd" * 32}], published_at="2026-12-03T14:00:00Z",
                      formats={"onnx": "model.onnx", "safetensors": "model.safetensors"},
                      onnx_check={"passed": True, "tolerance": {"atol": 1e-5, "rtol": 1e-4}})


def test_the_card_is_a_hub_model_card_with_the_factorys_provenance():
    card = _card()
    assert missing_fields(card) == []
    text = render_card_markdown(card)
    assert text.startswith("---\n")
    hub = ModelCard(text)  # huggingface_hub reads it back
    meta = hub.data.to_dict()
    assert meta["license"] == "other" and meta["library_name"] == "pytorch"
    assert meta["pipeline_tag"] == "tabular-classification" and meta["datasets"] == ["iris"]
    assert meta["tags"] == ["aifactory", "recipe:tabular_classifier", "onnx", "safetensors"]
    (index,) = meta["model-index"]
    assert index["name"] == "iris-tabular-classifier"
    # one result per split, its metrics the split's (counts such as n_test and world_size are none)
    splits = {r["dataset"]["split"]: r for r in index["results"]}
    assert splits["test"]["dataset"] == {"name": "iris v-1", "type": "iris", "split": "test"}
    assert splits["test"]["task"] == {"type": "tabular-classification"}
    assert {m["type"]: m["value"] for m in splits["test"]["metrics"]} == {
        "onnx_test_accuracy": 0.9667, "test_accuracy": 0.9667, "test_loss": 0.12}
    assert {m["type"]: m["value"] for m in splits["train"]["metrics"]} == {"train_accuracy": 0.98}
    assert meta["metrics"] == ["onnx_test_accuracy", "test_accuracy", "test_loss", "train_accuracy"]
    assert meta["aifactory"] == {
        "tenant": "demo", "model": "iris-tabular-classifier", "version": "v-20261203-abc", "dataset_version": "v-1",
        "dataset_manifest_sha256": "ab" * 32, "quality_verdict": "passed", "quality_suite": "iris",
        "slurm_job_ids": ["42"], "cpu_hours": 0.0067, "gpu_hours": 0.0, "code_version": "0.1.0+abc",
        "onnx_parity": True}
    body = hub.text
    for section in ("## Intended use", "## Limitations", "## Data", "## Training", "## Compute", "## Metrics",
                    "## ONNX check", "## Files"):
        assert section in body, section
    assert RECIPE.model_card["limitations"] in body and "Slurm job id(s): 42" in body


def test_a_recipe_without_model_card_text_gets_the_defaults_and_no_pipeline_tag():
    meta = ModelCard(render_card_markdown(_card(usage={}))).data.to_dict()
    assert meta["license"] == "other" and "pipeline_tag" not in meta
    assert meta["model-index"][0]["results"][0]["task"] == {"type": "other"}


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("model_card: {licence: mit}\n", "may only set license, task, intended_use, limitations"),
        ("model_card: {license: 'MIT; rm'}\n", "must be an SPDX id"),
        ("model_card: {intended_use: ''}\n", "each a non-empty text"),
        ("model_card: [mit]\n", "may only set"),
    ],
)
def test_a_bad_model_card_block_fails_the_recipe(tmp_path, block, message):
    folder = tmp_path / "r1"
    folder.mkdir()
    (folder / "train.py").write_text("")
    (folder / "recipe.yaml").write_text("name: r1\nhyperparameters: {type: object}\n" + block)
    with pytest.raises(InputError, match=message):
        load_recipe(folder)
