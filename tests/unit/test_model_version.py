"""A model's version: one per DAG run and parameters, so a reused run id never hides a new model."""

from __future__ import annotations

import pytest

from aifactory.errors import FactoryError
from aifactory.layout import VERSION_RE
from aifactory.models.export import model_version

A, B = "a" * 64, "b" * 64


def test_same_run_and_params_give_the_same_version() -> None:
    assert model_version("manual__1", "factory_demo", A) == model_version("manual__1", "factory_demo", A)
    assert VERSION_RE.fullmatch(model_version("manual__1", "factory_demo", A))


def test_a_reused_run_id_with_new_params_gets_a_version_of_its_own() -> None:
    assert model_version("manual__1", "factory_demo", A) != model_version("manual__1", "factory_demo", B)


def test_runs_and_dags_are_told_apart() -> None:
    assert model_version("r1", "factory_demo", A) != model_version("r2", "factory_demo", A)
    assert model_version("r1", "factory_demo", A) != model_version("r1", "factory_other", A)


@pytest.mark.parametrize("digest", [None, "", "A" * 64, "a" * 63, "../x", 5])
def test_without_a_valid_params_digest_nothing_is_named(digest: object) -> None:
    with pytest.raises(FactoryError, match="params_sha256"):
        model_version("manual__1", "factory_demo", digest)
