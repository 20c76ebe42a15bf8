"""A small client of Airflow's REST API v2: the calls ``make backup`` and the tests make.

The same calls, as curl lines, are in README.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

TERMINAL = {"success", "failed"}


class ApiError(RuntimeError):
    """The API refused a call; the message carries its status and detail."""


def admin_password(airflow_home: Path, user: str = "admin") -> str:
    """The password SimpleAuthManager generated for ``user`` at first start."""
    path = airflow_home / "simple_auth_manager_passwords.json.generated"
    return json.loads(path.read_text())[user]


class AirflowApi:
    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        token = self._check(
            self.session.post(
                f"{self.base_url}/auth/token",
                json={"username": username, "password": password},
                timeout=30,
            )
        )["access_token"]
        self.session.headers["Authorization"] = f"Bearer {token}"

    @staticmethod
    def _check(response: requests.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(f"HTTP {response.status_code}: {detail}")
        return response.json() if response.content else None

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", 60)
        for attempt in range(4):
            response = self.session.request(method, f"{self.base_url}/api/v2{path}", **kwargs)
            # On SQLite, a write can meet "database is locked" (e.g. the audit-log insert that runs
            # before the endpoint, right after the stack starts): the API answers 500 "Database
            # error" and rolls the request back, so sending it again is safe.
            if response.status_code != 500 or "Database error" not in response.text or attempt == 3:
                return self._check(response)
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    # -- DAGs and runs ---------------------------------------------------------------------------
    def wait_for_dag(self, dag_id: str, timeout: float = 300) -> dict[str, Any]:
        """Wait until the DAG processor has registered ``dag_id``, then make sure it is unpaused."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                dag = self.call("GET", f"/dags/{dag_id}")
                break
            except ApiError as exc:
                if "404" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(1)
        if dag.get("is_paused"):
            dag = self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        return dag

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every task instance of a run, paging past the API's cap of 100 per call."""
        offset = 0
        while True:
            page = self.call(
                "GET",
                f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances",
                params={"limit": 100, "offset": offset, **filters},
            )
            yield from page["task_instances"]
            offset += len(page["task_instances"])
            if not page["task_instances"] or offset >= page["total_entries"]:
                return

    def count(self, dag_id: str, run_id: str, task_id: str, states: list[str] | None = None,
              map_index: int | None = None) -> int:
        """How many instances of ``task_id`` the run has (in any of ``states``, at ``map_index``)."""
        params: dict[str, Any] = {"limit": 1, "task_id": task_id}
        if states:
            params["state"] = states  # sent as repeated state= parameters
        if map_index is not None:
            params["map_index"] = map_index
        page = self.call(
            "GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances", params=params
        )
        return page["total_entries"]

    def variable(self, key: str) -> str | None:
        """An Airflow Variable's value, or None when it is not set."""
        try:
            return self.call("GET", f"/variables/{quote(key, safe='')}")["value"]
        except ApiError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise

    def set_variable(self, key: str, value: str) -> None:
        if self.variable(key) is None:
            self.call("POST", "/variables", json={"key": key, "value": value})
        else:
            self.call("PATCH", f"/variables/{quote(key, safe='')}", json={"key": key, "value": value})

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        entry = self.call(
            "GET",
            f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
            f"/xcomEntries/{key}",
            params={"deserialize": True},
        )
        return entry["value"]

    def task_log_entries(self, dag_id: str, run_id: str, ti: dict[str, Any]) -> list[dict[str, Any]]:
        """The structured log entries of one task instance's latest try."""
        data = self.call(
            "GET",
            f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{ti['task_id']}"
            f"/logs/{max(ti['try_number'], 1)}",
            params={"map_index": ti["map_index"], "full_content": True},
            headers={"Accept": "application/json"},
        )
        content = data.get("content", [])
        if isinstance(content, str):
            return [{"event": line} for line in content.splitlines()]
        return [c if isinstance(c, dict) else {"event": str(c)} for c in content]

    def task_log(self, dag_id: str, run_id: str, ti: dict[str, Any]) -> str:
        """One task instance's log (latest try) as text, exceptions included."""
        return "\n".join(log_line(entry) for entry in self.task_log_entries(dag_id, run_id, ti))

    def task_errors(self, dag_id: str, run_id: str, ti: dict[str, Any]) -> list[str]:
        """The exceptions (``Type: message``) a task instance's latest try logged."""
        entries = self.task_log_entries(dag_id, run_id, ti)
        return [
            f"{d.get('exc_type', 'Exception')}: {d.get('exc_value', '')}"
            for entry in entries
            for d in entry.get("error_detail") or []
            if isinstance(d, dict)
        ] or [str(e.get("event")) for e in entries if e.get("level") in ("error", "critical")]

    def wait(
        self,
        dag_id: str,
        run_id: str,
        *,
        timeout: float = 3600,
        poll: float = 1,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll a run until it succeeds or fails; ``on_progress`` sees each poll's run dict."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if on_progress:
                on_progress(run)
            if run["state"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run['state']} after {timeout:.0f}s")
            time.sleep(poll)


def log_line(entry: Any) -> str:
    """One structured log entry as text: its event, then any exception it carries.

    Airflow 3 logs a task's failure as the event "Task failed with exception" with the exception's
    type and message under ``error_detail``; without them the reason would be lost.
    """
    if not isinstance(entry, dict):
        return str(entry)
    lines = [str(entry.get("event", ""))]
    for detail in entry.get("error_detail") or []:
        if isinstance(detail, dict):
            lines.append(f"{detail.get('exc_type', 'Exception')}: {detail.get('exc_value', '')}")
    return "\n".join(lines)


def ui_url(base_url: str, dag_id: str, run_id: str) -> str:
    return f"{base_url}/dags/{dag_id}/runs/{quote(run_id, safe='')}"
