"""Bad input on a real scheduler: refused at trigger time (HTTP 4xx naming the field), or failed in
list_files with a message that says what was wrong, with no partial damage (no container, no blob);
a hostile tree is backed up except what cannot be, which is reported with its reason."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

from cloud_backup.local.api import ApiError
from cloud_backup.local.cli import allow_directory, api_for
from cloud_backup.naming import blob_name_for
from tests.e2e.support import (
    DAG_ID,
    assert_nothing_lost,
    container_exists,
    finish,
    new_container,
    task_log,
    ti,
    trigger,
    write_tree,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def api(live_stack):
    client = api_for(live_stack)
    client.wait_for_dag(DAG_ID)
    return client


@pytest.mark.parametrize("conf", [["/tmp"], "/tmp", 42, None], ids=["list", "string", "number", "null"])
def test_conf_that_is_not_an_object_is_refused_at_trigger_time(api, conf) -> None:
    try:
        refused = api.call("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
    except ApiError as exc:
        assert str(exc).startswith("HTTP 4"), exc
        # null conf is no conf: then the field named is the required directory.
        assert ("directory" if conf is None else "conf") in str(exc), exc
        return
    pytest.fail(f"conf {conf!r} was accepted: {refused}")


@pytest.mark.parametrize("container", ["Backups", "ab", "my_backups", "a--b", "-ab"])
def test_container_azure_would_reject_is_refused_before_any_upload(api, tmp_path, container) -> None:
    with pytest.raises(ApiError, match=r"^HTTP 4.*container") as refused:
        trigger(api, tmp_path, container)
    assert "container" in str(refused.value)


@pytest.mark.parametrize("prefix", ["../up", "a/../../b", "a/..", "./x"])
def test_prefix_with_dot_segments_is_refused_before_any_upload(api, tmp_path, prefix) -> None:
    with pytest.raises(ApiError, match=r"^HTTP 4.*prefix"):
        trigger(api, tmp_path, "backups", prefix=prefix)


def test_bad_directories_fail_in_list_files_with_a_specific_message_and_no_damage(
    api, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_bytes(b"not a directory")
    (tmp_path / "escape").symlink_to("/etc")
    cases = {
        str(tmp_path / "missing"): "does not exist",
        str(tmp_path / "a-file"): "is not a directory",
        # Allowed roots (CLOUD_BACKUP_ALLOWED_ROOTS is the temp folder in the tests):
        "/etc": "outside the allowed roots",
        f"{tmp_path}/{'../' * len(tmp_path.parts)}etc": "outside the allowed roots",  # via ..
        str(tmp_path / "escape"): "outside the allowed roots",  # escaping through a symlink
    }
    runs = {}
    for directory, _ in cases.items():
        container = new_container("bad")
        runs[directory] = (container, trigger(api, directory, container))
    for directory, message in cases.items():
        container, run_id = runs[directory]
        run = finish(api, run_id)
        assert run["state"] == "failed", (directory, run)
        listing = ti(api, run_id, "list_files")
        assert (listing["state"], listing["try_number"]) == ("failed", 1)  # not retried
        log = task_log(api, run_id, listing)
        assert "BadRequest" in log and message in log, (directory, log[-2000:])
        assert ti(api, run_id, "upload")["state"] == "upstream_failed"
        assert not container_exists(container), directory  # nothing was created


def test_local_demo_allows_the_directory_it_was_given(api) -> None:
    outside = Path(tempfile.mkdtemp(prefix="cloud-backup-demo-", dir="/var/tmp"))
    try:
        files = write_tree(outside, {"a.txt": b"demo\n"})
        refused = trigger(api, outside, new_container("demo"))
        assert finish(api, refused)["state"] == "failed"
        roots = allow_directory(api, str(outside))  # what `make backup DIR=...` does first
        assert str(outside) in roots
        container = new_container("demo")
        run_id = trigger(api, outside, container)
        assert finish(api, run_id)["state"] == "success"
        assert_nothing_lost(api, run_id, outside, container, files)
    finally:
        for path in outside.rglob("*"):
            path.unlink()
        outside.rmdir()


def test_hostile_tree_is_backed_up_except_what_cannot_be_which_is_reported(
    api, tmp_path: Path
) -> None:
    root = tmp_path / "tree"
    files = write_tree(root, {"plain.txt": b"plain\n", "unreadable.txt": b"root reads it\n"})
    (root / "unreadable.txt").chmod(0)  # the worker runs as root here: it is backed up
    deep = "/".join(f"d{level:02d}" for level in range(40))
    files.update(write_tree(root, {f"{deep}/leaf.txt": b"forty levels down\n"}))
    (root / "loop").symlink_to(root)
    (root / "outside").symlink_to("/etc/hostname")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    os.close(os.open(os.fsencode(root) + b"/ma\xf1ana.txt", os.O_CREAT | os.O_WRONLY))
    long_dir = "/".join(["L" * 200] * 5)  # each segment fits NAME_MAX; the whole name does not
    write_tree(root, {f"{long_dir}/too-long.txt": b"x"})
    container = new_container("hostile")
    try:
        run_id = trigger(api, root, container)
        run = finish(api, run_id, timeout=180)  # a FIFO or socket opened for reading would hang
    finally:
        sock.close()
    assert run["state"] == "success", run
    summary = api.xcom(DAG_ID, run_id, "total_bytes", "summary")
    skipped = dict(map(tuple, summary["skipped"]))
    long_rel = f"{long_dir}/too-long.txt"
    assert skipped.pop(long_rel).startswith(
        f"blob name is {len(blob_name_for(str(root), long_rel))} characters, over Azure's limit"
    )
    assert skipped == {
        "loop": "symlink (not followed)",
        "outside": "symlink (not followed)",
        "fifo": "a FIFO",
        "sock": "a socket",
        "ma\\xf1ana.txt": "file name is not valid UTF-8",
    }
    assert summary["skipped_count"] == 6 and summary["vanished_count"] == 0
    assert_nothing_lost(api, run_id, root, container, files)
    logs = task_log(api, run_id, ti(api, run_id, "list_files")) + "".join(
        task_log(api, run_id, t) for t in api.task_instances(DAG_ID, run_id, task_id="upload")
    )
    for name in ("loop", "outside", "fifo", "sock", "ma\\xf1ana.txt", "too-long.txt"):
        assert name in logs, name
    print(f"\nhostile tree: {summary['files']} files, {summary['total_bytes']} bytes, "
          f"{summary['skipped_count']} skipped {sorted(dict(map(tuple, summary['skipped'])))}")
