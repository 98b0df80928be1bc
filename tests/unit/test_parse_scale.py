"""The DAG files at scale: the spec folder can be pointed elsewhere, 1000 tenant specs make 1000
pipeline DAGs, and the caches that make that parse fast never serve a stale file.

Timings belong to ``bench/parse.py``; these tests check behaviour only.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import shutil
from pathlib import Path

import pytest

from aifactory import layout
from aifactory.errors import InputError
from aifactory.models.recipes import DEFAULT_RECIPES_ROOT, load_recipe, load_recipes
from aifactory.tenants import load_cluster, load_tenant, load_tenant_specs

REPO = Path(__file__).resolve().parents[2]


def _bench():
    """bench/parse.py (not a package): its spec generator is the one the bench times."""
    spec = importlib.util.spec_from_file_location("bench_parse", REPO / "bench" / "parse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _touch_later(path: Path) -> None:
    """Move the file's mtime on, as an edit a second later would (the cache keys on it)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_the_spec_folder_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(layout.TENANTS_DIR_ENV, raising=False)
    assert layout.tenants_dir() == layout.TENANTS_DIR
    assert {s.tenant for s in load_tenant_specs().specs} >= {"demo"}

    names = _bench().write_specs(tmp_path, 3)
    monkeypatch.setenv(layout.TENANTS_DIR_ENV, str(tmp_path))
    assert layout.tenants_dir() == tmp_path
    assert [s.tenant for s in load_tenant_specs().specs] == names
    assert load_tenant(names[1]).identity.unix_user == f"aifp-{names[1]}"
    with pytest.raises(InputError, match=str(tmp_path)):
        load_tenant("demo")  # the default folder is not read any more


def test_a_thousand_specs_make_a_thousand_pipeline_dags(tmp_path, monkeypatch):
    names = _bench().write_specs(tmp_path, 1000)
    monkeypatch.setenv(layout.TENANTS_DIR_ENV, str(tmp_path))
    module = runpy.run_path(str(REPO / "dags" / "factory_pipelines.py"))
    dag_ids = sorted(v.dag_id for k, v in module.items() if k.startswith("factory_") and hasattr(v, "dag_id"))
    assert dag_ids == sorted(layout.pipeline_dag_id(n) for n in names)
    last = module[layout.pipeline_dag_id(names[-1])]
    assert last.params.get_param("dataset_uri").value.startswith(f"s3://aifp-bench-{names[-1]}/{names[-1]}/raw/")
    assert last.get_task("train").cluster == "local"


def test_an_edited_cluster_spec_is_read_again(tmp_path):
    clusters = tmp_path / "clusters"
    shutil.copytree(layout.CLUSTERS_DIR, clusters)
    path = clusters / "local.yaml"
    first = load_cluster("local", directory=clusters)
    assert load_cluster("local", directory=clusters) is first  # the same version: read once
    path.write_text(path.read_text().replace(f"hpc_root: {first.hpc_root}", "hpc_root: /srv/elsewhere"))
    _touch_later(path)
    assert load_cluster("local", directory=clusters).hpc_root == "/srv/elsewhere"
    path.write_text("name: local\n")  # broken now: fails at once, and at every read
    _touch_later(path)
    for _ in range(2):
        with pytest.raises(InputError, match="required key 'ssh_conn_id'"):
            load_cluster("local", directory=clusters)


def test_an_edited_or_broken_recipe_is_read_again(tmp_path):
    root = tmp_path / "recipes"
    shutil.copytree(DEFAULT_RECIPES_ROOT / "tabular_classifier", root / "tabular_classifier")
    folder = root / "tabular_classifier"
    first = load_recipe(folder)
    again = load_recipe(folder)
    assert again == first and again is not first  # each caller its own copy: a mutation stays local
    again.schema["properties"].clear()
    assert load_recipe(folder).schema["properties"] == first.schema["properties"]

    spec = folder / "recipe.yaml"
    spec.write_text(spec.read_text().replace("  time_limit_minutes: 10\n", "  time_limit_minutes: 7\n", 1))
    _touch_later(spec)
    assert (first.resources["time_limit_minutes"], load_recipe(folder).resources["time_limit_minutes"]) == (10, 7)

    entrypoint = folder / first.entrypoint
    code = entrypoint.read_text()
    entrypoint.unlink()  # the folder changes: the check runs again
    with pytest.raises(InputError, match="entrypoint file"):
        load_recipe(folder)
    entrypoint.write_text(code)

    new = root / "tiny"
    new.mkdir()
    (new / "train.py").write_text("print('hello')\n")
    (new / "recipe.yaml").write_text("name: tiny\nhyperparameters: {type: object}\n")
    assert sorted(load_recipes(root)) == ["tabular_classifier", "tiny"]  # a new folder is listed at once
