"""Trigger-form fields: Airflow Params that are cheap to copy and cheap to check.

Airflow (3.3) deep-copies a DAG's params into every operator the DAG builds, once for each class of
the operator's hierarchy that has its own ``__init__`` (``airflow.sdk.bases.operator``:
``apply_defaults`` -> ``get_merged_defaults`` -> ``copy.deepcopy(dag.params)``): a pipeline DAG's
params were copied 17 times per DAG, each copy rebuilding every Param's schema. That was 59 % of the
parse of ``dags/factory_pipelines.py`` with 1000 tenants (``bench/parse.py --profile``).

:func:`form_param` makes a plain :class:`~airflow.sdk.Param` whose deep copy shares its schema and
copies only its value. Airflow never changes a Param's schema after it is made (``Param.resolve``
writes ``value`` only; serialization reads it), and nothing of ours does either: the schema is
treated as frozen. It stays a plain ``Param``, not a subclass: the serializer keeps a Param's rules
only when its class is exactly ``airflow.sdk.definitions.param.Param`` (any other value is boxed
into a new Param, and a subclass instance fails as "not json-serializable"; measured). So the
cheaper copy is the instance's own ``__deepcopy__``, which :func:`copy.deepcopy` looks up on the
object before anything else.

Each field also declares the JSON Schema dialect of its schema
(:data:`aifactory.tenants.params.FORM_SCHEMA_DIALECT`): Airflow checks a Param's schema against
its dialect's metaschema whenever it resolves the Param, and draft-07's check costs half of the
default's (2020-12).
"""

from __future__ import annotations

import copy
from typing import Any

from airflow.sdk import Param

from aifactory.tenants.params import FORM_SCHEMA_DIALECT

_ATOMIC = (str, int, float, bool, type(None))


def form_param(default: Any, description: str | None = None, **schema: Any) -> Param:
    """A :class:`~airflow.sdk.Param` of ``schema`` (draft-07) whose deep copies share that schema."""
    return _shared_schema_copies(Param(default, description, **FORM_SCHEMA_DIALECT, **schema))


def _shared_schema_copies(param: Param) -> Param:
    def deepcopy(memo: dict[int, Any]) -> Param:
        clone = object.__new__(Param)
        clone.__dict__.update(param.__dict__)  # description, schema, source: shared
        value = param.value  # a default may be a dict or a list: copied
        clone.value = value if type(value) in _ATOMIC else copy.deepcopy(value, memo)
        return _shared_schema_copies(clone)  # its own copier, not the original's

    param.__deepcopy__ = deepcopy  # type: ignore[method-assign]
    return param
