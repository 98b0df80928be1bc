"""Training recipes: a folder per recipe under ``include/recipes/<name>/``.

A recipe is data and model code the platform owns, not code the user sends::

    include/recipes/tabular_classifier/
        recipe.yaml       description, hyperparameter JSON schema, default resources, checks
        train.py          the entry point; runs on the cluster through the platform job runtime
        *.py              any other model code: the whole folder is shipped (aifactory.models.bundle)

A recipe carries no batch wrapper and no job plumbing: every recipe runs through the platform's
fixed wrapper and uses its job runtime (``include/runtime/``; the contract is
``docs/recipe-contract.md`` and :mod:`aifactory.models.contract`).

``recipe.yaml`` keys:

``name`` (must equal the folder name), ``description``, ``entrypoint`` (file name of the training
script), ``hyperparameters`` (a JSON schema of type object; ``default`` values are applied),
``resources`` (default resources: ``nodes``, ``cpus_per_task``, ``mem_gb``, ``gpus_per_node``,
``time_limit_minutes``; bounded later by the tenant's limits), ``slurm`` (optional: ``signal`` and
``signal_before_limit_s``, the warning Slurm sends before the time limit, see
:meth:`Recipe.sbatch_signal`), ``data_checks`` (optional: what the dataset's columns must be before
any job is submitted, see :func:`check_dataset`)::

    data_checks:
      label_column: {min_classes: 2}       # the column named by hyperparameters.label_column
      feature_columns: {numeric: true}     # every column named by hyperparameters.feature_columns
      text_column: {text: true}            # a column of strings (the text classifier's input)

Adding a recipe is adding a folder: the DAG's trigger form lists every folder (``load_recipes``)
the tenant allows, and the schema, resources and checks all come from its ``recipe.yaml``.
"""

from __future__ import annotations

import copy
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from aifactory.errors import InputError
from aifactory.layout import EXPECTATIONS_DIR, NAME_RE, OWN_CODE_RECIPE, RECIPES_DIR, SAFE_FILE_RE, suite_file
from aifactory.text import shown, shown_list
from aifactory.yamlfiles import cached, parse_yaml

__all__ = [
    "Recipe",
    "load_recipe",
    "load_recipes",
    "check_dataset",
    "distinct_values_s3",
    "is_numeric_arrow_type",
    "is_text_arrow_type",
    "DEFAULT_RECIPES_ROOT",
]

#: ``include/recipes`` next to this package (``include/aifactory``).
DEFAULT_RECIPES_ROOT = RECIPES_DIR

#: Signals a recipe may ask Slurm to send before the time limit (``sbatch --signal``).
_SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP", "URG")
#: Checks ``data_checks`` may name, with the type of their argument.
_DATA_CHECKS: dict[str, type] = {"min_classes": int, "numeric": bool, "text": bool}
#: Arrow type names (``str(pa.DataType)``, as in the dataset manifest's schema) a network can read as numbers.
_NUMERIC_TYPE_RE = re.compile(r"^(?:u?int(?:8|16|32|64)|halffloat|float(?:16|32|64)?|double|bool|decimal(?:32|64|128|256)?\(.*\))$")
#: Arrow type names of text: strings, plain or dictionary-encoded (never binary: it need not be UTF-8).
_STRING_TYPE = r"(?:(?:large_)?(?:string|utf8)|string_view)"
_TEXT_TYPE_RE = re.compile(rf"^(?:{_STRING_TYPE}|dictionary<values={_STRING_TYPE}, .*>)$")


@dataclass(frozen=True)
class Recipe:
    """One recipe folder, loaded and checked.

    :param name: folder name (``tabular_classifier``).
    :param root: the folder.
    :param description: one paragraph for the trigger form and docs.
    :param schema: JSON schema of the hyperparameters (``type: object``).
    :param resources: default resources.
    :param entrypoint: training script file name inside the folder.
    """

    name: str
    root: Path
    description: str
    schema: dict[str, Any]
    resources: dict[str, Any] = field(default_factory=dict)
    entrypoint: str = "train.py"
    slurm: dict[str, Any] = field(default_factory=dict)
    data_checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: what the model card says of every model of this recipe (``model_card:`` in recipe.yaml):
    #: ``license``, ``task`` (a model hub's pipeline tag), ``intended_use``, ``limitations``
    model_card: dict[str, str] = field(default_factory=dict)
    #: the cluster's container image its jobs run in (``container:``, a name of the cluster spec's
    #: ``containers.images``); None: the node's own software (the cluster's python)
    container: str | None = None
    #: the quality suite the recipe's data needs (``quality_suite:``, a suite of include/expectations),
    #: for a dataset the tenant spec names no suite for; None: the tenant's ``quality_suite``
    quality_suite: str | None = None

    def sbatch_signal(self, time_limit_minutes: int) -> str | None:
        """The ``sbatch --signal`` value (``USR1@60``), or None when the recipe asks for none.

        The warning time is capped to a quarter of the time limit (at least 10 s), so that a short
        job is not told to stop as soon as it starts.
        """
        sig = self.slurm.get("signal")
        if not sig:
            return None
        before = int(self.slurm.get("signal_before_limit_s", 60))
        before = max(10, min(before, int(time_limit_minutes) * 60 // 4))
        return f"{sig}@{before}"

    @property
    def entrypoint_path(self) -> Path:
        return self.root / self.entrypoint

    def defaults(self) -> dict[str, Any]:
        """Top-level ``default`` values of the schema (for the trigger form)."""
        props = self.schema.get("properties", {})
        return {k: copy.deepcopy(v["default"]) for k, v in props.items() if "default" in v}

    def validate_hyperparameters(self, hp: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate ``hp`` against the schema and return a new dict with defaults applied.

        :raises InputError: naming every offending field and what is wrong with it, e.g.
            ``hyperparameters.epochs: 0 is less than the minimum of 1``.
        """
        if hp is None:
            hp = {}
        if not isinstance(hp, Mapping):
            raise InputError(f"hyperparameters must be an object, got {type(hp).__name__}")
        data = {**self.defaults(), **copy.deepcopy(dict(hp))}
        validator_cls = jsonschema.validators.validator_for(self.schema)
        validator = validator_cls(self.schema)
        errors = sorted(validator.iter_errors(data), key=lambda e: (list(e.absolute_path), e.message))
        if errors:
            lines = []
            for err in errors[:20]:
                where = ".".join(str(p) for p in err.absolute_path)
                # jsonschema quotes the whole offending value; cap it (a user may paste megabytes).
                message = err.message if len(err.message) <= 300 else err.message[:300] + "..."
                lines.append(f"hyperparameters{'.' + where if where else ''}: {message}")
            more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
            raise InputError(
                f"recipe {self.name!r}: invalid hyperparameters{more}:\n  " + "\n  ".join(lines)
            )
        return data


def load_recipe(folder: Path) -> Recipe:
    """Load and check one recipe folder.

    Parsed and checked once per version of the folder (:func:`aifactory.yamlfiles.cached`: a DAG
    file's trigger forms read every recipe once per tenant); each caller gets its own copy.

    :raises InputError: if ``recipe.yaml`` is missing or malformed, its schema is not a valid JSON
        schema, or a named file is missing. (A broken recipe is the platform's bug; it is reported
        with the same clarity as a user's.)
    """
    folder = Path(folder)
    # the folder's stamp changes when a file in it (the entry point) is added, removed or renamed
    return copy.deepcopy(cached("recipe", [folder / "recipe.yaml", folder], lambda: _load_recipe(folder)))


def _load_recipe(folder: Path) -> Recipe:
    spec_path = folder / "recipe.yaml"
    if not spec_path.is_file():
        raise InputError(f"recipe {folder.name!r}: {spec_path} is missing")
    spec = parse_yaml(spec_path.read_text()) or {}
    if not isinstance(spec, dict):
        raise InputError(f"recipe {folder.name!r}: recipe.yaml must be a mapping")
    name = spec.get("name", folder.name)
    if name != folder.name or not NAME_RE.fullmatch(name):
        raise InputError(f"recipe {folder.name!r}: name {name!r} must equal the folder name and match {NAME_RE.pattern}")
    if name == OWN_CODE_RECIPE:
        raise InputError(f"recipe {name!r}: the name is the trigger form's choice of a tenant's own code; rename it")
    schema = spec.get("hyperparameters")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise InputError(f"recipe {name!r}: 'hyperparameters' must be a JSON schema of type object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InputError(f"recipe {name!r}: hyperparameters schema is invalid: {exc.message}") from exc
    if "sbatch_template" in spec:
        raise InputError(f"recipe {name!r}: recipes no longer carry a batch wrapper (sbatch_template); every "
                         "recipe runs through the platform's (include/runtime/sbatch_wrapper.sh). Remove the key")
    entrypoint = spec.get("entrypoint", "train.py")
    if not isinstance(entrypoint, str) or not SAFE_FILE_RE.fullmatch(entrypoint) or not entrypoint.endswith(".py"):
        raise InputError(f"recipe {name!r}: entrypoint {entrypoint!r} must be a plain .py file name")
    if not (folder / entrypoint).is_file():
        raise InputError(f"recipe {name!r}: entrypoint file {folder / entrypoint} is missing")
    resources = spec.get("resources") or {}
    if not isinstance(resources, dict):
        raise InputError(f"recipe {name!r}: 'resources' must be a mapping")
    slurm = spec.get("slurm") or {}
    if not isinstance(slurm, dict) or set(slurm) - {"signal", "signal_before_limit_s"}:
        raise InputError(f"recipe {name!r}: 'slurm' may only set signal and signal_before_limit_s")
    if slurm.get("signal") is not None and slurm["signal"] not in _SIGNALS:
        raise InputError(f"recipe {name!r}: slurm.signal must be one of {list(_SIGNALS)}")
    before = slurm.get("signal_before_limit_s", 60)
    if isinstance(before, bool) or not isinstance(before, int) or not 10 <= before <= 86400:
        raise InputError(f"recipe {name!r}: slurm.signal_before_limit_s must be an integer in 10..86400")
    checks = spec.get("data_checks") or {}
    if not isinstance(checks, dict):
        raise InputError(f"recipe {name!r}: 'data_checks' must be a mapping of hyperparameter -> checks")
    props = schema.get("properties", {})
    for hp_name, rules in checks.items():
        if hp_name not in props:
            raise InputError(f"recipe {name!r}: data_checks names {hp_name!r}, which is not a hyperparameter")
        if not isinstance(rules, dict) or not rules:
            raise InputError(f"recipe {name!r}: data_checks.{hp_name} must be a non-empty mapping")
        for rule, arg in rules.items():
            want = _DATA_CHECKS.get(rule)
            if want is None or not isinstance(arg, want) or (want is int and isinstance(arg, bool)):
                raise InputError(
                    f"recipe {name!r}: data_checks.{hp_name}.{rule}: unknown check or wrong argument; "
                    f"known: {', '.join(f'{k} ({v.__name__})' for k, v in _DATA_CHECKS.items())}"
                )
    return Recipe(
        name=name,
        root=folder,
        description=str(spec.get("description", "")).strip(),
        schema=schema,
        resources=dict(resources),
        entrypoint=entrypoint,
        slurm=dict(slurm),
        data_checks={k: dict(v) for k, v in checks.items()},
        model_card=_model_card(spec.get("model_card"), name),
        container=_container(spec.get("container"), name),
        quality_suite=_quality_suite(spec.get("quality_suite"), name),
    )


def _quality_suite(raw: Any, name: str) -> str | None:
    """A suite of the platform's (``include/expectations/<name>.json``; the file is only looked for:
    it is read, with Great Expectations, by the quality task)."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not NAME_RE.fullmatch(raw) or not suite_file(raw).is_file():
        raise InputError(f"recipe {name!r}: quality_suite {raw!r:.40} must name a suite of {EXPECTATIONS_DIR}")
    return raw


def _container(raw: Any, name: str) -> str | None:
    if raw is not None and (not isinstance(raw, str) or not NAME_RE.fullmatch(raw)):
        raise InputError(f"recipe {name!r}: container {raw!r:.40} must name an image of the cluster spec's "
                         f"containers.images ({NAME_RE.pattern})")
    return raw


#: the keys of a recipe's ``model_card:``; ``license`` is an SPDX id or ``other``
MODEL_CARD_KEYS = ("license", "task", "intended_use", "limitations")


def _model_card(raw: Any, name: str) -> dict[str, str]:
    raw = raw or {}
    if not isinstance(raw, dict) or set(raw) - set(MODEL_CARD_KEYS) or not all(
            isinstance(v, str) and v.strip() for v in raw.values()):
        raise InputError(f"recipe {name!r}: model_card may only set {', '.join(MODEL_CARD_KEYS)}, each a "
                         "non-empty text")
    if "license" in raw and not NAME_RE.fullmatch(raw["license"].replace(".", "-")):
        raise InputError(f"recipe {name!r}: model_card.license {raw['license']!r} must be an SPDX id (apache-2.0) or other")
    return {k: " ".join(v.split()) for k, v in raw.items()}


def load_recipes(root: Path = DEFAULT_RECIPES_ROOT) -> dict[str, Recipe]:
    """Load every recipe folder under ``root`` (folders without ``recipe.yaml`` are ignored)."""
    root = Path(root)
    recipes: dict[str, Recipe] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if (folder / "recipe.yaml").is_file():
            recipe = load_recipe(folder)
            recipes[recipe.name] = recipe
    return recipes


# --------------------------------------------------------------------------------------------------
# Checks of the data before any job is submitted
# --------------------------------------------------------------------------------------------------

#: ``distinct_values(column, limit)``: up to ``limit`` distinct values of ``column`` (stopping early).
DistinctValues = Callable[[str, int], set[Any]]


def is_numeric_arrow_type(type_name: str) -> bool:
    """True for Arrow integer, floating, boolean and decimal type names (``int64``, ``double``, ...)."""
    return bool(_NUMERIC_TYPE_RE.fullmatch(str(type_name).strip()))


def is_text_arrow_type(type_name: str) -> bool:
    """True for Arrow string type names (``string``, ``large_string``, ``string_view``, a dictionary of them)."""
    return bool(_TEXT_TYPE_RE.fullmatch(str(type_name).strip()))


def _columns(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return []


def check_dataset(
    recipe: Recipe,
    hyperparameters: Mapping[str, Any],
    schema: Iterable[Mapping[str, str]],
    distinct_values: DistinctValues | None = None,
    *,
    dataset: str = "the dataset",
) -> list[str]:
    """Check a dataset version against the recipe's ``data_checks``; return what was checked.

    :param recipe: the recipe (its ``data_checks``).
    :param hyperparameters: validated hyperparameters (they name the columns).
    :param schema: the dataset manifest's schema, ``[{"name": ..., "type": <Arrow type name>}]``.
    :param distinct_values: reads up to ``limit`` distinct values of a column; needed only for
        ``min_classes`` (None skips those checks).
    :param dataset: how to name the dataset in messages (its URI).
    :raises InputError: naming the hyperparameter and the column, e.g. ``hyperparameters.label_column:
        column 'species' has 1 distinct value in s3://...; the recipe needs at least 2 classes``.
        No data values appear in the message (they could be sensitive; ``docs/failure-modes.md``, section 15).
    """
    types = {str(c["name"]): str(c["type"]) for c in schema}
    done: list[str] = []
    for hp_name, rules in recipe.data_checks.items():
        for column in _columns(hyperparameters.get(hp_name)):
            if column not in types:
                raise InputError(
                    f"hyperparameters.{hp_name}: column {shown(column)} is not in {dataset}; "
                    f"its columns are {shown_list(sorted(types), max_items=50)}. Fix hyperparameters.{hp_name}"
                )
            if rules.get("numeric") and not is_numeric_arrow_type(types[column]):
                raise InputError(
                    f"hyperparameters.{hp_name}: column {shown(column)} of {dataset} has type {types[column]}, "
                    "not numeric; remove it from the run's hyperparameters or encode it as numbers"
                )
            if rules.get("text") and not is_text_arrow_type(types[column]):
                raise InputError(
                    f"hyperparameters.{hp_name}: column {shown(column)} of {dataset} has type {types[column]}, "
                    "not text (strings); name the column that holds the text, or upload it as JSON strings"
                )
            need = int(rules.get("min_classes", 0))
            if need and distinct_values is not None:
                found = len(distinct_values(column, need))
                if found < need:
                    raise InputError(
                        f"hyperparameters.{hp_name}: column {shown(column)} of {dataset} has {found} distinct "
                        f"value{'s' if found != 1 else ''}; the recipe {recipe.name!r} needs at least {need} "
                        "classes. Choose another label column or add rows of the other classes"
                    )
            done.append(f"{hp_name}:{column}:" + ",".join(sorted(rules)))
    return done


def distinct_values_s3(s3: Any, bucket: str, prefix: str, shard_paths: Iterable[str]) -> DistinctValues:
    """A :data:`DistinctValues` reading a dataset version's Parquet shards from S3, one at a time.

    Each shard is fetched with one streaming GET (cheap on every S3 implementation) into a
    temporary file, only the asked column is read, and reading stops as soon as ``limit``
    distinct values are known (usually within the first shard).
    """

    def read(column: str, limit: int) -> set[Any]:
        import pyarrow.parquet as pq

        from aifactory.data.s3 import download_to

        seen: set[Any] = set()
        with tempfile.TemporaryDirectory(prefix="aifp-check-") as tmp:
            for rel in shard_paths:
                local = download_to(s3, bucket, prefix + rel, Path(tmp) / "shard.parquet").path
                pf = pq.ParquetFile(local)
                for batch in pf.iter_batches(batch_size=65536, columns=[column]):
                    seen.update(v for v in batch.column(0).unique().to_pylist() if v is not None)
                    if len(seen) >= limit:
                        return seen
                local.unlink()
        return seen

    return read

