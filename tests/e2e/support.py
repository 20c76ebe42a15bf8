"""Helpers for the end-to-end tests: build trees, drive runs over REST, read back what was stored."""

from __future__ import annotations

import hashlib
import os
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud_backup.local.api import AirflowApi
from cloud_backup.naming import CONTROL_PREFIX, blob_name_for
from cloud_backup.store import container_client

DAG_ID = "cloud_backup"


def new_container(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:16]}"


def write_tree(root: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def small_files(count: int, size: int = 700, folder: str = "many") -> dict[str, bytes]:
    """``count`` small files: enough of them (>= ~130) make the batcher cut several batches."""
    return {f"{folder}/{i // 100:02d}/f{i:04d}.dat": os.urandom(size + i % 97) for i in range(count)}


def regular_files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (symlinks not followed), by '/'-separated relative path."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                out[os.path.relpath(path, root)] = Path(path).read_bytes()
    return out


def stored(container: str) -> dict[str, dict[str, Any]]:
    """Every backed-up blob, read back from the store: MD5 of its bytes, size, properties."""
    client = container_client("wasb_default", container)
    out = {}
    for blob in client.list_blobs(include=["metadata"]):
        if blob.name.startswith(CONTROL_PREFIX):
            continue
        data = client.download_blob(blob.name).readall()
        md5 = blob.content_settings.content_md5
        out[blob.name] = {
            "md5": hashlib.md5(data).hexdigest(),
            "size": len(data),
            "content_md5": bytes(md5).hex() if md5 else None,
            "metadata": blob.metadata,
            "last_modified": blob.last_modified,
        }
    return out


def container_exists(container: str) -> bool:
    return container_client("wasb_default", container).exists()


def trigger(api: AirflowApi, directory: str | Path, container: str, **conf: Any) -> str:
    return api.trigger(DAG_ID, {"directory": str(directory), "container": container, **conf})[
        "dag_run_id"
    ]


def finish(api: AirflowApi, run_id: str, timeout: float = 300) -> dict[str, Any]:
    return api.wait(DAG_ID, run_id, timeout=timeout, poll=1)


def upload_tis(api: AirflowApi, run_id: str) -> list[dict[str, Any]]:
    return sorted(api.task_instances(DAG_ID, run_id, task_id="upload"), key=lambda t: t["map_index"])


def ti(api: AirflowApi, run_id: str, task_id: str) -> dict[str, Any]:
    (found,) = list(api.task_instances(DAG_ID, run_id, task_id=task_id))
    return found


def task_log(api: AirflowApi, run_id: str, instance: dict[str, Any], try_number: int | None = None
             ) -> str:
    if try_number is not None:
        instance = {**instance, "try_number": try_number}
    return api.task_log(DAG_ID, run_id, instance)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.3)


def assert_nothing_lost(api: AirflowApi, run_id: str, directory: Path, container: str,
                        expected: dict[str, bytes] | None = None) -> dict[str, Any]:
    """Every regular file is stored with identical bytes, and total_bytes is the sum of their sizes."""
    files = regular_files(directory) if expected is None else expected
    blobs = stored(container)
    want = {blob_name_for(str(directory), rel): hashlib.md5(d).hexdigest() for rel, d in files.items()}
    assert {name: b["md5"] for name, b in blobs.items()} == want
    # The Content-MD5 each blob carries agrees with its bytes: no blob mixes two versions.
    assert all(b["content_md5"] == b["md5"] for b in blobs.values())
    total = api.xcom(DAG_ID, run_id, "total_bytes")
    summary = api.xcom(DAG_ID, run_id, "total_bytes", "summary")
    # total_bytes counts what this run wrote; files a retry or rerun found already stored (the
    # incremental skip) are "unchanged". Together they are every file: "protected".
    assert total == summary["total_bytes"]
    assert summary["protected_bytes"] == total + summary["unchanged_bytes"]
    assert summary["protected_bytes"] == sum(len(d) for d in files.values())
    assert summary["protected_files"] == len(files)
    return summary
