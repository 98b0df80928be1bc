"""operators.form.FormParam: a Param whose copies share its schema, checked in draft-07."""

from __future__ import annotations

import copy

import pytest
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import ParamValidationError

from aifactory.tenants.params import FORM_SCHEMA_DIALECT
from operators.form import FormParam


def test_a_deep_copy_shares_the_schema_and_copies_the_value():
    param = FormParam({"lr": 0.1}, type="object", title="Hyperparameters", description="d")
    clone = copy.deepcopy(param)
    assert type(clone) is FormParam and clone.schema is param.schema and clone.description == "d"
    assert clone.value == {"lr": 0.1} and clone.value is not param.value  # a copy: a task may change it
    clone.value["lr"] = 0.5
    assert param.value == {"lr": 0.1}


def test_it_declares_draft_07_and_validates_like_a_param():
    param = FormParam("s3://b/x", type="string", pattern="^s3://b/", maxLength=16)
    assert param.schema == {**FORM_SCHEMA_DIALECT, "type": "string", "pattern": "^s3://b/", "maxLength": 16}
    assert param.resolve("s3://b/y") == "s3://b/y"
    for bad in ("s3://c/y", "s3://b/" + "x" * 20, 5):
        with pytest.raises(ParamValidationError):
            copy.deepcopy(param).resolve(bad)


def test_params_copied_into_an_operator_keep_their_rules():
    """What Airflow does at each operator of a DAG (get_merged_defaults: deepcopy of the DAG's params)."""
    params = ParamsDict({"nodes": FormParam(1, type="integer", minimum=1), "plain": Param(2, type="integer")})
    copied = copy.deepcopy(params)
    assert copied.get_param("nodes").schema is params.get_param("nodes").schema
    assert copied.validate() == {"nodes": 1, "plain": 2}
    copied["nodes"] = 3
    assert copied["nodes"] == 3 and params["nodes"] == 1
    with pytest.raises(ParamValidationError):
        copied["nodes"] = 0
