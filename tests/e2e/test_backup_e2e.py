"""The final word: a real scheduler run triggered over the REST API, exactly as `make backup` does."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from cloud_backup.local.api import ApiError
from cloud_backup.local.cli import api_for, run_backup
from cloud_backup.naming import CONTROL_PREFIX, blob_name_for
from cloud_backup.store import container_client

pytestmark = pytest.mark.e2e


def _make_tree(root: Path) -> dict[str, bytes]:
    files = {
        f"logs/{day:02d}/app #{day}.log": os.urandom(day * 1531) for day in range(1, 31)
    }
    files["ünïcödé/(copy) 100%?.txt"] = b"odd name\n"
    files["empty"] = b""
    files["big/archive.bin"] = os.urandom(6 * 1024**2)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "escape").symlink_to("/etc")
    return files


def test_make_backup_path_over_rest(tmp_path: Path, live_stack) -> None:
    files = _make_tree(tmp_path)
    container = f"e2e-{uuid.uuid4().hex[:12]}"

    result = run_backup(live_stack, {"directory": str(tmp_path), "container": container})

    assert result["state"] == "success", result
    assert result["total_bytes"] == sum(len(d) for d in files.values())
    assert result["files"] == len(files)
    assert result["skipped"] == 1
    assert result["ui"].startswith(f"{live_stack.api_url}/dags/cloud_backup/runs/")
    client = container_client("wasb_default", container)
    stored = {
        b.name: hashlib.md5(client.download_blob(b.name, decompress=False).readall()).hexdigest()
        for b in client.list_blobs()
        if not b.name.startswith(CONTROL_PREFIX)
    }
    assert stored == {
        blob_name_for(str(tmp_path), rel): hashlib.md5(d).hexdigest() for rel, d in files.items()
    }
    # Each mapped instance is labelled by its first file and its count.
    api = api_for(live_stack)
    labels = [ti["rendered_map_index"] for ti in
              api.task_instances("cloud_backup", result["dag_run_id"], task_id="upload")]
    assert labels and all(labels), labels
    assert any(label.endswith(" files)") for label in labels), labels


def test_empty_directory_succeeds_with_zero(tmp_path: Path, live_stack, capsys) -> None:
    result = run_backup(live_stack, {"directory": str(tmp_path), "container": "e2e-empty"})
    assert (result["state"], result["total_bytes"], result["files"]) == ("success", 0, 0)
    assert "success: no upload batches ran" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({}, "directory"),
        ({"directory": ""}, "directory"),
        ({"directory": "relative/path"}, "directory"),
        ({"directory": "D:\\home\\LogFiles"}, "directory"),
        ({"directory": 42}, "directory"),
        ({"directory": "/tmp", "container": "Bad_Name"}, "container"),
        ({"directory": "/tmp", "prefix": "a/../b"}, "prefix"),
    ],
)
def test_bad_conf_is_refused_at_trigger_time_naming_the_field(live_stack, conf, field) -> None:
    api = api_for(live_stack)
    api.wait_for_dag("cloud_backup")
    with pytest.raises(ApiError) as refused:
        api.trigger("cloud_backup", conf)
    assert str(refused.value).startswith("HTTP 4")
    assert field in str(refused.value)


def test_second_run_is_incremental_and_restore_round_trips(tmp_path: Path, live_stack) -> None:
    """`make backup` twice, then `make restore`, as a user would, over the REST API."""
    from cloud_backup.local.cli import run_restore

    source = tmp_path / "src"
    files = _make_tree(source)
    container = f"e2e-rt-{uuid.uuid4().hex[:10]}"
    conf = {"directory": str(source), "container": container}
    first = run_backup(live_stack, conf)
    second = run_backup(live_stack, conf)
    size = sum(len(d) for d in files.values())
    assert (first["total_bytes"], first["unchanged"]) == (size, 0)
    assert (second["state"], second["files"], second["total_bytes"]) == ("success", 0, 0)
    assert (second["unchanged"], second["protected_bytes"]) == (len(files), size)

    target = tmp_path / "restored"
    restored = run_restore(live_stack, {**conf, "target": str(target)})

    assert (restored["state"], restored["files"], restored["total_bytes"]) == (
        "success", len(files), size)
    assert restored["manifest"] == second["manifest"]
    for rel, data in files.items():
        assert (target / rel).read_bytes() == data
        assert (target / rel).stat().st_mtime_ns == (source / rel).stat().st_mtime_ns
    assert not (target / "escape").exists()  # the symlink was never followed nor restored


def test_a_failed_run_exits_non_zero_with_the_tasks_error(tmp_path: Path, live_stack, capsys):
    """`make backup DIR=<missing>`: the run fails in list_files, fast (no retries), and says why."""
    import json

    from cloud_backup.local.cli import main

    missing = tmp_path / "not-there"
    code = main(["backup", str(missing), "--container", "e2e-missing"])
    out = capsys.readouterr()
    assert code == 1, out.err
    result = json.loads(out.out.strip().splitlines()[-1])
    assert result["state"] == "failed"
    (failure,) = result["failed_tasks"]
    assert (failure["task_id"], failure["try_number"]) == ("list_files", 1)
    assert "does not exist" in failure["error"] and str(missing) in failure["error"]
    assert "does not exist" in out.err
    assert "failed: no upload batches ran" in out.err  # not "0/1": the unexpanded placeholder
