"""A whole run in one process with `dag.test()`, against the live Azurite."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from cloud_backup.naming import CONTROL_PREFIX, blob_name_for


def _run(directory: Path, container: str, inproc_db: Path):
    from airflow.sdk import DagRunState

    from cloud_backup_dags import cloud_backup

    run = cloud_backup.test(run_conf={"directory": str(directory), "container": container})
    assert run.state == DagRunState.SUCCESS
    return run


def _xcom(run, task_id: str, key: str = "return_value"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id, key=key)
        ).first()
        return XComModel.deserialize_value(row)


def _blobs(container_name: str) -> dict[str, bytes]:
    from cloud_backup.store import container_client

    client = container_client("wasb_default", container_name)
    return {
        b.name: client.download_blob(b.name).readall()
        for b in client.list_blobs()
        if not b.name.startswith(CONTROL_PREFIX)
    }


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

    run = _run(tmp_path, container, inproc_db)

    total = _xcom(run, "total_bytes")
    summary = _xcom(run, "total_bytes", "summary")
    assert total == sum(len(d) for d in files.values())
    assert summary["files"] == len(files)
    assert summary["skipped"] == [["link", "symlink (not followed)"]]
    stored = _blobs(container)
    assert {k: hashlib.md5(v).hexdigest() for k, v in stored.items()} == {
        blob_name_for(str(tmp_path), rel): hashlib.md5(d).hexdigest() for rel, d in files.items()
    }
