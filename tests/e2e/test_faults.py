"""Faults on a real scheduler run, driven over the REST API: crashes, storage outages, a batch that
fails for good, files that change or vanish mid-run. After each, and after what a user would do
(wait for retries, restart what died, clear the failed instances), nothing is lost: every regular
file is in the container with identical bytes (MD5s read back from the store), total_bytes is the
sum of their sizes, and whatever could not be copied is named with its reason.

The stack's ``wasb_default`` goes through ``tests/faultproxy.py``: a test holds or fails only the
requests that carry its own marker (a unique file name), so it never disturbs another test.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from cloud_backup.local import stack
from cloud_backup.local.cli import api_for
from cloud_backup.naming import blob_name_for
from cloud_backup.store import container_client, read_listing, run_folder
from tests.e2e.support import (
    DAG_ID,
    assert_nothing_lost,
    finish,
    new_container,
    small_files,
    stored,
    task_log,
    ti,
    trigger,
    upload_tis,
    wait_until,
    write_tree,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

BIG = 10 * 1024**2  # over SINGLE_PUT_MAX: uploaded as staged blocks, then committed


@pytest.fixture
def api(live_stack):
    client = api_for(live_stack)
    client.wait_for_dag(DAG_ID)
    return client


def _marker(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}"


def _kill_group_leftovers(pgid: int) -> None:
    """SIGKILL what is left of a process group this session started (a killed scheduler's workers)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def test_scheduler_sigkill_mid_run_then_restart_finishes_with_nothing_lost(
    tmp_path: Path, api, live_stack, fault_proxy, start_component
) -> None:
    marker = _marker("held")
    write_tree(tmp_path, small_files(400))
    write_tree(tmp_path, {f"zz/{marker}.bin": os.urandom(3000)})
    hold = fault_proxy.hold("PUT", marker)
    container = new_container("sched")
    run_id = trigger(api, tmp_path, container)
    old_pid = None
    try:
        wait_until(hold.hit.is_set, 120, "an upload to be in flight")
        old_pid = stack.pid_of(live_stack, "scheduler")
        assert old_pid
        os.kill(old_pid, signal.SIGKILL)
        wait_until(lambda: stack.pid_of(live_stack, "scheduler") is None, 10, "scheduler to die")
        mid = api.run(DAG_ID, run_id)
        assert mid["state"] == "running"
        time.sleep(2)
        assert start_component("scheduler")
    finally:
        hold.release()
        start_component("scheduler")  # whatever happened above, later tests need a scheduler

    run = finish(api, run_id)
    if old_pid:
        _kill_group_leftovers(old_pid)
    assert run["state"] == "success", run
    summary = assert_nothing_lost(api, run_id, tmp_path, container)
    tries = [t["try_number"] for t in upload_tis(api, run_id)]
    print(f"\nscheduler kill: {summary['files']} files, {summary['total_bytes']} bytes, "
          f"{len(tries)} batches, upload tries {tries}")


def test_upload_task_sigkill_is_retried_without_a_half_written_blob(
    tmp_path: Path, api, fault_proxy
) -> None:
    marker = _marker("killed")
    files = write_tree(tmp_path, {f"small/{i}.txt": os.urandom(500 + i) for i in range(20)})
    big = os.urandom(BIG)
    files[f"{marker}.bin"] = big
    write_tree(tmp_path, {f"{marker}.bin": big})
    # The first block of the big file is held at the proxy: the task is mid-upload when killed.
    hold = fault_proxy.hold("PUT", f"{marker}.bin?comp=block")
    container = new_container("taskkill")
    run_id = trigger(api, tmp_path, container)
    try:
        wait_until(hold.hit.is_set, 120, "the big file's first block to be in flight")
        (running,) = [t for t in upload_tis(api, run_id) if t["state"] == "running"]
        assert running["pid"], running
        os.kill(running["pid"], signal.SIGKILL)
        blob = blob_name_for(str(tmp_path), f"{marker}.bin")
        # Staged blocks are invisible until committed: no half-written blob, ever.
        assert not container_client("wasb_default", container).get_blob_client(blob).exists()
    finally:
        hold.release()

    run = finish(api, run_id)
    assert run["state"] == "success", run
    (upload,) = upload_tis(api, run_id)
    assert upload["try_number"] == 2, upload  # Airflow noticed the dead process and retried it
    summary = assert_nothing_lost(api, run_id, tmp_path, container, files)
    assert stored(container)[blob]["size"] == BIG
    print(f"\ntask kill: {summary['files']} files, {summary['total_bytes']} bytes, "
          f"upload try {upload['try_number']}")


def test_azurite_down_longer_than_an_attempt_uploads_retry_and_finish(
    tmp_path: Path, api, live_stack, fault_proxy, start_component
) -> None:
    marker = _marker("outage")
    write_tree(tmp_path, small_files(60))
    write_tree(tmp_path, {f"{marker}.txt": b"written during the outage\n"})
    hold = fault_proxy.hold("PUT", marker)
    container = new_container("outage")
    run_id = trigger(api, tmp_path, container)
    down_for = 15.0
    stopped = time.monotonic()
    try:
        wait_until(hold.hit.is_set, 120, "an upload to be in flight")
        pid = stack.pid_of(live_stack, "azurite")
        os.killpg(pid, signal.SIGTERM)
        wait_until(lambda: stack.pid_of(live_stack, "azurite") is None, 20, "Azurite to stop")
        stopped = time.monotonic()
        hold.release()  # the held request now meets a dead storage
        wait_until(lambda: upload_tis(api, run_id)[0]["try_number"] >= 2, 60,
                   "the upload to fail and be retried")
        time.sleep(max(0.0, down_for - (time.monotonic() - stopped)))
    finally:
        hold.release()
        start_component("azurite")
        stack.wait_for_port(live_stack.azurite_port, timeout=30)
    outage = time.monotonic() - stopped

    run = finish(api, run_id)
    assert run["state"] == "success", run
    (upload,) = upload_tis(api, run_id)
    assert upload["try_number"] >= 2
    first_try = task_log(api, run_id, upload, try_number=1)
    assert "could not be stored" in first_try or "Error" in first_try
    summary = assert_nothing_lost(api, run_id, tmp_path, container)
    print(f"\nazurite down {outage:.0f}s: {summary['files']} files, {summary['total_bytes']} bytes, "
          f"upload tries {upload['try_number']}")


def test_one_batch_failing_for_good_then_clear_only_failed_reruns_only_it(
    tmp_path: Path, api, fault_proxy
) -> None:
    marker = _marker("poison")
    write_tree(tmp_path, small_files(600))
    poison = f"zz/{marker}.txt"
    write_tree(tmp_path, {poison: b"the storage refuses this one\n"})
    refuse = fault_proxy.fail("PUT", marker, status=500)
    container = new_container("poison")
    run_id = trigger(api, tmp_path, container)
    try:
        run = finish(api, run_id)
        assert run["state"] == "failed", run
        before = upload_tis(api, run_id)
        assert len(before) >= 3, before
        failed = [t for t in before if t["state"] == "failed"]
        assert len(failed) == 1, [(t["map_index"], t["state"]) for t in before]
        (bad,) = failed
        assert bad["try_number"] == 4  # 3 retries, then given up
        assert ti(api, run_id, "total_bytes")["state"] == "upstream_failed"
        # The batch and the file are named, with the reason, in the error and the task log.
        log = task_log(api, run_id, bad)
        assert f"BatchUploadError: batch {bad['map_index']}: 1 of" in log, log[-3000:]
        assert f"'{poison}': HttpResponseError" in log and "Internal Server Error" in log
        client = container_client("wasb_default", container)
        failed_batch = {
            blob_name_for(str(tmp_path), e.rel)
            for e in read_listing(client, f"{run_folder(DAG_ID, run_id)}batch-{bad['map_index']:05d}"
                                          ".jsonl.gz")
        }
        first_pass = stored(container)
    finally:
        refuse.release()  # the cause is removed

    api.call("POST", f"/dags/{DAG_ID}/dagRuns/{run_id}/clear",
             json={"dry_run": False, "only_failed": True})
    run = finish(api, run_id)
    assert run["state"] == "success", run
    after = upload_tis(api, run_id)
    for old, new in zip(before, after, strict=True):
        if old["map_index"] == bad["map_index"]:
            assert new["try_number"] == old["try_number"] + 1 and new["state"] == "success"
        else:
            assert (new["try_number"], new["state"]) == (old["try_number"], "success")
    summary = assert_nothing_lost(api, run_id, tmp_path, container)
    second_pass = stored(container)
    untouched = {n for n in first_pass if n not in failed_batch}
    assert untouched and all(
        second_pass[n]["last_modified"] == first_pass[n]["last_modified"] for n in untouched
    )
    print(f"\npoison batch {bad['map_index']} of {len(before)}: {summary['files']} files, "
          f"{summary['total_bytes']} bytes; tries before {[t['try_number'] for t in before]}, "
          f"after {[t['try_number'] for t in after]}; {len(untouched)} blobs not rewritten")


def test_files_changing_while_uploaded_give_consistent_blobs(tmp_path: Path, api, fault_proxy
                                                             ) -> None:
    marker = _marker("change")
    old = {kind: os.urandom(BIG) for kind in ("a-grow", "b-shrink", "c-replace", "d-rewrite")}
    write_tree(tmp_path, {f"{kind}-{marker}.bin": data for kind, data in old.items()})
    write_tree(tmp_path, {"steady.txt": b"never changes\n"})
    holds = {kind: fault_proxy.hold("PUT", f"{kind}-{marker}.bin?comp=block") for kind in old}
    container = new_container("change")
    run_id = trigger(api, tmp_path, container)
    new: dict[str, bytes] = {}
    try:
        for kind in sorted(old):  # large files of a batch go one at a time, in listing order
            wait_until(holds[kind].hit.is_set, 120, f"{kind} to be mid-upload")
            path = tmp_path / f"{kind}-{marker}.bin"
            if kind == "a-grow":
                with open(path, "ab") as f:
                    f.write(os.urandom(1024**2))
            elif kind == "b-shrink":
                os.truncate(path, 5 * 1024**2)
            elif kind == "c-replace":
                tmp = path.with_suffix(".new")
                tmp.write_bytes(os.urandom(BIG // 2))
                tmp.rename(path)
            else:
                with open(path, "r+b") as f:
                    f.seek(BIG // 2)
                    f.write(b"X" * 4096)  # same size, new bytes
            new[kind] = path.read_bytes()
            holds[kind].release()
    finally:
        for hold in holds.values():
            hold.release()

    run = finish(api, run_id)
    assert run["state"] == "success", run
    blobs = stored(container)
    summary_total = api.xcom(DAG_ID, run_id, "total_bytes", "summary")["protected_bytes"]
    assert summary_total == sum(b["size"] for b in blobs.values())
    outcome: dict[str, str] = {}
    for kind in old:
        blob = blobs[blob_name_for(str(tmp_path), f"{kind}-{marker}.bin")]
        assert blob["content_md5"] == blob["md5"]  # its own Content-MD5 agrees: one version
        assert blob["metadata"]["cb_size"] == str(blob["size"])
        versions = {hashlib.md5(old[kind]).hexdigest(): "old", hashlib.md5(new[kind]).hexdigest(): "new"}
        assert blob["md5"] in versions, kind
        outcome[kind] = versions[blob["md5"]]
        if kind != "c-replace":
            # Changed in place while read: detected and read again, so the blob is the new file.
            assert versions[blob["md5"]] == "new", kind
    log = task_log(api, run_id, upload_tis(api, run_id)[0])
    assert "changed while it was read; reading it again" in log
    print(f"\nfiles changing: {len(blobs)} blobs, {summary_total} bytes, copies stored {outcome}")


def test_file_deleted_before_its_batch_runs_is_reported_vanished(tmp_path: Path, api, fault_proxy
                                                                 ) -> None:
    marker = _marker("vanish")
    files = write_tree(tmp_path, {f"keep/{i}.txt": os.urandom(300 + i) for i in range(10)})
    write_tree(tmp_path, {f"{marker}.txt": b"about to go\n"})
    container = new_container("vanish")
    # The upload task first reads its batch listing: hold that until the file is gone.
    hold = fault_proxy.hold("GET", f"/{container}/_cloud_backup/runs/")
    run_id = trigger(api, tmp_path, container)
    try:
        wait_until(hold.hit.is_set, 120, "the upload task to start")
        (tmp_path / f"{marker}.txt").unlink()
    finally:
        hold.release()

    run = finish(api, run_id)
    assert run["state"] == "success", run
    summary = assert_nothing_lost(api, run_id, tmp_path, container, files)
    assert summary["vanished"] == [f"{marker}.txt"] and summary["vanished_count"] == 1
    assert f"Vanished {marker}.txt: deleted after it was listed" in task_log(
        api, run_id, upload_tis(api, run_id)[0]
    )
    print(f"\nvanished: {summary['files']} files, {summary['total_bytes']} bytes, "
          f"vanished {summary['vanished']}")
