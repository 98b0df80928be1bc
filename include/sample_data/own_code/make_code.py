"""Build the sample tenant code folder for upload: the code, its locked wheel, and requirements.lock.

``tenant_features`` stands for a startup's own library: a pure-Python wheel written here (a wheel is a
zip with a METADATA, WHEEL and RECORD file), byte for byte the same for the same version, so that
its sha256 in ``requirements.lock`` is stable and the factory reuses the environment it built.

Usage: ``python make_code.py DEST [--version 0.1.0] [--name iris-softmax]`` writes ``DEST/<name>/``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "iris-softmax"
PACKAGE = "tenant_features"
MODULE = '''"""The sample startup's feature library: column statistics and standardisation."""

__version__ = "{version}"


def column_stats(x):
    """Per-column mean and standard deviation (a zero deviation becomes 1)."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std == 0] = 1.0
    return mean.astype("float32"), std.astype("float32")


def standardise(x, mean, std):
    return ((x - mean) / std).astype("float32")
'''


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(dest: Path, version: str) -> Path:
    """Write ``tenant_features-<version>-py3-none-any.whl`` into ``dest``; return its path."""
    dist = f"{PACKAGE}-{version}.dist-info"
    files = {
        f"{PACKAGE}/__init__.py": MODULE.format(version=version).encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: tenant-features\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: make_code.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    files[f"{dist}/RECORD"] = (record + f"{dist}/RECORD,,\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{PACKAGE}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))  # fixed: same bytes, same hash
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return wheel


def build(dest: Path, version: str = "0.1.0", name: str = "iris-softmax") -> Path:
    """``dest/<name>/``: the sample code (recipe.yaml renamed to ``name``), wheels/ and requirements.lock."""
    folder = Path(dest) / name
    shutil.copytree(SOURCE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    recipe = folder / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("name: iris-softmax", f"name: {name}"))
    wheel = build_wheel(folder / "wheels", version)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (folder / "requirements.lock").write_text(
        "# the sample's locked requirements (pip-compile --generate-hashes writes this format)\n"
        f"tenant-features=={version} \\\n    --hash=sha256:{digest}\n")
    return folder


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--version", default="0.1.0")
    ap.add_argument("--name", default="iris-softmax")
    args = ap.parse_args()
    print(build(args.dest, args.version, args.name))
