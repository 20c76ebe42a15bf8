"""Shared fixtures: one Azurite and (for e2e tests) one Airflow stack per test session, on test
ports and in a throw-away state folder, so `make test` never touches a stack `make start` runs.

The in-process side (WasbHook, `dag.test()`) gets its own AIRFLOW_HOME and SQLite DB: a run made by
`dag.test()` must not be picked up by the live scheduler, which uses the stack's DB.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before anything imports airflow: its configuration is read once, at import.
_ROOT = Path(tempfile.mkdtemp(prefix="cloud-backup-tests-"))
_API_PORT = int(os.environ.get("CLOUD_BACKUP_TEST_API_PORT", "18080"))
_AZURITE_PORT = int(os.environ.get("CLOUD_BACKUP_TEST_AZURITE_PORT", "11000"))
os.environ.update(
    {
        "CLOUD_BACKUP_STATE": str(_ROOT / "stack"),
        "CLOUD_BACKUP_API_PORT": str(_API_PORT),
        "CLOUD_BACKUP_AZURITE_PORT": str(_AZURITE_PORT),
        # Fast retries, so fault tests see Airflow's back-off within seconds.
        "CLOUD_BACKUP_RETRY_DELAY": "2",
    }
)
from cloud_backup.local import stack  # noqa: E402

_SETTINGS = stack.Settings.from_env()
_INPROC_HOME = _ROOT / "inproc-airflow"
os.environ.update(
    {
        "AIRFLOW_HOME": str(_INPROC_HOME),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_INPROC_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(stack.REPO / "dags"),
        "AIRFLOW_CONN_WASB_DEFAULT": stack.azurite_connection_uri(_AZURITE_PORT),
    }
)


@pytest.fixture(scope="session")
def settings() -> stack.Settings:
    return _SETTINGS


@pytest.fixture(scope="session")
def azurite(settings: stack.Settings) -> Iterator[str]:
    """A live Azurite for the session; yields its connection string."""
    stack.start_component(settings, "azurite")
    stack.wait_for_port(settings.azurite_port, timeout=30)
    yield stack.azurite_connection_string(settings.azurite_port)
    stack.stop(settings)


@pytest.fixture
def container(azurite: str):
    """A fresh, empty container for one test (a ContainerClient built through WasbHook)."""
    from cloud_backup.store import container_client, ensure_container

    client = container_client("wasb_default", f"t-{uuid.uuid4().hex[:20]}")
    ensure_container(client)
    yield client
    client.delete_container()


@pytest.fixture(scope="session")
def inproc_db() -> Path:
    """A migrated SQLite metadata DB for in-process `dag.test()` runs."""
    _INPROC_HOME.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True, capture_output=True, env=dict(os.environ),
    )
    return _INPROC_HOME


@pytest.fixture(scope="session")
def live_stack(azurite: str, settings: stack.Settings) -> Iterator[stack.Settings]:
    """The whole local stack (api-server, scheduler, dag-processor, triggerer) on test ports."""
    stack.start(settings, timeout=180)
    yield settings
    # Leave the component logs where CI prints them on failure.
    print(f"\nstack logs: {settings.log_dir}")


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory an unprivileged user can reach (pytest's tmp_path is root-only)."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix="cloud-backup-open-"))
    path.chmod(0o755)
    yield path
    for sub in path.rglob("*"):
        if sub.is_dir() and not sub.is_symlink():
            sub.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)
