"""The storage key never leaks: a whole backup runs with a connection string whose account key is a
fresh marker (tests/conftest.py), and the marker appears in no task log, no XCom, no API response."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloud_backup.local.cli import api_for, failure_details
from cloud_backup.local import stack
from tests.e2e.support import DAG_ID, assert_nothing_lost, finish, new_container, trigger, write_tree

pytestmark = pytest.mark.e2e


class Recording:
    """Wraps the API client's session so every response body the test receives is kept."""

    def __init__(self, api) -> None:
        self.bodies: list[str] = []
        original = api.session.request

        def request(*args, **kwargs):
            response = original(*args, **kwargs)
            self.bodies.append(response.text)
            return response

        api.session.request = request


def test_account_key_appears_in_no_task_log_xcom_or_api_response(
    tmp_path: Path, live_stack, secret_key: str
) -> None:
    # The stack's connection carries the marker key (the scheduler's workers inherit it).
    scheduler = stack.pid_of(live_stack, "scheduler")
    assert secret_key.encode() in Path(f"/proc/{scheduler}/environ").read_bytes()
    api = api_for(live_stack)
    seen = Recording(api)
    api.wait_for_dag(DAG_ID)
    files = write_tree(tmp_path, {f"d/{i}.bin": os.urandom(1000 + i) for i in range(30)})
    container = new_container("secret")
    run_id = trigger(api, tmp_path, container)
    assert finish(api, run_id)["state"] == "success"
    # The backup really used the marker key: the store accepted the run's signed requests.
    assert_nothing_lost(api, run_id, tmp_path, container, files)

    # Everything the API shows about the run: instances, every XCom, every try's log.
    for ti in api.task_instances(DAG_ID, run_id):
        for try_number in range(1, ti["try_number"] + 1):
            api.task_log(DAG_ID, run_id, {**ti, "try_number": try_number})
    xcoms = api.call("GET", "/dags/~/dagRuns/~/taskInstances/~/xcomEntries", params={"limit": 100})
    assert xcoms["total_entries"] > 0
    for entry in xcoms["xcom_entries"]:
        api.call("GET", f"/dags/{entry['dag_id']}/dagRuns/{entry['run_id']}/taskInstances/"
                        f"{entry['task_id']}/xcomEntries/{entry['key']}",
                 params={"map_index": entry["map_index"], "deserialize": True})
    api.call("GET", "/connections")
    api.call("GET", "/variables")
    failure_details(api, DAG_ID, run_id)
    assert len(seen.bodies) > 10
    leaks = [body[:200] for body in seen.bodies if secret_key in body]
    assert not leaks, leaks

    # Every task log on disk, of every run this session made (the fault tests' failures included).
    task_logs = [p for p in (live_stack.log_dir / "tasks").rglob("*") if p.is_file()]
    assert task_logs
    assert [p for p in task_logs if secret_key.encode() in p.read_bytes()] == []
