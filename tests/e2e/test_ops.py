"""Operating the stack (make start/status) and concurrent runs, on the live test stack."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from cloud_backup.local import stack
from cloud_backup.local.cli import api_for
from cloud_backup.naming import blob_name_for
from tests.e2e.support import DAG_ID, finish, new_container, stored, trigger, write_tree

pytestmark = pytest.mark.e2e

PARTS = ["azurite", "api-server", "scheduler", "dag-processor", "triggerer"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    """What `make start` / `make status` run, in the test stack's environment."""
    return subprocess.run([sys.executable, "-m", "cloud_backup.local.cli", *args],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(stack.REPO / "include")})


def test_start_twice_is_a_no_op_and_status_reports_each_part(live_stack) -> None:
    pids = {name: stack.pid_of(live_stack, name) for name in PARTS}
    assert all(pids.values()), pids
    for _ in range(2):
        started = _cli("start")
        assert started.returncode == 0, started.stderr
    assert {name: stack.pid_of(live_stack, name) for name in PARTS} == pids  # nothing restarted
    status = _cli("status")
    assert status.returncode == 0, status
    lines = dict(line.split(None, 1) for line in status.stdout.splitlines())
    assert {name: lines[name] for name in PARTS} == dict.fromkeys(PARTS, "running")
    assert lines["ui"] == live_stack.api_url


def _span(run: dict) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(run["start_date"]), datetime.fromisoformat(run["end_date"])


def test_runs_for_two_directories_both_succeed_and_runs_never_overlap(
    tmp_path: Path, live_stack
) -> None:
    """One active run per DAG (max_active_runs=1): a second run queues, then succeeds. So two runs
    for the same directory can never write the same blobs at once."""
    api = api_for(live_stack)
    api.wait_for_dag(DAG_ID)
    trees = {}
    for name in ("one", "two"):
        trees[name] = write_tree(tmp_path / name, {f"{name}/{i}.txt": os.urandom(800 + i)
                                                   for i in range(40)})
    container = new_container("conc")
    runs = [
        (name, trigger(api, tmp_path / name, container)) for name in ("one", "two", "one")
    ]
    finished = [(name, run_id, finish(api, run_id)) for name, run_id in runs]
    assert [run["state"] for _, _, run in finished] == ["success"] * 3
    spans = sorted(_span(run) for _, _, run in finished)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, spans  # no two runs were active at once
    for name, run_id, _ in finished:
        summary = api.xcom(DAG_ID, run_id, "total_bytes", "summary")
        assert summary["protected_bytes"] == sum(len(d) for d in trees[name].values())
    # Both directories are in the one container, byte for byte.
    both = {**{f"one/{k}": v for k, v in trees["one"].items()},
            **{f"two/{k}": v for k, v in trees["two"].items()}}
    assert {n: b["md5"] for n, b in stored(container).items()} == {
        blob_name_for(str(tmp_path), rel): hashlib.md5(d).hexdigest() for rel, d in both.items()
    }
