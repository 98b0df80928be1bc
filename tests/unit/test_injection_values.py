"""The injection suite's unit twin: every hostile value (tests/hostile_values.py) in every field of the
trigger form, against ``validate_run_params`` (the validate task's one check), exhaustively.

Each is refused with an InputError whose message is short and printable (hostile text escaped). The one exception is a
column name (``label_column``, ``feature_columns``): any printable text can be a column's name, so
validate carries it unchanged, as data (it reaches the job as JSON in params.json, never as shell
text), and the dataset refuses it: no column of that name (the recipe's data checks, and quality,
before anything is staged). The end-to-end twin is tests/e2e/test_injection.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from hostile_values import FIELDS, HOSTILE_NUMBERS, hostile_uris, hostile_values, with_value

from aifactory.errors import InputError
from aifactory.models.recipes import check_dataset, load_recipes
from aifactory.tenants import load_tenant, validate_run_params
from aifactory.text import unprintable

SPEC = load_tenant("demo")
RECIPES = load_recipes()
CANARIES = ["/tmp/aifp-canary-unit", "/srv/aifactory/demo/aifp-canary-unit"]
VALUES = [*hostile_values(CANARIES), *hostile_uris(SPEC.bucket, SPEC.tenant, "aifactory-acme", "acme"),
          *HOSTILE_NUMBERS]
#: fields whose strings name dataset columns: printable text there is data, refused by the dataset
COLUMN_FIELDS = {"hyperparameters.label_column": "label_column", "hyperparameters.feature_columns[]": "feature_columns"}
#: the iris sample's schema, as its dataset manifest records it
IRIS_SCHEMA = [{"name": n, "type": "double"} for n in ("sepal_length", "sepal_width", "petal_length", "petal_width")
               ] + [{"name": "species", "type": "string"}]


def test_the_list_is_long_enough_and_covers_every_kind() -> None:
    names = {v.name for v in hostile_values(CANARIES)}
    assert len(VALUES) >= 30 and len(hostile_values(CANARIES)) >= 30
    for kind in ("command-substitution", "backticks", "semicolon", "and-and", "pipe", "single-quote",
                 "double-quote", "newline-sbatch", "dash-long-option", "jinja-arithmetic", "ten-thousand-chars",
                 "nul", "escape-sequence", "path-traversal", "encoded-traversal", "cyrillic-lookalike"):
        assert kind in names
    assert all(any(c in v.value for c in CANARIES) for v in hostile_values(CANARIES) if v.runs_command)


def test_the_base_conf_is_valid() -> None:
    validate_run_params(SPEC.defaults, SPEC, RECIPES)  # so every refusal below is the hostile value's


def _outcome(field: str, value: Any) -> str | None:
    """None when refused as it must be; else what went wrong."""
    try:
        params = validate_run_params(with_value(SPEC.defaults, field, value), SPEC, RECIPES)
    except InputError as exc:
        message = str(exc)
        # the recipe's schema errors come one per line; within each line, nothing unprintable
        if unprintable(message.replace("\n", "")) is not None or len(message) > 4000:
            return f"refused, but the message is not short printable lines: {message[:200]!r}"
        return None
    if field not in COLUMN_FIELDS:
        return "accepted"
    hp = COLUMN_FIELDS[field]
    carried = params.hyperparameters[hp]
    if (carried if hp == "label_column" else carried[-1]) != value:
        return f"accepted and changed into {carried!r}"
    try:
        check_dataset(RECIPES[params.recipe], params.hyperparameters, IRIS_SCHEMA)
    except InputError:
        return None
    return "accepted by validate and by the dataset's checks"


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_every_hostile_value_is_refused_in_every_field(field: str) -> None:
    holes = {v.name: why for v in VALUES if (why := _outcome(field, v.value)) is not None}
    assert not holes, f"{field}: not refused: " + "; ".join(f"{k}: {w[:300]}" for k, w in holes.items())


@pytest.mark.parametrize("field", sorted(COLUMN_FIELDS))
def test_a_column_name_with_control_characters_is_refused_by_validate_itself(field: str) -> None:
    for value in ("x\n#SBATCH --account=acme", "x\x00y", "x\u202ey", "iris\u200b", "x\u2028y"):
        with pytest.raises(InputError, match="control characters or invisible characters"):
            validate_run_params(with_value(SPEC.defaults, field, value), SPEC, RECIPES)
