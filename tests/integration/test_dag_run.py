"""A whole run in one process with `dag.test()`, against the live Azurite."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from cloud_backup.naming import blob_name_for
from tests.runs import blobs, run_dag, xcom


@pytest.mark.parametrize("shape", ["tree", "one_file", "empty"])
def test_dag_test_backs_up_every_byte(tmp_path: Path, azurite: str, inproc_db: Path, shape: str):
    files: dict[str, bytes] = {}
    if shape == "tree":
        files = {f"d{i % 3}/f{i}.bin": os.urandom(i * 97) for i in range(40)}
        files["big/blob.bin"] = os.urandom(9 * 1024**2)
    elif shape == "one_file":
        files = {"only.txt": b"just one file\n"}
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    (tmp_path / "link").symlink_to("/etc/hostname")
    container = f"dagtest-{uuid.uuid4().hex[:12]}"

    from cloud_backup_dags import cloud_backup

    run = run_dag(cloud_backup, {"directory": str(tmp_path), "container": container})

    total = xcom(run, "total_bytes")
    summary = xcom(run, "total_bytes", "summary")
    assert total == sum(len(d) for d in files.values())
    assert summary["files"] == len(files)
    assert summary["skipped"] == [["link", "symlink (not followed)"]]
    stored = blobs(container)
    assert {k: hashlib.md5(v).hexdigest() for k, v in stored.items()} == {
        blob_name_for(str(tmp_path), rel): hashlib.md5(d).hexdigest() for rel, d in files.items()
    }
