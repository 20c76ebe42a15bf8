"""Shared fixtures: one Azurite and (for e2e tests) one Airflow stack per test session, on test
ports and in a throw-away state folder, so `make test` never touches a stack `make start` runs.

The in-process side (WasbHook, `dag.test()`) gets its own AIRFLOW_HOME and SQLite DB: a run made by
`dag.test()` must not be picked up by the live scheduler, which uses the stack's DB.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy

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

# Every test backs up into an Azurite account whose key is a fresh marker, so the secrets test can
# prove the key never shows up in a task log, an XCom or an API response. Azurite serves the
# accounts listed in AZURITE_ACCOUNTS (and then only those: the development account is listed too).
SECRET_ACCOUNT = "cbsecret"
SECRET_KEY = base64.b64encode(b"CLOUD-BACKUP-SECRET-MARKER:" + os.urandom(24)).decode()
# The Azure SDK's own retries inside one task attempt (default 3 tries after 15 s, 18 s, 24 s) are
# cut to 2 short ones for the test stack, so an Airflow retry follows within seconds and the fault
# tests see Airflow's back-off, not the SDK's. Production keeps the SDK defaults.
STACK_CONN_EXTRA = {"retry_total": 2, "initial_backoff": 1, "increment_base": 2}


def connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={SECRET_ACCOUNT};AccountKey={SECRET_KEY};"
        f"BlobEndpoint=http://{stack.HOST}:{port}/{SECRET_ACCOUNT};"
    )


def connection_uri(port: int, **extra: object) -> str:
    return json.dumps(
        {"conn_type": "wasb", "extra": {"connection_string": connection_string(port), **extra}}
    )


os.environ.update(
    {
        "AZURITE_ACCOUNTS": f"{stack.AZURITE_ACCOUNT}:{stack.AZURITE_KEY};"
                            f"{SECRET_ACCOUNT}:{SECRET_KEY}",
        # Directories the test runs may back up: pytest's and tempfile's folders live here.
        "CLOUD_BACKUP_ALLOWED_ROOTS": os.path.realpath(tempfile.gettempdir()),
        # Crash recovery on a test scale: a killed scheduler's queued work is reset within seconds
        # (default: a 30 s health threshold), a task whose process vanished is failed within 45 s.
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "15",
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "45",
        "AIRFLOW_HOME": str(_INPROC_HOME),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_INPROC_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(stack.REPO / "dags"),
        # In-process code (WasbHook in tests, dag.test()) talks to Azurite directly.
        "AIRFLOW_CONN_WASB_DEFAULT": connection_uri(_AZURITE_PORT),
    }
)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the session's folder (session fixtures, the stack included, are torn down by now).

    Azurite's blobs go in any case (the memory test alone stores 4 GiB); after a failure the rest,
    the stack's logs, stays for CI to show.
    """
    shutil.rmtree(_ROOT / "stack" / "azurite", ignore_errors=True)
    if exitstatus == 0:
        shutil.rmtree(_ROOT, ignore_errors=True)


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
def fault_proxy(azurite: str, settings: stack.Settings) -> Iterator[FaultProxy]:
    """The fault-injecting proxy in front of the session's Azurite (see tests/faultproxy.py)."""
    proxy = FaultProxy(settings.azurite_port).start()
    yield proxy
    proxy.close()


@contextlib.contextmanager
def stack_environment(proxy: FaultProxy) -> Iterator[None]:
    """While starting stack processes: their ``wasb_default`` goes through the fault proxy."""
    saved = os.environ["AIRFLOW_CONN_WASB_DEFAULT"]
    os.environ["AIRFLOW_CONN_WASB_DEFAULT"] = connection_uri(proxy.port, **STACK_CONN_EXTRA)
    try:
        yield
    finally:
        os.environ["AIRFLOW_CONN_WASB_DEFAULT"] = saved


@pytest.fixture(scope="session")
def live_stack(
    azurite: str, fault_proxy: FaultProxy, settings: stack.Settings
) -> Iterator[stack.Settings]:
    """The whole local stack (api-server, scheduler, dag-processor, triggerer) on test ports.

    Its connection ``wasb_default`` goes through ``fault_proxy`` to the session's Azurite, with
    the marker key ``SECRET_KEY``.
    """
    with stack_environment(fault_proxy):
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


@pytest.fixture(scope="session")
def start_component(live_stack: stack.Settings, fault_proxy: FaultProxy):
    """Start one stack process again (after a test killed it), with the stack's environment."""

    def start(name: str) -> bool:
        with stack_environment(fault_proxy):
            return stack.start_component(live_stack, name)

    return start


@pytest.fixture(scope="session")
def secret_key() -> str:
    """The marker account key every test connection carries (see SECRET_KEY)."""
    return SECRET_KEY
