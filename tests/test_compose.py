"""docker-compose.yaml follows the official Airflow 3 layout and wires in Azurite and the source."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]
AIRFLOW = [name for name in SERVICES if name.startswith("airflow-")]


def test_official_services_plus_azurite() -> None:
    assert {"postgres", "redis", "azurite", "airflow-init", "airflow-apiserver",
            "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
            "airflow-worker"} <= set(SERVICES)
    for name in ("postgres", "redis", "azurite"):
        assert "healthcheck" in SERVICES[name], name


def test_celery_on_postgres_and_redis() -> None:
    env = SERVICES["airflow-worker"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert "blobendpoint=http://azurite:10000" in env["AIRFLOW_CONN_WASB_DEFAULT"].lower()


def test_include_mounted_and_on_pythonpath_source_read_only_everywhere() -> None:
    for name in AIRFLOW:
        service = SERVICES[name]
        assert service["environment"]["PYTHONPATH"] == "/opt/airflow/include"
        volumes = service["volumes"]
        assert any(v.endswith(":/opt/airflow/include") for v in volumes), name
        source = [v for v in volumes if "BACKUP_SOURCE" in v]
        assert source and source[0].endswith(":ro"), name


def test_published_ports_bind_loopback_only() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
