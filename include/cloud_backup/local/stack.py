"""The local stack behind ``make start``/``make backup``: Azurite plus Airflow's four processes.

Everything lives in one state folder (``.state/`` by default, ``CLOUD_BACKUP_STATE`` to move it):
the SQLite metadata DB, logs, PID files and Azurite's blobs. Every server binds 127.0.0.1.
``airflow standalone`` is not used: it opens log servers on 0.0.0.0 (FACTS.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
HOST = "127.0.0.1"
# The development account's well-known key (documented by Microsoft, checked against Azurite's
# own constants.js by the tests). It is a public constant, still never printed or logged.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass(frozen=True)
class Settings:
    """Where the stack lives and listens; every field can be set from the environment."""

    state: Path
    api_port: int
    azurite_port: int
    parallelism: int

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            state=Path(os.environ.get("CLOUD_BACKUP_STATE", REPO / ".state")).resolve(),
            api_port=int(os.environ.get("CLOUD_BACKUP_API_PORT", "8080")),
            azurite_port=int(os.environ.get("CLOUD_BACKUP_AZURITE_PORT", "10000")),
            parallelism=int(os.environ.get("CLOUD_BACKUP_EXECUTOR_PARALLELISM", "8")),
        )

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def airflow_home(self) -> Path:
        return self.state / "airflow"

    @property
    def log_dir(self) -> Path:
        return self.state / "logs"

    def pid_file(self, name: str) -> Path:
        return self.state / "run" / f"{name}.pid"


def azurite_connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://{HOST}:{port}/{AZURITE_ACCOUNT};"
    )


def azurite_connection_uri(port: int) -> str:
    """``wasb_default`` as an Airflow connection in JSON, for ``AIRFLOW_CONN_WASB_DEFAULT``."""
    return json.dumps(
        {"conn_type": "wasb", "extra": {"connection_string": azurite_connection_string(port)}}
    )


def _secret(settings: Settings, name: str) -> str:
    """A random secret kept in the state folder, so restarts keep sessions and tokens valid."""
    path = settings.state / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(secrets.token_hex(64))
        path.chmod(0o600)
    return path.read_text().strip()


def airflow_env(settings: Settings) -> dict[str, str]:
    """The environment every Airflow process of the local stack runs with."""
    env = dict(os.environ)
    home = settings.airflow_home
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(settings.parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.api_url}/execution/",
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(settings.api_port),
            "AIRFLOW__API__BASE_URL": settings.api_url,
            "AIRFLOW__API__SECRET_KEY": _secret(settings, "api_secret_key"),
            "AIRFLOW__API_AUTH__JWT_SECRET": _secret(settings, "jwt_secret"),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.log_dir / "tasks"),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            # Load plugins/ at startup: the warm-imports plugin must be in the scheduler before it
            # forks its workers (see plugins/cloud_backup_warm_imports.py).
            "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO / "include"), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
    )
    # The stack's own DB, whatever an ambient AIRFLOW__DATABASE__SQL_ALCHEMY_CONN says:
    # CLOUD_BACKUP_SQL_ALCHEMY_CONN moves it (e.g. to PostgreSQL); SQLite is the embedded default.
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = os.environ.get(
        "CLOUD_BACKUP_SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}"
    )
    # The scheduler sleeps this long whenever a loop found nothing to do, and a run's every step
    # (queued -> running, a task done -> the next one queued, the last one -> success) waits for
    # the next loop: Airflow's 1 s default adds seconds to a short run. The price: an idle
    # scheduler used 13% of a core at 0.2 s (2026-12-04, SQLite with 10 runs in it; py-spy: mostly
    # SQLAlchemy building each loop's queries). Set in the environment to override.
    env.setdefault("AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", "0.2")
    # A user's own wasb_default (real Azure) wins; otherwise the embedded Azurite.
    env.setdefault("AIRFLOW_CONN_WASB_DEFAULT", azurite_connection_uri(settings.azurite_port))
    return env


def _bin(name: str) -> str:
    """An executable of the running interpreter's venv (``airflow``)."""
    return str(Path(sys.executable).parent / name)


def components(settings: Settings) -> dict[str, list[str]]:
    """Each process of the stack and the command that runs it."""
    return {
        "azurite": [
            "node",
            str(REPO / "node_modules/azurite/dist/src/blob/main.js"),
            "--blobHost", HOST,
            "--blobPort", str(settings.azurite_port),
            "--location", str(settings.state / "azurite"),
            "--disableTelemetry",
            # azure-storage-blob 12.31 sends an API version Azurite 3.35 does not know (FACTS.md).
            "--skipApiVersionCheck",
        ],
        "api-server": [_bin("airflow"), "api-server", "--host", HOST,
                       "--port", str(settings.api_port)],
        "scheduler": [_bin("airflow"), "scheduler", "--skip-serve-logs"],
        "dag-processor": [_bin("airflow"), "dag-processor"],
        "triggerer": [_bin("airflow"), "triggerer", "--skip-serve-logs"],
    }


def pid_of(settings: Settings, name: str) -> int | None:
    """The PID of a running component, or None (a stale PID file is removed)."""
    path = settings.pid_file(name)
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError):
        return None
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return None
    # A zombie child of ours (killed, not yet reaped) counts as dead.
    try:
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return None
    except (FileNotFoundError, IndexError):
        return None
    return pid


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _port_open(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:.0f}s")
        time.sleep(0.2)


def start_component(settings: Settings, name: str) -> bool:
    """Start ``name`` unless it runs; return True if it was started."""
    if pid_of(settings, name):
        return False
    env = airflow_env(settings)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    settings.pid_file(name).parent.mkdir(parents=True, exist_ok=True)
    (settings.state / "azurite").mkdir(parents=True, exist_ok=True)
    with open(settings.log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            components(settings)[name],
            env=env,
            cwd=settings.state,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends its children too
        )
    settings.pid_file(name).write_text(str(proc.pid))
    return True


def migrate(settings: Settings) -> None:
    """Create or upgrade the metadata DB; skipped when this Airflow version already did it."""
    import airflow

    marker = settings.airflow_home / f".migrated-{airflow.__version__}"
    if marker.exists():
        return
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.log_dir / "db-migrate.log", "ab") as log:
        subprocess.run(
            [_bin("airflow"), "db", "migrate"],
            env=airflow_env(settings), stdout=log, stderr=subprocess.STDOUT, check=True,
        )
    marker.touch()


def health(settings: Settings) -> dict[str, str]:
    """Each component's state as Airflow's health endpoint and the process table see it."""
    import requests

    states = {}
    for name in components(settings):
        states[name] = "running" if pid_of(settings, name) else "stopped"
    if states["azurite"] == "running" and not _port_open(settings.azurite_port):
        states["azurite"] = "starting"
    try:
        report = requests.get(f"{settings.api_url}/api/v2/monitor/health", timeout=3).json()
    except (requests.RequestException, ValueError):
        if states["api-server"] == "running":
            states["api-server"] = "starting"
        return states
    for name, key in (("scheduler", "scheduler"), ("dag-processor", "dag_processor"),
                      ("triggerer", "triggerer")):
        status = (report.get(key) or {}).get("status")
        if states[name] == "running" and status != "healthy":
            states[name] = "starting"
    return states


def start(settings: Settings, timeout: float = 120) -> dict[str, str]:
    """Start whatever part is not running and wait until all are healthy. Safe to repeat."""
    if not pid_of(settings, "azurite") and _port_open(settings.azurite_port):
        raise RuntimeError(
            f"port {settings.azurite_port} is taken by a process this stack did not start; "
            "stop it or set CLOUD_BACKUP_AZURITE_PORT"
        )
    if not pid_of(settings, "api-server") and _port_open(settings.api_port):
        raise RuntimeError(
            f"port {settings.api_port} is taken by a process this stack did not start; "
            "stop it or set CLOUD_BACKUP_API_PORT"
        )
    start_component(settings, "azurite")
    migrate(settings)
    for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
        start_component(settings, name)
    deadline = time.monotonic() + timeout
    while True:
        states = health(settings)
        if all(state == "running" for state in states.values()):
            return states
        dead = [name for name, state in states.items() if state == "stopped"]
        if dead or time.monotonic() > deadline:
            tails = {name: tail(settings.log_dir / f"{name}.log") for name in dead or states}
            raise RuntimeError(
                f"the stack did not come up: {states}\n"
                + "\n".join(f"--- {n}.log ---\n{t}" for n, t in tails.items())
            )
        time.sleep(1)


def stop(
    settings: Settings, timeout: float = 30, names: Iterable[str] | None = None
) -> list[str]:
    """Stop every running component, or those in ``names`` (SIGTERM to all, then SIGKILL);
    return the names stopped."""
    running = {name: pid for name in (names or components(settings))
               if (pid := pid_of(settings, name))}
    for pid in running.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(pid_of(settings, name) for name in running) and time.monotonic() < deadline:
        time.sleep(0.2)
    for name, pid in running.items():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        settings.pid_file(name).unlink(missing_ok=True)
    return list(running)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
