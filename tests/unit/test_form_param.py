"""operators.form.form_param: a plain Param whose deep copies share its schema, checked in draft-07."""

from __future__ import annotations

import copy

import pytest
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import ParamValidationError
from airflow.serialization.serialized_objects import BaseSerialization

from aifactory.tenants.params import FORM_SCHEMA_DIALECT
from operators.form import form_param


def test_a_deep_copy_shares_the_schema_and_copies_the_value():
    param = form_param({"lr": 0.1}, type="object", title="Hyperparameters", description="d")
    clone = copy.deepcopy(param)
    assert type(clone) is Param and clone.schema is param.schema and clone.description == "d"
    assert clone.value == {"lr": 0.1} and clone.value is not param.value  # a copy: a task may change it
    clone.value["lr"] = 0.5
    assert param.value == {"lr": 0.1}
    again = copy.deepcopy(clone)  # a copy of a copy copies the copy's value, not the original's
    assert again.value == {"lr": 0.5} and again.schema is param.schema


def test_it_declares_draft_07_and_validates_like_a_param():
    param = form_param("s3://b/x", type="string", pattern="^s3://b/", maxLength=16)
    assert param.schema == {**FORM_SCHEMA_DIALECT, "type": "string", "pattern": "^s3://b/", "maxLength": 16}
    assert param.resolve("s3://b/y") == "s3://b/y"
    for bad in ("s3://c/y", "s3://b/" + "x" * 20, 5):
        with pytest.raises(ParamValidationError):
            copy.deepcopy(param).resolve(bad)


def test_params_copied_into_an_operator_keep_their_rules():
    """What Airflow does at each operator of a DAG (get_merged_defaults: deepcopy of the DAG's params)."""
    params = ParamsDict({"nodes": form_param(1, type="integer", minimum=1), "plain": Param(2, type="integer")})
    copied = copy.deepcopy(params)
    assert copied.get_param("nodes").schema is params.get_param("nodes").schema
    assert copied.validate() == {"nodes": 1, "plain": 2}
    copied["nodes"] = 3
    assert copied["nodes"] == 3 and params["nodes"] == 1
    with pytest.raises(ParamValidationError):
        copied["nodes"] = 0


def test_it_serializes_as_a_plain_param_with_its_rules():
    """Airflow's serializer keeps a Param's schema only for the exact class Param (a subclass failed)."""
    ours = BaseSerialization._serialize_params_dict(ParamsDict({"n": form_param(1, type="integer", minimum=1)}))
    plain = BaseSerialization._serialize_params_dict(ParamsDict({"n": Param(1, type="integer", minimum=1,
                                                                            **FORM_SCHEMA_DIALECT)}))
    assert ours == plain and ours[0][1]["schema"]["__var"]["minimum"] == 1
