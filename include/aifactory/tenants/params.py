"""A run's parameters: validated once against the tenant spec and the recipe, then carried typed.

:func:`validate_run_params` is the one place that turns the untyped ``params`` of a DAG run (the
trigger form, the REST API or the CLI) into a typed :class:`RunParams`. The validate task runs it
before any side effect and returns :meth:`RunParams.to_xcom`; every later stage reads that native
XCom value back with :meth:`RunParams.from_xcom` (type checks only) instead of validating the raw
form again, so a tenant spec edited while a run is under way cannot fail its later stages.

Rules on top of the recipe's JSON schema (which lets them through):

- every number, at any depth, is finite: JSON schema's ``number`` accepts NaN and infinities;
- every string and key, at any depth, is printable: no NUL, newline, escape, bidi or zero-width
  character (a newline then ``#SBATCH`` is a line of its own in any script the value reaches);
- the dataset URI uses only the characters the trigger form allows (:func:`dataset_uri_pattern`):
  no ``%2e%2e``, no query, no look-alike dots, whether the run came from the form or the API;
- ``partition``, when given, is a non-empty string (an empty one used to mean "the default");
- an integer field takes only an integer: ``5.0`` is refused (JSON schema calls it an integer) and
  ``true`` is refused (Python calls it one);
- a conf key that is not a field of the form (``account``, ``qos``, ``cluster``) is refused, with
  the list of fields: such a key used to be ignored silently;
- ``time_limit_minutes * (1 + max_requeues)`` stays within the tenant's ``limits.max_hold_minutes``:
  a job that requeues itself holds its allocation once per start.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aifactory import layout
from aifactory.data.s3 import check_tenant_uri
from aifactory.errors import InputError
from aifactory.hpc.slurm import Resources
from aifactory.layout import OWN_CODE_RECIPE
from aifactory.models.own_code import OwnCode, parse_code_uri
from aifactory.models.recipes import Recipe, load_recipes
from aifactory.tenants.spec import TenantSpec
from aifactory.text import shown, shown_list, unprintable

#: the trigger form's resource fields (the user-choosable part of :class:`Resources`)
RESOURCE_FIELDS = ("partition", "nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "time_limit_minutes")
#: every top-level field of the trigger form; any other conf key is refused
FORM_FIELDS = ("dataset_uri", "recipe", "code_uri", "hyperparameters", *RESOURCE_FIELDS)
#: the hyperparameter a recipe's job reads as its requeue budget (the platform job runtime's name)
REQUEUES_HYPERPARAMETER = "max_requeues"
#: the fields of :meth:`RunParams.to_xcom` and the JSON type each must have
_XCOM_FIELDS: dict[str, type | tuple[type, ...]] = {
    "dataset_uri": str, "recipe": str, "hyperparameters": dict, "resources": dict}
_RESOURCE_TYPES: dict[str, type | tuple[type, ...]] = {
    "account": str, "partition": str, "qos": (str, type(None)), "nodes": int, "cpus_per_task": int,
    "mem_gb": int, "gpus_per_node": int, "time_limit_minutes": int, "gpu_type": (str, type(None)),
    "constraint": (str, type(None)), "reservation": (str, type(None))}


@dataclass(frozen=True)
class RunParams:
    """A run's parameters after validation: typed, bounded, inside the tenant's areas.

    ``hyperparameters`` have the recipe's defaults applied; ``resources`` carry the tenant's
    account and QoS (never chosen by the user).
    """

    dataset_uri: str
    recipe: str
    hyperparameters: dict[str, Any]
    resources: Resources
    #: the tenant's own code (``recipe`` is then its folder's name) and the sha256 of its content
    #: when the run was validated; None for a platform recipe
    code_uri: str | None = None
    code_digest: str | None = None

    def resource_request(self) -> dict[str, Any]:
        """The user-choosable part of the resources, as the train task takes it."""
        res = self.resources.as_dict()
        return {k: res[k] for k in RESOURCE_FIELDS}

    def to_xcom(self) -> dict[str, Any]:
        """JSON-native form for the validate task's XCom (the only form later stages read)."""
        return {
            "dataset_uri": self.dataset_uri,
            "recipe": self.recipe,
            "hyperparameters": dict(self.hyperparameters),
            "resources": self.resources.as_dict(),
            "code_uri": self.code_uri,
            "code_digest": self.code_digest,
        }

    @classmethod
    def from_xcom(cls, data: Any) -> RunParams:
        """Read back :meth:`to_xcom`'s result; type checks only (validation happened once, earlier).

        :raises InputError: naming the field that is missing or of the wrong type (an XCom value
            edited by hand, or a validate task of an older release): clear the validate task.
        """
        if not isinstance(data, Mapping):
            raise InputError(f"validated params: expected the validate task's object, got {type(data).__name__}; "
                             "clear the validate task")
        for name, kind in _XCOM_FIELDS.items():
            _expect(data, name, kind, "validated params")
        resources = data["resources"]
        for name, kind in _RESOURCE_TYPES.items():
            _expect(resources, name, kind, "validated params: resources")
        _finite(data["hyperparameters"], "validated params: hyperparameters")
        for name in ("code_uri", "code_digest"):  # absent in a validate task of an older release
            if not isinstance(data.get(name), (str, type(None))):
                raise InputError(f"validated params: {name} must be str or null; clear the validate task")
        return cls(
            dataset_uri=data["dataset_uri"],
            recipe=data["recipe"],
            hyperparameters=dict(data["hyperparameters"]),
            resources=Resources(**{k: resources[k] for k in _RESOURCE_TYPES}),
            code_uri=data.get("code_uri"),
            code_digest=data.get("code_digest"),
        )


#: JSON Schema dialect of the trigger forms' Params (``operators.form.form_param`` declares it). Airflow
#: checks each Param's schema against its dialect's metaschema every time it resolves the Param, and
#: serializing one pipeline DAG resolves about a hundred of them: draft-07's metaschema is checked in
#: half the time of the default, 2020-12 (bench/parse.py serialize_s). The keywords the forms use
#: mean the same in both.
FORM_SCHEMA_DIALECT = {"$schema": "http://json-schema.org/draft-07/schema#"}


def _expect(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> None:
    value = data.get(name)
    is_bool_for_int = isinstance(value, bool) and kind is int
    if name not in data or not isinstance(value, kind) or is_bool_for_int:
        got = "nothing" if name not in data else type(value).__name__
        raise InputError(f"{where}: {name} must be {_type_name(kind)}, got {got}; clear the validate task")


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


# --------------------------------------------------------------------------------------------------
# Checks the JSON schema does not make
# --------------------------------------------------------------------------------------------------


#: how deep a parameter value may nest (a JSON body can nest far deeper than any recipe needs)
MAX_DEPTH = 32


def _finite(value: Any, where: str, depth: int = 0) -> None:
    """Refuse NaN and +/-infinity anywhere in ``value`` (dicts and lists walked recursively)."""
    if depth > MAX_DEPTH:
        raise InputError(f"{where}: nested more than {MAX_DEPTH} levels deep; flatten the value")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where}: {value} is not a finite number; give a finite value")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _finite(item, f"{where}.{printable_key(key)}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _finite(item, f"{where}[{i}]", depth + 1)


def _plain_text(value: Any, where: str) -> None:
    """Refuse control, format and separator characters in every string and key of ``value`` (after
    :func:`_finite`, which bounds the depth): text that reaches a log, a file or a script stays one line."""
    texts = [value] if isinstance(value, str) else []
    if isinstance(value, Mapping):
        texts = [k for k in value if isinstance(k, str)]
        for key, item in value.items():
            _plain_text(item, f"{where}.{printable_key(key)}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _plain_text(item, f"{where}[{i}]")
    for text in texts:
        bad = unprintable(text)
        if bad is not None:
            raise InputError(f"{where}: {shown(text, max_chars=40)} contains control characters or invisible "
                             f"characters (the first: {shown(bad)}); remove them")


def printable_key(key: Any) -> str:
    """A user-chosen key as part of a field path in a message (escaped, quoted only when it must be)."""
    text = shown(key)
    return text[1:-1] if text[1:-1] == str(key) else text


def _is_integer_schema(schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    return "integer" in kinds and "number" not in kinds


def _strict_integers(value: Any, schema: Any, where: str) -> None:
    """Where the schema says ``integer``, the value must be a Python int (not 5.0, not True)."""
    if not isinstance(schema, Mapping):
        return
    if _is_integer_schema(schema) and (isinstance(value, bool) or not isinstance(value, int)):
        hint = f"; write {int(value)}" if isinstance(value, float) and value.is_integer() else ""
        raise InputError(f"{where}: expected an integer, got {shown(value, max_chars=40)}{hint}")
    if isinstance(value, Mapping):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            _strict_integers(item, props.get(key, extra), f"{where}.{printable_key(key)}")
    elif isinstance(value, list):
        items = schema.get("items")
        for i, item in enumerate(value):
            _strict_integers(item, items, f"{where}[{i}]")


def _strict_resource_integers(params: Mapping[str, Any]) -> None:
    for name in RESOURCE_FIELDS:
        if name not in params:
            continue
        if name == "partition":
            if not isinstance(params[name], str) or not params[name]:
                raise InputError(f"partition: expected a partition's name, got {shown(params[name], max_chars=40)}")
            continue
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, int):
            hint = f"; write {int(value)}" if isinstance(value, float) and value.is_integer() else ""
            raise InputError(f"{name}: expected an integer, got {shown(value, max_chars=40)}{hint}")


def check_known_fields(params: Mapping[str, Any]) -> None:
    """Refuse a conf key that is not a field of the trigger form (``account``, ``qos``, ``cluster``...)."""
    unknown = sorted(str(k) for k in params if k not in FORM_FIELDS)
    if unknown:
        raise InputError(
            f"unknown parameter(s) {shown_list(unknown)}: the form's fields are {', '.join(FORM_FIELDS)}; "
            "the account, QoS and cluster come from the tenant spec and cannot be chosen"
        )


def check_hold(resources: Resources, hyperparameters: Mapping[str, Any], tenant: TenantSpec) -> None:
    """A job that requeues itself holds an allocation once per start: cap the total per run."""
    requeues = hyperparameters.get(REQUEUES_HYPERPARAMETER, 0)
    if isinstance(requeues, bool) or not isinstance(requeues, int):
        requeues = 0
    hold = resources.time_limit_minutes * (1 + requeues)
    cap = tenant.limits.max_hold_minutes
    if hold > cap:
        most = max(cap // resources.time_limit_minutes - 1, 0)
        raise InputError(
            f"time_limit_minutes={resources.time_limit_minutes} with hyperparameters.{REQUEUES_HYPERPARAMETER}="
            f"{requeues} may hold the allocation for {hold} minutes (time limit x (1 + requeues)), more than "
            f"the tenant's limits.max_hold_minutes={cap}; lower {REQUEUES_HYPERPARAMETER} to at most {most} "
            "or the time limit"
        )


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


#: the characters of a dataset URI after the tenant's raw area (the trigger form's pattern, and validate's)
DATASET_URI_CHARS = "[A-Za-z0-9._=/-]"


def dataset_uri_pattern(raw_uri_prefix: str) -> str:
    """The regular expression a dataset URI matches (JSON schema's ``pattern``, also valid in a browser)."""
    return "^" + raw_uri_prefix.replace(".", r"\.") + DATASET_URI_CHARS + "+$"


def check_dataset_uri(uri: Any, tenant: TenantSpec) -> str:
    """The dataset URI must name an object or prefix inside the tenant's raw area, in plain characters."""
    check_tenant_uri(uri, bucket=tenant.bucket, tenant=tenant.tenant)
    if not re.fullmatch(dataset_uri_pattern(tenant.raw_uri_prefix), uri):
        raise InputError(
            f"dataset URI {shown(uri)} may use only letters, digits and . _ = / - after "
            f"{tenant.raw_uri_prefix} (no percent-encoding, query or look-alike characters); rename the object"
        )
    return uri


def validate_run_params(
    params: Mapping[str, Any],
    tenant: TenantSpec,
    recipes: Mapping[str, Recipe] | None = None,
    own_code: Callable[[str], OwnCode] | None = None,
    purpose: str = "train",
) -> RunParams:
    """Validate a run's params against the tenant spec and the recipe; raise InputError naming the field.

    :param recipes: the recipe folders that exist (default: those under ``include/recipes``).
    :param own_code: fetches and checks the tenant's code folder of a ``code_uri`` (the validate
        task's, with the tenant's own S3 credential); needed for ``recipe: own-code`` only.
    :param purpose: what the run is for (``train``: a manual or scheduled run; ``feed``: a feed's
        training): it picks the tenant's QOS (``slurm.qos``).
    """
    check_known_fields(params)
    _finite(dict(params), "params")
    _strict_resource_integers(params)
    _plain_text(dict(params), "params")
    if recipes is None:
        recipes = load_recipes()
    recipe_name = params.get("recipe")
    code_uri = params.get("code_uri") or None
    code: OwnCode | None = None
    if recipe_name == OWN_CODE_RECIPE:
        if not tenant.own_code:
            raise InputError(f"recipe: tenant {tenant.tenant} may not run its own code (own_code is off in its "
                             "spec); choose one of the platform's recipes")
        if code_uri is None:
            raise InputError(f"code_uri: recipe {OWN_CODE_RECIPE} trains the code folder code_uri names; give "
                             f"s3://{tenant.bucket}/{layout.code_prefix(tenant.tenant)}<name>/")
        prefix, _ = parse_code_uri(code_uri, tenant.bucket, tenant.tenant)
        if own_code is None:
            raise InputError("code_uri: this caller cannot fetch code (a platform bug: pass own_code)")
        code = own_code(prefix)
        recipe = code.recipe
    else:
        if code_uri is not None:
            raise InputError(f"code_uri: only recipe {OWN_CODE_RECIPE} trains a code folder; recipe "
                             f"{shown(recipe_name)} is the platform's. Clear code_uri or choose {OWN_CODE_RECIPE}")
        if not isinstance(recipe_name, str) or recipe_name not in recipes:
            raise InputError(f"recipe: {shown(recipe_name)} is not a known recipe; choose one of {sorted(recipes)}")
        if not tenant.allows_recipe(recipe_name):
            raise InputError(
                f"recipe: {shown(recipe_name)} is not available to tenant {tenant.tenant}; "
                f"choose one of {list(tenant.recipes)}"
            )
        recipe = recipes[recipe_name]
    hp = params.get("hyperparameters") or {}
    if not isinstance(hp, dict):
        raise InputError("hyperparameters: must be a JSON object")
    hyperparameters = recipe.validate_hyperparameters(hp)
    _finite(hyperparameters, "hyperparameters")
    _strict_integers(hyperparameters, recipe.schema, "hyperparameters")
    request = {k: params[k] for k in RESOURCE_FIELDS if k in params}
    resources = Resources.from_request(request, policy=tenant.slurm_policy(purpose), defaults=recipe.resources)
    check_hold(resources, hyperparameters, tenant)
    return RunParams(
        dataset_uri=check_dataset_uri(params.get("dataset_uri"), tenant),
        recipe=recipe.name,
        hyperparameters=hyperparameters,
        resources=resources,
        code_uri=code.uri if code else None,
        code_digest=code.digest if code else None,
    )
