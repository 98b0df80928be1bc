"""The storage layout and the name rules: one definition each (aifactory.layout), and no second copy.

The scan below reads every Python file of the product (core package, operators, DAGs, plugins, the
platform job runtime and recipes) and fails when a layout rule's literal - a file name such as
``_COMPLETED.json``, or a name pattern - appears anywhere but in its one defining module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from aifactory import layout

REPO = layout.REPO_DIR
PRODUCT_DIRS = ["include", "operators", "dags", "plugins"]


def _product_files() -> list[Path]:
    files = []
    for d in PRODUCT_DIRS:
        files += [p for p in (REPO / d).rglob("*.py") if ".venv" not in p.parts and "sample_data" not in p.parts]
    return files


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a module, f-string pieces included, with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


#: a rule's literal -> the modules allowed to hold it (the job runtime runs on the cluster, where
#: aifactory is not installed, so the marker contract ships as one stdlib-only file)
FILE_NAMES = {
    layout.MANIFEST_NAME: {"include/aifactory/layout.py"},
    layout.QUALITY_REPORT_NAME: {"include/aifactory/layout.py"},
    layout.STAGING_MARKER: {"include/aifactory/layout.py"},
    layout.MODEL_CARD_MD: {"include/aifactory/layout.py"},
    layout.MODEL_CARD_JSON: {"include/aifactory/layout.py"},
    layout.COMPLETION_MARKER: {"include/aifactory/layout.py", "include/aifactory/models/contract.py"},
}


def _where_defined(literal: str) -> dict[str, list[int]]:
    hits: dict[str, list[int]] = {}
    for path in _product_files():
        for line, value in _string_constants(path):
            # the literal itself, or a path/key ending in it ("out/_COMPLETED.json")
            if value == literal or value.endswith("/" + literal):
                hits.setdefault(str(path.relative_to(REPO)), []).append(line)
    return hits


@pytest.mark.parametrize("literal", sorted(FILE_NAMES))
def test_each_file_name_is_defined_once(literal: str) -> None:
    hits = _where_defined(literal)
    strays = {f: lines for f, lines in hits.items() if f not in FILE_NAMES[literal]}
    assert not strays, f"{literal!r} is written outside its one definition: {strays}; import it from aifactory.layout"
    assert hits, f"{literal!r} is defined nowhere"


def _regex_patterns(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for n in ast.walk(tree):
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in {"compile", "fullmatch", "match"}
                and n.args and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str)):
            out.append((n.lineno, n.args[0].value))
    return out


#: the HPC-side fetch script runs on the login node, where aifactory is not installed: it keeps its
#: own copy of the file-name rule, checked equal to layout's below
SCRIPT_COPIES = {"SAFE_FILE_RE": {"include/stack/hpc/aifp_fetch.py"}}


@pytest.mark.parametrize("rule", ["TENANT_RE", "NAME_RE", "JOB_NAME_RE", "SAFE_FILE_RE", "VERSION_RE"])
def test_each_name_rule_is_defined_once(rule: str) -> None:
    pattern = getattr(layout, rule).pattern
    strays = [
        f"{p.relative_to(REPO)}:{line}"
        for p in _product_files()
        if p != REPO / "include/aifactory/layout.py"
        and str(p.relative_to(REPO)) not in SCRIPT_COPIES.get(rule, set())
        for line, value in _regex_patterns(p)
        if value == pattern
    ]
    assert not strays, f"layout.{rule} is written again at {strays}; import it from aifactory.layout"


def test_the_fetch_scripts_file_name_rule_is_layouts() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("aifp_fetch", layout.HPC_SCRIPTS_DIR / "aifp_fetch.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NAME_RE.pattern == layout.SAFE_FILE_RE.pattern


def test_tenant_names() -> None:
    for good in ("demo", "acme-ai", "t01"):
        assert layout.TENANT_RE.fullmatch(good)
    for bad in ("ab", "Demo", "-demo", "demo-", "de_mo", "a" * 33, "demo\n", "../x"):
        assert not layout.TENANT_RE.fullmatch(bad), bad


def test_job_names_embed_a_valid_tenant() -> None:
    assert layout.JOB_NAME_RE.fullmatch("aifp-demo-0123456789ab")
    assert not layout.JOB_NAME_RE.fullmatch("aifp-Demo-0123456789ab")
    assert not layout.JOB_NAME_RE.fullmatch("aifp-demo-0123456789a")


def test_object_keys() -> None:
    assert layout.raw_prefix("demo") == "demo/raw/"
    assert layout.dataset_prefix("demo", "iris", "v-0123abcd") == "demo/datasets/iris/v-0123abcd/"
    assert layout.dataset_manifest_key("demo", "iris", "v-0123abcd") == "demo/datasets/iris/v-0123abcd/manifest.json"
    assert layout.model_prefix("demo", "iris", "v-1") == "demo/models/iris/v-1/"
    key = layout.quality_result_key("demo/datasets/iris/v-1/", "iris", "ab12")
    assert key == "demo/datasets/iris/v-1/quality/iris/ab12/quality.json"
    assert layout.shard_name(3) == "part-00003.parquet"


@pytest.mark.parametrize(
    ("key", "inside"),
    [
        ("demo/datasets/iris/v-1/", True),
        ("demo/datasets/x", True),
        ("demo/datasets/", False),
        ("other/datasets/iris/v-1/", False),
        ("demo/datasets/../../other/x", False),
        ("demo/datasets/./x", False),
        ("demo/datasets//x", False),
        ("demo/datasetsx/y", False),
    ],
)
def test_key_inside(key: str, inside: bool) -> None:
    assert layout.key_inside(key, layout.datasets_prefix("demo")) is inside


@pytest.mark.parametrize(
    ("path", "inside"),
    [
        ("/srv/aifactory/demo/runs/aifp-demo-0123456789ab/output", True),
        ("/srv/aifactory/demo/runs", False),
        ("/srv/aifactory/demo/runs/", False),
        ("/srv/aifactory/demo/runs/../../other/runs/x", False),
        ("/srv/aifactory/other/runs/x", False),
        ("/srv/aifactory/demo/runsx", False),
        ("srv/aifactory/demo/runs/x", False),
        ("/srv/aifactory/demo/runs//x", False),
        ("/srv/aifactory/demo/runs/./x", False),
    ],
)
def test_path_inside(path: str, inside: bool) -> None:
    runs = layout.runs_dir(layout.TenantAreas("/srv/aifactory/demo", "/scratch/aifp-demo"))
    assert runs == "/srv/aifactory/demo/runs"
    assert layout.path_inside(path, runs) is inside


@pytest.mark.parametrize(
    ("prefix", "want"),
    [
        ("demo/datasets/iris/v-0123abcd/", ("iris", "v-0123abcd")),
        ("demo/datasets/iris/v-0123abcd", None),
        ("demo/datasets/iris/", None),
        ("demo/datasets/iris/v-0123abcd/extra/", None),
        ("demo/datasets/Iris/v-0123abcd/", None),
        ("demo/datasets/iris/latest/", None),
        ("other-tenant/datasets/iris/v-0123abcd/", None),
        ("demo/datasets/../datasets/iris/v-0123abcd/", None),
        (None, None),
    ],
)
def test_dataset_in_prefix(prefix: object, want: tuple[str, str] | None) -> None:
    assert layout.dataset_in_prefix(prefix, "demo") == want


def test_hpc_paths_go_to_their_area() -> None:
    areas = layout.TenantAreas(project="/project/demo", scratch="/scratch/aifp-demo")
    assert layout.hpc_dataset_dir(areas, "iris", "v-1") == "/scratch/aifp-demo/datasets/iris/v-1"
    run = layout.run_dir(areas, "aifp-demo-0123456789ab")
    assert run == "/project/demo/runs/aifp-demo-0123456789ab"
    assert layout.run_output_dir(run) == run + "/output"
    assert layout.job_log_path(run, "42") == run + "/slurm-42.out"
    assert layout.platform_bin_dir(areas) == "/project/demo/.aifp/bin"
    assert layout.env_dir(areas, "env-0123456789abcdef") == "/project/demo/envs/env-0123456789abcdef"
    assert areas.roots == ("/project/demo", "/scratch/aifp-demo")
    assert layout.TenantAreas("/srv/x/demo", "/srv/x/demo").roots == ("/srv/x/demo",)


def test_an_area_holds_only_what_lies_inside_it() -> None:
    areas = layout.TenantAreas(project="/project/demo", scratch="/scratch/aifp-demo")
    assert areas.holding("/project/demo/runs/x") == "/project/demo"
    assert areas.holding("/scratch/aifp-demo/datasets/iris") == "/scratch/aifp-demo"
    for outside in ("/project/demo", "/project/demox/runs", "/project/demo/../acme/runs", "/scratch/aifp-acme/x",
                    "project/demo/runs", None, 7):
        assert areas.holding(outside) is None, outside


def test_area_templates_fill_in_the_tenants_names() -> None:
    values = {"hpc_root": "/srv/aifactory/", "tenant": "demo", "account": "proj-42", "user": "aifp-demo"}
    assert layout.area_path(layout.DEFAULT_AREA_TEMPLATE, **values) == "/srv/aifactory/demo"
    assert layout.area_path("/project/{account}/aifp", **values) == "/project/proj-42/aifp"
    assert layout.area_path("{hpc_root}/scratch/{user}", **values) == "/srv/aifactory/scratch/aifp-demo"
    assert layout.area_template_fields("/p/{account}/{user}") == ("account", "user")


@pytest.mark.parametrize(
    ("template", "user", "match"),
    [
        ("/project/{home}", "u", "may name only"),
        ("/scratch/{user}", None, "has no identity.unix_user"),
        ("project/{tenant}", "u", "absolute path"),
        ("/project/{tenant}/", "u", "normal form"),
        ("/project//{tenant}", "u", "normal form"),
        ("/project/../{tenant}", "u", "normal form"),
    ],
)
def test_a_bad_area_template_is_refused(template: str, user: str | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        layout.area_path(template, hpc_root="/srv", tenant="demo", account="demo", user=user)
