"""Hostile values for every field of the trigger form: one list, shared by the unit twin
(tests/unit/test_injection_values.py, against ``validate_run_params``) and the injection suite
(tests/e2e/test_injection.py, through the REST API and the scheduler).

A value that would run a command if it ever reached a shell tries to ``touch`` the canary files
given to :func:`hostile_values`; the end-to-end suite checks afterwards that none was created.
Every value must be refused before any remote command runs, in every field it is placed in.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hostile:
    """One hostile value: ``name`` (a test id), ``value`` (any JSON value) and whether it would run a
    command (``touch`` of the canaries) if a shell ever evaluated it."""

    name: str
    value: Any
    runs_command: bool = False


def hostile_values(canaries: Sequence[str]) -> list[Hostile]:
    """The hostile values; those that would run a command touch every path in ``canaries``."""
    touch = "touch " + " ".join(canaries)
    return [
        # shell: command substitution, separators, redirections, quotes that close an argument
        Hostile("command-substitution", f"$({touch})", True),
        Hostile("backticks", f"`{touch}`", True),
        Hostile("semicolon", f"x; {touch}", True),
        Hostile("and-and", f"x && {touch}", True),
        Hostile("or-or", f"x || {touch}", True),
        Hostile("pipe", f"x | {touch}", True),
        Hostile("background", f"x & {touch}", True),
        Hostile("redirect", f"x > {canaries[0]}", True),
        Hostile("process-substitution", f"<({touch})", True),
        Hostile("single-quote", f"x'; {touch}; echo '", True),
        Hostile("double-quote", f'x"; {touch}; echo "', True),
        Hostile("variable-expansion", "${HOME}$SLURM_JOB_ACCOUNT", False),
        Hostile("newline-command", f"x\n{touch}", True),
        # a line of its own in an sbatch script would choose the account
        Hostile("newline-sbatch", "x\n#SBATCH --account=acme", False),
        Hostile("crlf-sbatch", "x\r\n#SBATCH --account=acme", False),
        Hostile("unicode-line-separator-sbatch", "x\u2028#SBATCH --account=acme", False),
        # options: a value that starts with '-' read as a flag by sbatch, ssh, tar, touch...
        Hostile("dash-long-option", "--account=acme", False),
        Hostile("dash-short-option", "-A acme", False),
        Hostile("dash-wrap", f"--wrap={touch}", True),
        # Jinja: Airflow renders templated fields; the conf must never be rendered
        Hostile("jinja-arithmetic", "{{ 7 * 7 }}", False),
        Hostile("jinja-connection", "{{ conn.aifactory_hpc_local.password }}", False),
        Hostile("jinja-block", "{% for x in range(3) %}{{ x }}{% endfor %}", False),
        Hostile("jinja-os", f"{{{{ cycler.__init__.__globals__.os.popen('{touch}').read() }}}}", True),
        # sizes and characters
        Hostile("ten-thousand-chars", "a" * 10_000),
        Hostile("nul", f"x\x00{touch}", True),
        Hostile("escape-sequence", "x\x1b[2J\x1b]0;owned\x07"),
        Hostile("backspace-del", "x\x08\x7f"),
        Hostile("c1-next-line", "x\x85#SBATCH --account=acme"),
        Hostile("bidi-override", "x\u202etxt.exe"),
        Hostile("zero-width-space", "iris\u200b"),
        Hostile("empty", ""),
        Hostile("whitespace", " \t "),
        # paths and names of other tenants
        Hostile("path-traversal", "../../acme/raw/iris.csv"),
        Hostile("absolute-path", "/etc/passwd"),
        Hostile("encoded-traversal", "%2e%2e/%2e%2e/acme"),
        Hostile("glob", "*"),
        Hostile("fullwidth-lookalike", "\uff53\uff13://aifactory/acme/raw/iris.csv"),
        Hostile("cyrillic-lookalike", "dem\u043e"),
        Hostile("other-tenant", "acme"),
    ]


def hostile_uris(bucket: str, tenant: str, other_bucket: str, other_tenant: str) -> list[Hostile]:
    """Dataset URIs that leave the tenant's raw area (or try to): traversal, encodings, other buckets."""
    raw = f"s3://{bucket}/{tenant}/raw/"
    return [
        Hostile("uri-traversal", f"{raw}../../{other_tenant}/raw/iris.csv"),
        Hostile("uri-traversal-dot", f"{raw}./../{other_tenant}/raw/iris.csv"),
        Hostile("uri-encoded-traversal", f"{raw}%2e%2e/%2e%2e/{other_tenant}/raw/iris.csv"),
        Hostile("uri-encoded-slash", f"{raw}..%2f..%2f{other_tenant}%2fraw%2firis.csv"),
        Hostile("uri-backslash-traversal", f"{raw}..\\..\\{other_tenant}\\raw\\iris.csv"),
        Hostile("uri-double-slash", f"{raw}/../{other_tenant}/raw/iris.csv"),
        Hostile("uri-other-bucket", f"s3://{other_bucket}/{other_tenant}/raw/iris.csv"),
        Hostile("uri-other-bucket-own-prefix", f"s3://{other_bucket}/{tenant}/raw/iris.csv"),
        Hostile("uri-other-tenant-prefix", f"s3://{bucket}/{other_tenant}/raw/iris.csv"),
        Hostile("uri-prefix-lookalike", f"s3://{bucket}/{tenant}/raw-{other_tenant}/iris.csv"),
        Hostile("uri-tenant-lookalike", f"s3://{bucket}/{tenant}x/raw/iris.csv"),
        Hostile("uri-cyrillic-tenant", f"s3://{bucket}/{tenant[:-1]}\u043e/raw/iris.csv"),
        Hostile("uri-dot-leader-traversal", f"{raw}\u2024\u2024/\u2024\u2024/{other_tenant}/raw/iris.csv"),
        Hostile("uri-uppercase-scheme", f"S3://{bucket}/{tenant}/raw/iris.csv"),
        Hostile("uri-file-scheme", "file:///etc/passwd"),
        Hostile("uri-http-metadata", "http://169.254.169.254/latest/meta-data/"),
        Hostile("uri-userinfo", f"s3://{other_bucket}@{bucket}/{tenant}/raw/iris.csv"),
        Hostile("uri-whole-area", raw),
        Hostile("uri-trailing-newline", f"{raw}iris.csv\n"),
        Hostile("uri-query", f"{raw}iris.csv?versionId=1"),
    ]


#: JSON values of the wrong type or out of range, for the integer fields (and any other field)
HOSTILE_NUMBERS: list[Hostile] = [
    Hostile("negative", -1),
    Hostile("huge", 10**30),
    Hostile("float", 1.5),
    Hostile("bool", True),
    Hostile("null", None),
    Hostile("list", [1]),
    Hostile("object", {"$gt": 0}),
    Hostile("numeric-string", "1"),
    Hostile("command-number", "1; touch /tmp/x"),
]


# --------------------------------------------------------------------------------------------------
# Where a value goes: every field of the trigger form, hyperparameter keys and values, unknown keys
# --------------------------------------------------------------------------------------------------

Placer = Callable[[dict[str, Any], Any], None]


def _top(field: str) -> Placer:
    def place(conf: dict[str, Any], value: Any) -> None:
        conf[field] = value
    return place


def _hyper(name: str, wrap: Callable[[Any], Any] = lambda v: v) -> Placer:
    def place(conf: dict[str, Any], value: Any) -> None:
        conf["hyperparameters"][name] = wrap(value)
    return place


def _hyper_key(conf: dict[str, Any], value: Any) -> None:
    conf["hyperparameters"][value if isinstance(value, str) else repr(value)] = 1


def _hyper_list_item(conf: dict[str, Any], value: Any) -> None:
    conf["hyperparameters"]["feature_columns"] = [*conf["hyperparameters"]["feature_columns"], value]


def _extra_key(conf: dict[str, Any], value: Any) -> None:
    conf[value if isinstance(value, str) else repr(value)] = "x"


def _extra_value(conf: dict[str, Any], value: Any) -> None:
    conf["cluster"] = value


#: every place of the conf a value can be put in, by the name the tests show
FIELDS: dict[str, Placer] = {
    "dataset_uri": _top("dataset_uri"),
    "recipe": _top("recipe"),
    "partition": _top("partition"),
    "nodes": _top("nodes"),
    "gpus_per_node": _top("gpus_per_node"),
    "cpus_per_task": _top("cpus_per_task"),
    "mem_gb": _top("mem_gb"),
    "time_limit_minutes": _top("time_limit_minutes"),
    "hyperparameters.label_column": _hyper("label_column"),
    "hyperparameters.feature_columns[]": _hyper_list_item,
    "hyperparameters.epochs": _hyper("epochs"),
    "hyperparameters.learning_rate": _hyper("learning_rate"),
    "hyperparameters.<key>": _hyper_key,
    "<extra key>": _extra_key,
    "<extra key's value>": _extra_value,
    "hyperparameters": _top("hyperparameters"),
}


def with_value(base: Mapping[str, Any], field: str, value: Any) -> dict[str, Any]:
    """A copy of the valid conf ``base`` with ``value`` put into ``field`` (a key of :data:`FIELDS`)."""
    conf = copy.deepcopy(dict(base))
    conf.setdefault("hyperparameters", {})
    FIELDS[field](conf, value)
    return conf
