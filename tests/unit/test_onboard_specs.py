"""Tenant specs are loaded file by file: a broken one fails its tenant alone (DAG files, onboarding, doctor)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifactory.errors import InputError
from aifactory.layout import TENANTS_DIR
from aifactory.tenants import load_tenant, load_tenant_specs, load_tenants


@pytest.fixture
def specs_dir(tmp_path: Path) -> Path:
    for name in ("demo", "acme"):
        (tmp_path / f"{name}.yaml").write_text((TENANTS_DIR / f"{name}.yaml").read_text())
    return tmp_path


def test_good_specs_load_beside_broken_ones(specs_dir: Path):
    (specs_dir / "bad-yaml.yaml").write_text("tenant: x\nbucket: [unclosed\n")
    (specs_dir / "list.yaml").write_text("- tenant\n")
    (specs_dir / "shape.yaml").write_text((specs_dir / "demo.yaml").read_text()
                                          .replace("tenant: demo", "tenant: shape")
                                          .replace("cluster: local", "cluster: nowhere"))
    loaded = load_tenant_specs(specs_dir)
    assert [s.tenant for s in loaded.specs] == ["acme", "demo"]
    by_file = {e.path.name: e.message for e in loaded.errors}
    assert set(by_file) == {"bad-yaml.yaml", "list.yaml", "shape.yaml"}
    assert "cannot be read as YAML" in by_file["bad-yaml.yaml"]
    assert "must be a mapping" in by_file["list.yaml"]
    assert "cluster" in by_file["shape.yaml"] and "nowhere" in by_file["shape.yaml"]
    for path, message in ((e.path, e.message) for e in loaded.errors):
        assert str(path) in message  # every message names its file


def test_a_tenant_claimed_twice_fails_both_files(specs_dir: Path):
    (specs_dir / "demo2.yaml").write_text((specs_dir / "demo.yaml").read_text())
    loaded = load_tenant_specs(specs_dir)
    assert [s.tenant for s in loaded.specs] == ["acme"]
    assert sorted(e.path.name for e in loaded.errors) == ["demo.yaml", "demo2.yaml"]
    assert all("also defined in" in e.message for e in loaded.errors)


def test_strict_loader_and_single_tenant_lookup(specs_dir: Path):
    (specs_dir / "acme.yaml").write_text("tenant: acme\n")
    with pytest.raises(InputError, match="acme.yaml: required key"):
        load_tenants(specs_dir)
    assert load_tenant("demo", specs_dir).tenant == "demo"  # another tenant's broken file does not stop it
    with pytest.raises(InputError, match="acme.yaml: required key"):
        load_tenant("acme", specs_dir)
    with pytest.raises(InputError, match=r"unknown tenant .*1 broken spec file\(s\): acme.yaml"):
        load_tenant("nobody", specs_dir)
