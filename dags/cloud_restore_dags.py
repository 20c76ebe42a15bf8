"""
### cloud_restore: restore a backup made by cloud_backup

Same fan-out shape as the backup: `list_restore` reads the backup's manifest (by default the latest
successful backup of `directory`) and cuts it into batches, `download` is mapped over them, and
`restored_bytes` sums what was written. Every file is checked against the manifest's MD5 on the
way and gets its original modification time. Existing files are refused unless `overwrite` is set.

Trigger with conf `{"directory": "/path/that/was/backed/up", "target": "/abs/restore/here"}`
(optional `container`, `prefix`, `manifest`, `sub_path`, `overwrite`), or `make restore FROM=... TO=...`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, get_current_context, task
from cloud_backup.dag_settings import (
    CONN_ID,
    CONTAINER_PATTERN,
    PARALLELISM,
    batch_label,
    collect,
    default_args,
)

@task
def list_restore() -> list[dict[str, Any]]:
    from cloud_backup.batching import BatchLimits
    from cloud_backup.naming import validate_container, validate_prefix
    from cloud_backup.restore import check_target, find_manifest, plan_restore
    from cloud_backup.store import container_client, run_folder
    from cloud_backup.tasks import check_allowed, deployment_allowed_roots

    context = get_current_context()
    params = context["params"]
    target = check_target(params["target"])
    check_allowed(target, deployment_allowed_roots())  # restores write only where backups may read
    client = container_client(CONN_ID, validate_container(params["container"]))
    manifest = find_manifest(client, params["directory"], validate_prefix(params["prefix"]),
                             params["manifest"] or None)
    plan = plan_restore(
        client, manifest=manifest, target=target, sub_path=params["sub_path"],
        overwrite=params["overwrite"], folder=run_folder(context["dag"].dag_id, context["run_id"]),
        limits=BatchLimits(parallelism=PARALLELISM),
    )
    context["ti"].xcom_push(key="restore", value={"manifest": manifest, "target": target,
                                                  "files": plan["files"], "bytes": plan["bytes"]})
    return plan["batches"]


@task(map_index_template="{{ batch_label }}", max_active_tis_per_dagrun=PARALLELISM,
      multiple_outputs=False)  # one return_value XCom, not one per key of the dict
def download(batch: dict[str, Any], restore: dict[str, Any]) -> dict[str, Any]:
    from cloud_backup.restore import restore_batch
    from cloud_backup.store import container_client

    context = get_current_context()
    context["batch_label"] = batch_label(batch)
    params = context["params"]
    client = container_client(CONN_ID, params["container"])
    return restore_batch(client, restore["target"], batch["listing"], params["overwrite"])


@task(trigger_rule="none_failed")
def restored_bytes(restore: dict[str, Any], reports: list[dict[str, Any]] | None) -> int:
    collected = collect(reports)
    files = sum(r["files"] for r in collected)
    total = sum(r["bytes"] for r in collected)
    if (files, total) != (restore["files"], restore["bytes"]):
        raise RuntimeError(f"restored {files} files / {total} bytes, planned "
                           f"{restore['files']} / {restore['bytes']}")
    get_current_context()["ti"].xcom_push(key="summary", value={**restore, "restored_files": files})
    return total


with DAG(
    dag_id="cloud_restore",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    params={
        "directory": Param(None, type=["null", "string"], pattern="^/", title="Backed-up directory",
                           description="Restore the latest successful backup of this directory."),
        "target": Param(type="string", pattern="^/", minLength=2, title="Target directory",
                        description="Absolute path to restore into (created if missing)."),
        "container": Param("backups", type="string", pattern=CONTAINER_PATTERN),
        "prefix": Param("", type="string", description="The prefix the backup used, if any."),
        "manifest": Param("", type="string",
                          description="A manifest blob to restore from instead of the latest."),
        "sub_path": Param("", type="string",
                          description="Restore only this path (relative to the backed-up directory)."),
        "overwrite": Param(False, type="boolean", description="Replace files that exist."),
    },
    doc_md=__doc__,
    tags=["backup", "azure", "restore"],
) as cloud_restore:
    batches = list_restore()
    restore = batches["restore"]
    reports = download.partial(restore=restore).expand(batch=batches)
    restored_bytes(restore, reports)
