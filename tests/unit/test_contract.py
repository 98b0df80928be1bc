"""The completion marker contract (aifactory.models.contract): one schema, checked the same everywhere."""

from __future__ import annotations

import hashlib
import json

import pytest

from aifactory import layout
from aifactory.errors import FactoryError
from aifactory.models.contract import (
    MARKER_SCHEMA_VERSION,
    CompletionMarker,
    MarkerError,
    MarkerFile,
    params_digest,
    parse_marker,
)

OUT = "/srv/aifactory/acme/runs/aifp-acme-0123456789ab/output"
SHA = "a" * 64


def _marker(**over) -> dict:
    base = {
        "schema_version": MARKER_SCHEMA_VERSION,
        "files": [{"path": "model.onnx", "sha256": SHA, "bytes": 10},
                  {"path": "metrics.json", "sha256": "b" * 64, "bytes": 2}],
        "formats": {"onnx": "model.onnx"},
        "metrics": {"test_accuracy": 0.9},
        "params_sha256": "c" * 64,
        "job_id": "42",
        "recipe": "tabular_classifier",
    }
    return {**base, **over}


def _files(*paths: str) -> list[dict]:
    return [{"path": p, "sha256": SHA, "bytes": 1} for p in paths]


def test_a_good_marker_round_trips():
    m = parse_marker(json.dumps(_marker()).encode(), output_dir=OUT)
    assert m.formats == {"onnx": "model.onnx"} and m.file("model.onnx") == MarkerFile("model.onnx", SHA, 10)
    assert m.job_id == "42" and m.params_sha256 == "c" * 64 and m.metrics["test_accuracy"] == 0.9
    assert parse_marker(m.to_json(), output_dir=OUT) == m
    assert parse_marker(_marker(files=_files("sub/dir/weights.bin"), formats={}), output_dir=OUT).files[0].path == "sub/dir/weights.bin"


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"files": _files(layout.MANIFEST_NAME)}, "only the platform writes"),
        ({"files": _files(layout.MODEL_CARD_MD)}, "only the platform writes"),
        ({"files": _files(layout.COMPLETION_MARKER)}, "only the platform writes"),
        ({"files": _files("../x")}, "leaves or re-enters"),
        ({"files": _files("a/../../x")}, "leaves or re-enters"),
        ({"files": _files("./model.onnx")}, "leaves or re-enters"),
        ({"files": _files("a//b")}, "leaves or re-enters"),
        ({"files": _files("/etc/x")}, "absolute path"),
        ({"files": _files(".hidden")}, "not a plain file name"),
        ({"files": _files("a\\..\\x")}, "not a plain file name"),
        ({"files": _files("bad\nname")}, "not a plain file name"),
        ({"files": _files("")}, "non-empty string"),
        ({"files": [{"path": 7, "sha256": SHA, "bytes": 1}]}, "non-empty string"),
        ({"files": _files("m.bin", "m.bin")}, "twice"),
        ({"files": []}, "non-empty list"),
        ({"files": {"model.onnx": {"sha256": SHA, "bytes": 1}}}, "non-empty list"),
        ({"files": [{"path": "m.bin", "sha256": "XYZ", "bytes": 1}]}, "sha256"),
        ({"files": [{"path": "m.bin", "sha256": SHA, "bytes": -1}]}, "bytes"),
        ({"files": [{"path": "m.bin", "sha256": SHA, "bytes": True}]}, "bytes"),
        ({"formats": {"onnx": "missing.onnx"}}, "not among its files"),
        ({"formats": {"ONNX!": "model.onnx"}}, "format name"),
        ({"schema_version": 2}, "schema_version 2"),
        ({"schema_version": None}, "schema_version None"),
        ({"params_sha256": "short"}, "params_sha256"),
        ({"job_id": "1; rm -rf /"}, "job_id"),
        ({"metrics": [1, 2]}, "metrics must be a JSON object"),
        ({"recipe": "Bad Recipe"}, "recipe"),
    ],
)
def test_bad_markers_are_refused_naming_the_problem(over, fragment):
    with pytest.raises(MarkerError, match=None) as info:
        parse_marker(_marker(**over), output_dir=OUT)
    assert fragment in str(info.value)
    assert isinstance(info.value, FactoryError)


def test_a_legacy_marker_without_a_version_is_refused():
    legacy = {"files": {"metrics.json": {"sha256": SHA, "bytes": 2}}, "metrics": {}}
    with pytest.raises(MarkerError, match="before the recipe contract"):
        parse_marker(json.dumps(legacy).encode(), output_dir=OUT)


@pytest.mark.parametrize("raw", [b"not json", b"[1]", b'{"schema_version": 1, "metrics": NaN}', b"\xff"])
def test_unparsable_markers_are_refused(raw):
    with pytest.raises(MarkerError):
        parse_marker(raw, output_dir=OUT)


def test_an_oversized_marker_is_refused_unread():
    with pytest.raises(MarkerError, match="over the"):
        parse_marker(b" " * 2_000_000, output_dir=OUT)


@pytest.mark.parametrize("out", ["relative/out", "/a/../b", "/", ""])
def test_the_output_directory_must_be_normalised_and_absolute(out):
    with pytest.raises(MarkerError, match="output directory"):
        parse_marker(_marker(), output_dir=out)


def test_nan_metrics_cannot_be_written():
    m = CompletionMarker(files=(MarkerFile("m.bin", SHA, 1),), params_sha256="c" * 64, metrics={"loss": float("nan")})
    with pytest.raises(ValueError):
        m.to_json()


def test_params_digest_is_the_sha256_of_the_exact_bytes():
    data = b'{"a": 1}'
    assert params_digest(data) == hashlib.sha256(data).hexdigest()
    assert params_digest(b'{"a":1}') != params_digest(data)
