"""The second recipe, end to end: JSON Lines text in, a transformer trained from scratch, published,
and its ONNX model reproducing the reported test accuracy with ONNX Runtime, outside the job.

The test reproduces the held-out split itself (the runtime's split rule on the ingested dataset's
rows, in file order), tokenizes with the *published* tokenizer.json and runs the *published*
model.onnx in ONNX Runtime: nothing of the job's own evaluation is reused.
"""

from __future__ import annotations

import importlib
import json
import secrets
import sys
from pathlib import Path

import pytest

from aifactory.data.s3 import list_keys
from aifactory.tenants import load_tenant

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "factory_demo"
SPEC = load_tenant("demo")
HP = {"text_column": "text", "label_column": "label", "seed": 7, "test_fraction": 0.25}


def _get(s3, key: str) -> bytes:
    return s3.get_object(Bucket=SPEC.bucket, Key=key)["Body"].read()


def test_the_text_recipe_trains_publishes_and_onnx_runtime_reproduces_its_accuracy(api, s3_client, tmp_path,
                                                                                     monkeypatch):
    import numpy as np
    import onnxruntime as ort
    import pyarrow.parquet as pq

    # dataset "tickets": the demo tenant names no suite for it, so the recipe's own (text_default) gates it
    key = f"demo/raw/e2e/{secrets.token_hex(4)}/tickets.jsonl"
    s3_client.put_object(Bucket=SPEC.bucket, Key=key, Body=(REPO / "include/sample_data/reviews.jsonl").read_bytes())
    conf = {"dataset_uri": f"s3://{SPEC.bucket}/{key}", "recipe": "text_classifier", "hyperparameters": HP,
            "mem_gb": 2}
    run_id = api.trigger(DAG_ID, conf)["dag_run_id"]
    run = api.wait_for_run(DAG_ID, run_id, timeout=900)
    states = {t["task_id"]: t["state"] for t in api.task_instances(DAG_ID, run_id)}
    assert run["state"] == "success", states

    assert "/quality/text_default/" in api.xcom(DAG_ID, run_id, "quality")["report_key"]
    export = api.xcom(DAG_ID, run_id, "export")
    prefix = export["model_uri"][len(f"s3://{SPEC.bucket}/"):]
    metrics = json.loads(_get(s3_client, prefix + "metrics.json"))
    assert metrics["test_accuracy"] > 0.8  # three classes: chance is a third
    config = json.loads(_get(s3_client, prefix + "model_config.json"))
    card = _get(s3_client, prefix + "MODEL_CARD.md").decode()
    assert "text-classification" in card and run_id in card

    # the held-out split, again, from the ingested dataset version
    dataset = api.xcom(DAG_ID, run_id, "ingest")["prefix"]
    shards = sorted(k for k in list_keys(s3_client, SPEC.bucket, dataset) if k.endswith(".parquet"))
    texts: list[str] = []
    labels: list[str] = []
    for shard in shards:
        (tmp_path / "d").mkdir(exist_ok=True)
        path = tmp_path / "d" / Path(shard).name
        path.write_bytes(_get(s3_client, shard))
        table = pq.read_table(path, columns=[HP["text_column"], HP["label_column"]])
        texts += table.column(HP["text_column"]).to_pylist()
        labels += table.column(HP["label_column"]).to_pylist()
    # the split rule and the tokenizer as the job imports them: from the job's bundle
    from aifactory.models import bundle
    from aifactory.models.recipes import load_recipe

    run_dir = bundle.materialize(load_recipe(REPO / "include" / "recipes" / "text_classifier"), tmp_path / "bundle")
    for mod in [m for m in sys.modules if m.startswith(("aifp_runtime", "text_"))]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.syspath_prepend(str(run_dir))
    test_mask = importlib.import_module("aifp_runtime.data").test_mask
    tokenizer = importlib.import_module("text_tokenizer").WordTokenizer.from_json(
        _get(s3_client, prefix + "tokenizer.json"))
    held_out = test_mask(np.arange(len(texts)), HP["seed"], HP["test_fraction"])
    ids = np.zeros((int(held_out.sum()), tokenizer.max_length), dtype=np.int64)
    for row, text in enumerate(t for t, keep in zip(texts, held_out, strict=True) if keep):
        encoded = tokenizer.ids(text)
        ids[row, :len(encoded)] = encoded
    want = np.array([config["classes"].index(lab) for lab, keep in zip(labels, held_out, strict=True) if keep])

    (tmp_path / "model.onnx").write_bytes(_get(s3_client, prefix + "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: ids})
    accuracy = float((logits.argmax(axis=1) == want).mean())
    assert len(want) == metrics["n_test"]
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-9), (accuracy, metrics)
