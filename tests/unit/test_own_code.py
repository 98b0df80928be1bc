"""A tenant's own code: the lock file's rules, the code folder's checks, the code URI, fetching with
bounds, the environment's build command (run for real with this machine's Python), and the run
parameters of ``recipe: own-code``."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from aifactory.errors import InputError
from aifactory.models.own_code import (
    ENV_USED_STAMP,
    check_code,
    code_digest,
    code_uri_pattern,
    env_build_command,
    fetch_code,
    parse_code_uri,
    parse_lock,
    read_env_result,
)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "include" / "sample_data" / "own_code"))
make_code = __import__("make_code")
H = "a" * 64


def test_a_pip_compile_lock_is_read_with_its_pins_and_hash():
    lock = parse_lock(f"# comment\nnumpy==1.26.4 \\\n    --hash=sha256:{H} \\\n    --hash=sha256:{'b' * 64}\n"
                      f"tenant_features[extra]==0.1.0+local --hash=sha256:{H}  # via train.py\n\n".encode())
    assert lock.requirements == (("numpy", "1.26.4"), ("tenant_features", "0.1.0+local"))
    assert re.fullmatch(r"env-[0-9a-f]{16}", lock.env_id)
    assert parse_lock(b"").requirements == ()  # needs nothing beyond the cluster's environment


@pytest.mark.parametrize("text, says", [
    ("numpy>=1.26 --hash=sha256:" + H, "not a pinned requirement"),
    ("numpy==1.26.4", "has no --hash"),
    ("numpy==1.26.4 --hash=md5:abc", "not --hash=sha256"),
    ("-e git+https://example.com/x.git#egg=x", "not a pinned requirement"),
    ("https://evil.example/x.whl --hash=sha256:" + H, "not a pinned requirement"),
    ("--index-url https://evil.example/simple", "not a pinned requirement"),
    (f"numpy==1 --hash=sha256:{H}\nNumPy==2 --hash=sha256:{H}", "line 2: NumPy is pinned twice"),
])
def test_a_lock_that_does_not_pin_with_hashes_is_refused_naming_the_line(text, says):
    with pytest.raises(InputError, match=says):
        parse_lock(text.encode())


def test_the_code_uri_is_one_folder_of_the_tenants_code_area():
    assert parse_code_uri("s3://aifactory/demo/code/iris-softmax/", "aifactory", "demo") == (
        "demo/code/iris-softmax/", "iris-softmax")
    pattern = code_uri_pattern("aifactory", "demo")
    for bad in ("s3://aifactory/acme/code/x/", "s3://aifactory/demo/code/x", "s3://aifactory/demo/code/a/b/",
                "s3://aifactory/demo/code/../raw/", "s3://other/demo/code/x/", "s3://aifactory/demo/code/X/"):
        with pytest.raises(InputError, match="code_uri"):
            parse_code_uri(bad, "aifactory", "demo")
        assert not re.fullmatch(pattern, bad), bad  # the form's pattern says the same


@pytest.fixture
def sample(tmp_path) -> Path:
    return make_code.build(tmp_path / "src")


def test_the_sample_passes_the_checks_and_its_digest_pins_its_content(sample):
    code = check_code(sample, "s3://aifactory/demo/code/iris-softmax/")
    assert code.recipe.name == "iris-softmax" and code.wheels == ("tenant_features-0.1.0-py3-none-any.whl",)
    assert code.lock.requirements == (("tenant-features", "0.1.0"),)
    assert code.digest == code_digest(sample)
    # the same version builds the same wheel, byte for byte: the same lock, the same environment
    again = make_code.build(sample.parent.parent / "again")
    assert check_code(again, "u").env_id == code.env_id
    (sample / "train.py").write_text((sample / "train.py").read_text() + "\n# changed\n")
    with pytest.raises(InputError, match="changed since this run was validated"):
        check_code(sample, "u", expect_digest=code.digest)


@pytest.mark.parametrize("edit, says", [
    (lambda f: (f / "train.py").write_text("def main(:\n"), r"train\.py line 1: invalid syntax"),
    (lambda f: (f / "requirements.lock").write_text("torch\n"), r"requirements\.lock line 1: .* not a pinned"),
    (lambda f: (f / "requirements.lock").unlink(), r"requirements\.lock is missing"),
    (lambda f: (f / "recipe.yaml").unlink(), r"recipe\.yaml is missing"),
    (lambda f: (f / "recipe.yaml").write_text((f / "recipe.yaml").read_text() + "container: aifactory-train\n"),
     "not in a container image"),
    (lambda f: (f / "recipe.yaml").write_text((f / "recipe.yaml").read_text() + "quality_suite: text_default\n"),
     "the platform gates a tenant's data"),
    (lambda f: (f / "recipe.yaml").write_text("name: other\nhyperparameters: {type: object}\n"),
     "must equal the folder name"),
])
def test_bad_code_is_refused_naming_the_file_and_what_to_do(sample, edit, says):
    edit(sample)
    with pytest.raises(InputError, match=says):
        check_code(sample, "s3://aifactory/demo/code/iris-softmax/")


class FakeS3:
    """list_objects_v2 pages and download_file over a dict (the real client in the e2e test)."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def get_paginator(self, _name):
        objects = self.objects

        class P:
            def paginate(self, Bucket, Prefix):  # noqa: N803 - boto3's names
                yield {"Contents": [{"Key": k, "Size": len(v)} for k, v in objects.items() if k.startswith(Prefix)]}

        return P()

    def download_file(self, bucket, key, filename):
        Path(filename).write_bytes(self.objects[key])


def test_fetch_copies_the_folder_and_refuses_paths_that_are_not_plain(tmp_path, sample):
    prefix = "demo/code/iris-softmax/"
    objects = {prefix + p.relative_to(sample).as_posix(): p.read_bytes() for p in sample.rglob("*") if p.is_file()}
    got = fetch_code(FakeS3({**objects, prefix: b""}), "aifactory", prefix, tmp_path / "f")
    assert got.name == "iris-softmax" and code_digest(got) == code_digest(sample)
    for bad in ("../escape.py", ".hidden/x.py", "a b.py", "x/" * 9 + "deep.py"):
        with pytest.raises(InputError, match="plain name"):
            fetch_code(FakeS3({prefix + bad: b"x"}), "aifactory", prefix, tmp_path / "g")
    with pytest.raises(InputError, match="holds no files"):
        fetch_code(FakeS3({}), "aifactory", prefix, tmp_path / "h")


def test_the_build_command_quotes_every_path_and_needs_wheels_or_an_index(sample):
    code = check_code(sample, "u")
    cmd = env_build_command(env_dir="/srv/x/demo/envs/env-1; rm -rf ~", src_dir="/tmp/s'rc", base_python="/py",
                            lock=code.lock, with_wheels=True)
    assert cmd.startswith("sh -c '") and "rm -rf ~'" not in cmd.replace("'\"'\"'", "")
    with pytest.raises(InputError, match="ship the locked wheels"):
        env_build_command(env_dir="/e", src_dir="/s", base_python="/py", lock=code.lock, with_wheels=False)
    env_build_command(env_dir="/e", src_dir="/s", base_python="/py", lock=replace(code.lock, requirements=()),
                      with_wheels=False)  # nothing to install: no index needed


def test_the_environment_is_built_once_reused_and_sees_the_base_environment(tmp_path, sample):
    """The real command, run by sh here (on the cluster: the tenant's login): this machine's Python."""
    code = check_code(sample, "u")
    env, src = tmp_path / "envs" / code.env_id, sample
    cmd = env_build_command(env_dir=str(env), src_dir=str(src), base_python=sys.executable, lock=code.lock,
                            with_wheels=True)
    first = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    reused, marker = read_env_result(first.stdout)
    assert not reused and marker["lock_sha256"] == code.lock.sha256 and marker["requirements"] == [
        "tenant-features==0.1.0"] and marker["built_at"].endswith("Z")
    probe = "import tenant_features, jsonschema; print(tenant_features.__version__, tenant_features.__file__)"
    out = subprocess.run([str(env / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True)
    version, where = out.stdout.split()
    assert version == "0.1.0" and where.startswith(str(env))  # its own package; jsonschema from the base
    second = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert read_env_result(second.stdout) == (True, json.loads((env / ".aifp-env.json").read_text()))


def _index_of(wheels: Path, root: Path) -> str:
    """A PEP 503 index (the form of a site's PyPI mirror) of ``wheels``, as a file:// URL."""
    import hashlib
    import shutil

    for wheel in wheels.glob("*.whl"):
        project = root / wheel.name.split("-")[0].replace("_", "-")
        project.mkdir(parents=True, exist_ok=True)
        shutil.copy(wheel, project / wheel.name)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        (project / "index.html").write_text(f'<a href="{wheel.name}#sha256={digest}">{wheel.name}</a>\n')
    return f"file://{root}"


def test_code_without_wheels_builds_its_environment_from_the_clusters_package_index(tmp_path, sample):
    import shutil

    index = _index_of(sample / "wheels", tmp_path / "mirror")
    shutil.rmtree(sample / "wheels")  # the folder ships its lock file only
    code = check_code(sample, "u")
    assert code.wheels == ()
    with pytest.raises(InputError, match="no package index \\(its spec has no package_index\\)"):
        env_build_command(env_dir="/e", src_dir=str(sample), base_python=sys.executable, lock=code.lock,
                          with_wheels=False)
    env = tmp_path / "envs" / code.env_id
    cmd = env_build_command(env_dir=str(env), src_dir=str(sample), base_python=sys.executable, lock=code.lock,
                            with_wheels=False, index_url=index)
    assert "--index-url" in cmd and "--require-hashes" in cmd
    built = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    assert read_env_result(built.stdout)[1]["requirements"] == ["tenant-features==0.1.0"]
    out = subprocess.run([str(env / "bin" / "python"), "-c", "import tenant_features; print(tenant_features.__file__)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith(str(env))
    empty = _index_of(tmp_path / "none", tmp_path / "empty-mirror")  # a mirror without the package
    cmd = env_build_command(env_dir=str(tmp_path / "e2"), src_dir=str(sample), base_python=sys.executable,
                            lock=code.lock, with_wheels=False, index_url=empty)
    failed = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0 and not (tmp_path / "e2" / ".aifp-env.json").exists()


@pytest.mark.parametrize("url, ok", [("https://pypi.example.eu/simple", True), ("http://10.0.0.5:3141/root/pypi", True),
                                     ("file:///opt/site/simple", True), ("ftp://x/simple", False),
                                     ("https://pypi.example.eu/simple; id", False), ("https://a b/simple", False),
                                     ("https://pypi.example.eu", False), (7, False)])
def test_the_clusters_package_index_is_checked(url, ok):
    from aifactory.tenants import parse_cluster

    spec = {"name": "site", "ssh_conn_id": "c", "hpc_root": "/srv/x", "python": "/p", "package_index": url}
    if ok:
        assert parse_cluster(spec).package_index == url
    else:
        with pytest.raises(InputError, match="package_index .* must be an https://"):
            parse_cluster(spec)


def test_environments_no_run_used_for_the_retention_are_removed_by_the_next_build(tmp_path, sample):
    """The real command, run by sh: of the tenant's other environments, those whose last use is older
    than the retention go (the one a build holds the lock of right then stays), the others stay."""
    import os
    import time

    code = check_code(sample, "u")
    envs = tmp_path / "envs"
    old = time.time() - 40 * 86400

    def env(name: str, *, stamp: str | None = ENV_USED_STAMP, age: float = old) -> Path:
        d = envs / name
        d.mkdir(parents=True)
        (envs / f"{name}.src").mkdir()
        if stamp:
            (d / stamp).write_text("{}")
            os.utime(d / stamp, (age, age))
        os.utime(d, (age, age))
        return d

    stale, recent = env("env-00000000000000a1"), env("env-00000000000000a2", age=time.time() - 5 * 86400)
    legacy = env("env-00000000000000a3", stamp=".aifp-env.json")  # built before the stamp: its marker counts
    half = env("env-00000000000000a4", stamp=None)  # a build that died half-way, long ago
    busy = env("env-00000000000000a5")
    holder = subprocess.Popen(["flock", str(envs / "env-00000000000000a5.lock"), "sleep", "30"])
    try:
        time.sleep(0.3)  # the lock is held: a build or a reuse of it right now
        cmd = env_build_command(env_dir=str(envs / code.env_id), src_dir=str(sample), base_python=sys.executable,
                                lock=code.lock, with_wheels=True, retention_days=30)
        out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
    assert out.returncode == 0, out.stderr
    removed = sorted(line.split()[2] for line in out.stdout.splitlines() if line.startswith("aifp-env: removed"))
    assert removed == sorted([stale.name, legacy.name, half.name]), out.stdout
    assert not stale.exists() and not (envs / f"{stale.name}.src").exists() and not legacy.exists() and not half.exists()
    assert recent.is_dir() and busy.is_dir() and (envs / code.env_id / ENV_USED_STAMP).is_file()
    assert read_env_result(out.stdout)[1]["env_id"] == code.env_id  # the marker is still the last line
    with pytest.raises(InputError, match="env_retention_days .*0.* must be a whole number of days"):
        env_build_command(env_dir="/e", src_dir="/s", base_python="/py", lock=code.lock, with_wheels=True,
                          retention_days=0)


def test_a_wheel_that_does_not_match_its_hash_fails_the_build_with_pips_reason(tmp_path, sample):
    code = check_code(sample, "u")
    wheel = sample / "wheels" / code.wheels[0]
    wheel.write_bytes(wheel.read_bytes() + b"tampered")
    cmd = env_build_command(env_dir=str(tmp_path / "e"), src_dir=str(sample), base_python=sys.executable,
                            lock=code.lock, with_wheels=True)
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "do not match the hashes" in (p.stderr + p.stdout).lower().replace("don't", "do not")
    assert not (tmp_path / "e" / ".aifp-env.json").exists()  # no marker: the next build starts over


# ----------------------------------------------------------------------------- run parameters


def _params(**over):
    base = {"dataset_uri": "s3://aifactory/demo/raw/iris.csv", "recipe": "own-code",
            "code_uri": "s3://aifactory/demo/code/iris-softmax/",
            "hyperparameters": {"label_column": "species", "feature_columns": ["a", "b"]}}
    return {**base, **over}


def test_own_code_runs_are_validated_with_the_codes_own_schema(sample):
    from aifactory.tenants import RunParams, load_tenant, validate_run_params

    spec = load_tenant("demo")
    seen = []

    def own(prefix):
        seen.append(prefix)
        return check_code(sample, "s3://aifactory/demo/code/iris-softmax/")

    p = validate_run_params(_params(), spec, own_code=own)
    assert seen == ["demo/code/iris-softmax/"] and p.recipe == "iris-softmax"
    assert p.code_uri == "s3://aifactory/demo/code/iris-softmax/" and p.code_digest == code_digest(sample)
    assert p.hyperparameters["epochs"] == 60  # the code's defaults
    assert RunParams.from_xcom(p.to_xcom()) == p
    with pytest.raises(InputError, match="hyperparameters.epochs"):
        validate_run_params(_params(hyperparameters={"label_column": "s", "feature_columns": ["a"], "epochs": 0}),
                            spec, own_code=own)
    with pytest.raises(InputError, match="code_uri: recipe own-code trains the code folder"):
        validate_run_params(_params(code_uri=None), spec, own_code=own)
    with pytest.raises(InputError, match="code_uri: only recipe own-code"):
        validate_run_params(_params(recipe="tabular_classifier"), spec, own_code=own)
    with pytest.raises(InputError, match="may not run its own code"):
        validate_run_params(_params(), replace(spec, own_code=False), own_code=own)
    assert RunParams.from_xcom({k: v for k, v in p.to_xcom().items() if not k.startswith("code")}).code_uri is None


def test_a_recipe_folder_may_not_take_the_name_of_the_own_code_choice(sample):
    from aifactory.models.recipes import load_recipe

    taken = sample.parent / "own-code"
    sample.rename(taken)
    (taken / "recipe.yaml").write_text((taken / "recipe.yaml").read_text().replace("name: iris-softmax", "name: own-code"))
    with pytest.raises(InputError, match="the trigger form's choice of a tenant's own code"):
        load_recipe(taken)


def test_the_stream_of_the_sample_wheel_is_a_zip_pip_accepts():
    import zipfile

    data = make_code.build_wheel(Path(__import__("tempfile").mkdtemp()), "0.2.0").read_bytes()
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "tenant_features/__init__.py" in names and "tenant_features-0.2.0.dist-info/RECORD" in names


def test_the_clusters_retention_of_environments_is_checked():
    from aifactory.tenants import parse_cluster

    spec = {"name": "site", "ssh_conn_id": "c", "hpc_root": "/srv/x", "python": "/p"}
    assert parse_cluster(spec).env_retention_days == 30 and parse_cluster({**spec, "env_retention_days": 7}).env_retention_days == 7
    for bad in (0, 3651, "7", True, 1.5):
        with pytest.raises(InputError, match="env_retention_days .* must be a whole number of days"):
            parse_cluster({**spec, "env_retention_days": bad})
