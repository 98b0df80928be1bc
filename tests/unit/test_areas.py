"""Each tenant's project and scratch areas (the cluster spec's ``areas:`` templates, layout.TenantAreas):
how they are read, and the specs refused because an area would be shared, nested or the platform's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from aifactory import layout
from aifactory.errors import InputError
from aifactory.tenants import load_cluster, load_tenant, parse_cluster, parse_tenant
from aifactory.tenants.spec import check_areas, load_tenant_specs, overlapping_areas

SITE = {"name": "site", "ssh_conn_id": "c", "hpc_root": "/srv/x", "python": "/srv/x/venv/bin/python"}
DEMO = load_tenant("demo")


def _site(**over) -> dict:
    return {**SITE, **over}


def _clashes(specs, clusters) -> dict[str, str]:
    """:func:`overlapping_areas` of ``specs``, each on its cluster of ``clusters`` (by name)."""
    return overlapping_areas((s.tenant, s.cluster, s.areas(clusters[s.cluster])) for s in specs)


def test_a_cluster_without_templates_keeps_one_area_per_tenant_under_the_root():
    cluster = parse_cluster(SITE)
    assert cluster.areas == layout.AreaTemplates(layout.DEFAULT_AREA_TEMPLATE, layout.DEFAULT_AREA_TEMPLATE)
    assert DEMO.areas(cluster) == layout.TenantAreas("/srv/x/demo", "/srv/x/demo")


def test_templates_name_the_tenants_account_and_user():
    cluster = parse_cluster(_site(areas={"project": "/project/{account}/aifp", "scratch": "/scratch/{user}"}))
    assert DEMO.areas(cluster) == layout.TenantAreas(f"/project/{DEMO.slurm_account}/aifp",
                                                     f"/scratch/{DEMO.identity.unix_user}")
    only_scratch = parse_cluster(_site(areas={"scratch": "{hpc_root}/scratch/{tenant}"}))
    assert DEMO.areas(only_scratch) == layout.TenantAreas("/srv/x/demo", "/srv/x/scratch/demo")


def test_the_local_cluster_gives_each_tenant_a_project_and_a_scratch_area_of_its_own():
    cluster = load_cluster("local")
    areas = {t: load_tenant(t).areas(cluster) for t in ("demo", "acme")}
    assert areas["demo"] == layout.TenantAreas("/srv/aifactory/project/demo", "/srv/aifactory/scratch/aifp-demo")
    roots = [root for a in areas.values() for root in a.roots]
    assert len(roots) == 4 and not any(layout.path_inside(a, b) for a in roots for b in roots)
    assert _clashes([load_tenant("demo"), load_tenant("acme")], {"local": cluster}) == {}


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"areas": {"project": "/project/shared"}}, "names none of {tenant}, {account}, {user}"),
        ({"areas": {"project": "{hpc_root}/p"}}, "names none of"),
        ({"areas": {"scratch": "/scratch/{home}"}}, "may name only"),
        ({"areas": {"scratch": "scratch/{user}"}}, "absolute path"),
        ({"areas": {"scratch": "/scratch/../{user}"}}, "normal form"),
        ({"areas": {"scratch": "/scratch/{user}/"}}, "normal form"),
        ({"areas": {"scratch": "/scratch/{user} x"}}, "not an absolute path made of"),
        ({"areas": {"scratch": 7}}, "must be a path template"),
        ({"areas": {"work": "/w/{tenant}"}}, r"unknown key\(s\) 'work'"),
        ({"areas": "/p/{tenant}"}, "areas must be a mapping"),
        ({"hpc_root": "srv/x"}, "hpc_root"),
        ({"hpc_root": "/srv/../x"}, "contains '..'"),
        ({"hpc_root": "/srv/./x"}, "normal form"),
    ],
)
def test_a_bad_template_or_root_is_refused_with_the_key(over, message):
    with pytest.raises(InputError, match=message):
        parse_cluster(_site(**over))


def test_a_template_of_the_user_needs_a_tenant_with_a_login():
    cluster = parse_cluster(_site(areas={"scratch": "/scratch/{user}"}))
    with pytest.raises(InputError, match="has no identity.unix_user"):
        replace(DEMO, identity=None).areas(cluster)


def test_project_and_scratch_are_one_directory_or_two_apart():
    nested = parse_cluster(_site(areas={"project": "/p/{tenant}", "scratch": "/p/{tenant}/scratch"}))
    with pytest.raises(InputError, match="nest"):
        check_areas(DEMO, nested)
    check_areas(DEMO, parse_cluster(_site(areas={"project": "/p/{tenant}", "scratch": "/p/{tenant}"})))


@pytest.mark.parametrize("tenant", ["venv", "sw"])
def test_no_area_may_hold_or_lie_inside_what_the_platform_installs(tenant):
    cluster = parse_cluster(_site(environment={"module_path": ["/srv/x/sw/modules"]}))
    with pytest.raises(InputError, match="overlap; the tenant would own the platform's files"):
        check_areas(replace(DEMO, tenant=tenant), cluster)  # /srv/x/venv holds the python, /srv/x/sw the modules
    check_areas(replace(DEMO, tenant="other"), cluster)


def test_tenants_whose_areas_meet_are_both_named():
    cluster = parse_cluster(_site(areas={"project": "/project/{account}", "scratch": "/scratch/{tenant}"}))
    a = replace(DEMO, tenant="alpha", slurm_account="shared")
    b = replace(DEMO, tenant="beta", slurm_account="shared")  # the same account: the same project area
    c = replace(DEMO, tenant="gamma", slurm_account="gamma")
    clashes = _clashes([a, b, c], {"site": cluster, DEMO.cluster: cluster})
    assert set(clashes) == {"alpha", "beta"} and "/project/shared" in clashes["alpha"] and "'beta'" in clashes["alpha"]


def test_an_area_inside_another_tenants_is_a_clash_and_a_name_that_only_starts_alike_is_not():
    cluster = parse_cluster(_site(areas={"project": "/p/{account}", "scratch": "/s/{tenant}"}))
    outer = replace(DEMO, tenant="alpha", slurm_account="team")
    inner = replace(DEMO, tenant="beta", slurm_account="team/beta".replace("/", "-"))  # /p/team-beta: apart
    assert _clashes([outer, inner], {DEMO.cluster: cluster}) == {}
    deep = parse_cluster(_site(areas={"project": "/p/{tenant}", "scratch": "/p/alpha/{user}"}))
    clashes = _clashes([outer, replace(DEMO, tenant="beta")], {DEMO.cluster: deep})
    assert "beta" in clashes and "alpha" in clashes  # beta's scratch /p/alpha/aifp-demo is inside alpha's project


def test_the_same_path_on_two_clusters_is_no_clash():
    cluster = parse_cluster(_site(areas={"project": "/p/{account}"}))
    a = replace(DEMO, tenant="alpha", slurm_account="shared", cluster="one")
    b = replace(DEMO, tenant="beta", slurm_account="shared", cluster="two")
    assert _clashes([a, b], {"one": cluster, "two": replace(cluster, name="two")}) == {}


def test_spec_files_whose_areas_meet_are_refused_each_naming_the_other(tmp_path: Path):
    demo = yaml.safe_load((layout.TENANTS_DIR / "demo.yaml").read_text())
    for tenant in ("alpha", "beta"):  # both charge the demo account: one project area on the local cluster
        spec = {**demo, "tenant": tenant, "airflow_users": [tenant], "feeds": [],
                "identity": {**demo["identity"], "unix_user": f"aifp-{tenant}", "ssh_conn_id": f"c_{tenant}",
                             "s3_conn_id": f"s3_{tenant}"}}
        (tmp_path / f"{tenant}.yaml").write_text(yaml.safe_dump(spec))
    loaded = load_tenant_specs(tmp_path)
    assert loaded.specs == ()
    assert [e.path.name for e in loaded.errors] == ["alpha.yaml", "beta.yaml"]
    assert "overlaps tenant 'beta'" in loaded.errors[0].message and "/srv/aifactory/project/demo" in loaded.errors[0].message
    assert "overlaps tenant 'alpha'" in loaded.errors[1].message


def test_a_tenant_spec_may_place_its_own_areas_where_the_site_put_its_project():
    cluster = parse_cluster(_site(areas={"project": "/project/{account}", "scratch": "/scratch/{user}"}))
    data = yaml.safe_load((layout.TENANTS_DIR / "demo.yaml").read_text())
    spec = parse_tenant({**data, "areas": {"project": "/project/project_465000123/aifactory"}}, "demo.yaml")
    assert spec.areas(cluster) == layout.TenantAreas("/project/project_465000123/aifactory",
                                                     f"/scratch/{DEMO.identity.unix_user}")
    other = replace(spec, tenant="other", identity=replace(spec.identity, unix_user="aifp-other"))
    assert set(_clashes([spec, other], {DEMO.cluster: cluster})) == {"demo", "other"}  # one fixed path
    for bad, message in (({"project": "project/x"}, "absolute path"), ({"home": "/h"}, r"unknown key\(s\) 'home'"),
                         ({"scratch": "/s/{home}"}, "may name only")):
        with pytest.raises(InputError, match=f"demo.yaml: areas.*{message}"):
            parse_tenant({**data, "areas": bad}, "demo.yaml")
