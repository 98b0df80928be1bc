"""Training recipes: a folder per recipe under ``include/recipes/<name>/``.

A recipe is data the platform owns, not code the user sends::

    include/recipes/tabular_classifier/
        recipe.yaml       description, hyperparameter JSON schema, default resources, file names
        train.py          the entrypoint; runs on the cluster, imports nothing of ours
        sbatch.sh.tmpl    the fixed batch wrapper (no placeholders filled from user data)

``recipe.yaml`` keys:

``name`` (must equal the folder name), ``description``, ``entrypoint`` (file name of the training
script), ``sbatch_template`` (file name of the wrapper), ``hyperparameters`` (a JSON schema of type
object; ``default`` values are applied), ``resources`` (default resources: ``nodes``,
``cpus_per_task``, ``mem_gb``, ``gpus_per_node``, ``time_limit_minutes``; bounded later by the
tenant's limits in :class:`aifactory.slurm.Resources`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from aifactory.errors import InputError

__all__ = ["Recipe", "load_recipe", "load_recipes", "DEFAULT_RECIPES_ROOT"]

#: ``include/recipes`` next to this package (``include/aifactory``).
DEFAULT_RECIPES_ROOT = Path(__file__).resolve().parent.parent / "recipes"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: Entry point and template names become remote file names and a ``--export`` value.
_FILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Recipe:
    """One recipe folder, loaded and checked.

    :param name: folder name (``tabular_classifier``).
    :param root: the folder.
    :param description: one paragraph for the trigger form and docs.
    :param schema: JSON schema of the hyperparameters (``type: object``).
    :param resources: default resources.
    :param entrypoint: training script file name inside the folder.
    :param sbatch_template: batch wrapper file name inside the folder.
    """

    name: str
    root: Path
    description: str
    schema: dict[str, Any]
    resources: dict[str, Any] = field(default_factory=dict)
    entrypoint: str = "train.py"
    sbatch_template: str = "sbatch.sh.tmpl"

    @property
    def entrypoint_path(self) -> Path:
        return self.root / self.entrypoint

    @property
    def sbatch_template_path(self) -> Path:
        return self.root / self.sbatch_template

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

    :raises InputError: if ``recipe.yaml`` is missing or malformed, its schema is not a valid JSON
        schema, or a named file is missing. (A broken recipe is the platform's bug; it is reported
        with the same clarity as a user's.)
    """
    folder = Path(folder)
    spec_path = folder / "recipe.yaml"
    if not spec_path.is_file():
        raise InputError(f"recipe {folder.name!r}: {spec_path} is missing")
    spec = yaml.safe_load(spec_path.read_text()) or {}
    if not isinstance(spec, dict):
        raise InputError(f"recipe {folder.name!r}: recipe.yaml must be a mapping")
    name = spec.get("name", folder.name)
    if name != folder.name or not _NAME_RE.fullmatch(name):
        raise InputError(f"recipe {folder.name!r}: name {name!r} must equal the folder name and match {_NAME_RE.pattern}")
    schema = spec.get("hyperparameters")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise InputError(f"recipe {name!r}: 'hyperparameters' must be a JSON schema of type object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InputError(f"recipe {name!r}: hyperparameters schema is invalid: {exc.message}") from exc
    entrypoint = spec.get("entrypoint", "train.py")
    template = spec.get("sbatch_template", "sbatch.sh.tmpl")
    for label, fname in (("entrypoint", entrypoint), ("sbatch_template", template)):
        if not isinstance(fname, str) or not _FILE_RE.fullmatch(fname):
            raise InputError(f"recipe {name!r}: {label} {fname!r} must be a plain file name")
        if not (folder / fname).is_file():
            raise InputError(f"recipe {name!r}: {label} file {folder / fname} is missing")
    resources = spec.get("resources") or {}
    if not isinstance(resources, dict):
        raise InputError(f"recipe {name!r}: 'resources' must be a mapping")
    return Recipe(
        name=name,
        root=folder,
        description=str(spec.get("description", "")).strip(),
        schema=schema,
        resources=dict(resources),
        entrypoint=entrypoint,
        sbatch_template=template,
    )


def load_recipes(root: Path = DEFAULT_RECIPES_ROOT) -> dict[str, Recipe]:
    """Load every recipe folder under ``root`` (folders without ``recipe.yaml`` are ignored)."""
    root = Path(root)
    recipes: dict[str, Recipe] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if (folder / "recipe.yaml").is_file():
            recipe = load_recipe(folder)
            recipes[recipe.name] = recipe
    return recipes
