"""docker-compose.yaml is checked statically (no Docker engine runs here): it must describe the same
services the local stack runs natively, wired the same way."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
AIRFLOW_SERVICES = ["airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker"]


def test_services_cover_the_stack():
    services = COMPOSE["services"]
    for name in ["postgres", "redis", "minio", "minio-buckets", "airflow-init", *AIRFLOW_SERVICES]:
        assert name in services, f"{name} missing from docker-compose.yaml"


def test_airflow_services_share_config_connections_and_code():
    for name in AIRFLOW_SERVICES:
        svc = COMPOSE["services"][name]
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert "AIRFLOW_CONN_AIFACTORY_S3" in env and "AIRFLOW_CONN_AIFACTORY_HPC_LOCAL" in env
        assert "http://minio:9000" in env["AIRFLOW_CONN_AIFACTORY_S3"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"] if v.startswith("./")}
        for target in ["/opt/airflow/dags", "/opt/airflow/plugins", "/opt/aifactory/operators",
                       "/opt/aifactory/include"]:
            assert target in mounts, f"{name} does not mount {target}"
            assert (REPO / mounts[target]).exists(), f"{mounts[target]} mounted by {name} is not in the repo"
        # the triggerer imports triggers by classpath: operators/ must be importable there too
        assert "/opt/aifactory" in env["PYTHONPATH"].split(":")
        deps = svc["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully"


def test_ports_bind_loopback_and_stateful_services_have_healthchecks():
    for name, svc in COMPOSE["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    for name in ["postgres", "redis", "minio", "airflow-api-server"]:
        assert "healthcheck" in COMPOSE["services"][name], f"{name} has no healthcheck"


def test_images_are_pinned():
    for name, svc in COMPOSE["services"].items():
        image = svc.get("image", "")
        assert image and not image.endswith(":latest") and ":" in image.replace("${AIRFLOW_IMAGE:-", ""), name
