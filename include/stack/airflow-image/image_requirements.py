"""The requirements of docker-compose.yaml's Airflow image, derived from requirements.txt.

requirements.txt is the one list of pinned packages (the native stack installs all of it into
.venv). The image needs all of it except what only the local stack and the tests use; that short
list, with the reason for each, is :data:`NOT_IN_IMAGE`. Everything else goes into the image, so a
package added to requirements.txt for a task (export's ONNX Runtime, a provider) is in the image
without a second edit. tests/unit/test_compose.py checks that nothing the DAG file, the plugin, the
operators or the code they import needs is left out.

Run at image build time (include/stack/airflow-image/Dockerfile) with the image's own Python:
``python image_requirements.py requirements.txt > requirements-image.txt``. Standard library only.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: requirements.txt entries no Airflow component of the image imports, and why
NOT_IN_IMAGE: dict[str, str] = {
    "moto": "the local stack's S3 endpoint (compose runs MinIO)",
    "apache-airflow-client": "REST client of the demo, the end-to-end tests and the benches (outside Airflow)",
    "ruff": "lint (make lint)",
    "pytest": "tests",
    "pytest-timeout": "tests",
    "playwright": "the browser test",
}

#: what the compose topology itself needs from requirements.txt: the CeleryExecutor (workers and
#: the scheduler's executor) and the Postgres metadata database
EXECUTOR_REQUIREMENTS = ("apache-airflow-providers-celery", "apache-airflow-providers-postgres")

_NAME_RE = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str | None:
    """The canonical name a requirements line installs; None for comments, blanks and options."""
    text = line.split("#", 1)[0].strip()
    if not text or text.startswith("-"):
        return None
    m = _NAME_RE.match(text)
    return canonical(m["name"]) if m else None


def image_requirements(requirements_txt: str) -> str:
    """requirements.txt less :data:`NOT_IN_IMAGE`: options (``-c include/constraints.txt``) and
    comments are kept, so the image installs the same pins under the same constraints."""
    names = {n for n in map(requirement_name, requirements_txt.splitlines()) if n}
    stale = sorted(set(NOT_IN_IMAGE) - names)
    if stale:
        raise SystemExit(f"image_requirements.py: NOT_IN_IMAGE names {stale}, which requirements.txt no "
                         "longer lists: remove them from NOT_IN_IMAGE")
    missing = sorted(set(EXECUTOR_REQUIREMENTS) - names)
    if missing:
        raise SystemExit(f"requirements.txt lacks {missing}, which the compose topology (CeleryExecutor, "
                         "Postgres) needs in the image: add them to requirements.txt and include/constraints.txt")
    kept = [line for line in requirements_txt.splitlines() if requirement_name(line) not in NOT_IN_IMAGE]
    return "\n".join(kept) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: image_requirements.py REQUIREMENTS_TXT  (writes the image's requirements to stdout)",
              file=sys.stderr)
        return 2
    sys.stdout.write(image_requirements(Path(argv[1]).read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
