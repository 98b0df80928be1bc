"""Trigger-form fields: Airflow Params that are cheap to copy and cheap to check.

Airflow (3.3) deep-copies a DAG's params into every operator the DAG builds, once for each class of
the operator's hierarchy that has its own ``__init__`` (``airflow.sdk.bases.operator``:
``apply_defaults`` -> ``get_merged_defaults`` -> ``copy.deepcopy(dag.params)``): a pipeline DAG's
params were copied 17 times per DAG, each copy rebuilding every Param's schema. That was 59 % of the
parse of ``dags/factory_pipelines.py`` with 1000 tenants (``bench/parse.py --profile``).

A :class:`FormParam` shares its schema between the copies and copies only its value. Airflow never
changes a Param's schema after it is made (``Param.resolve`` writes ``value`` only; serialization
reads it), and nothing of ours does either: the schema is treated as frozen.

Each FormParam also declares the JSON Schema dialect of its schema
(:data:`aifactory.tenants.params.FORM_SCHEMA_DIALECT`): Airflow checks a Param's schema against
its dialect's metaschema whenever it resolves the Param, and draft-07's check costs half of the
default's (2020-12).
"""

from __future__ import annotations

import copy
from typing import Any

from airflow.sdk import Param

from aifactory.tenants.params import FORM_SCHEMA_DIALECT


class FormParam(Param):
    """A :class:`~airflow.sdk.Param` whose deep copy shares the (frozen) schema; draft-07 schema."""

    def __init__(self, default: Any, description: str | None = None, **schema: Any) -> None:
        super().__init__(default, description, **FORM_SCHEMA_DIALECT, **schema)

    def __deepcopy__(self, memo: dict[int, Any]) -> FormParam:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)  # description, schema, source: shared
        clone.value = copy.deepcopy(self.value, memo)  # a default may be a dict or a list: copied
        return clone
