"""
### cloud_backup: back up a directory to Azure Blob Storage

Fan-out/fan-in, the Airflow way (after Azure's Durable Functions "cloud backup" sample):

1. `list_files` walks `directory` (regular files only; symlinks, FIFOs and sockets are skipped and
   reported) and cuts the listing into batches balanced by bytes and file count.
2. `upload` is mapped over the batches; each writes its files through the Azure provider's
   `WasbHook` (connection `wasb_default`), many files at once, large files in parallel blocks.
3. `total_bytes` sums the bytes stored: the run's result (its `return_value` XCom), with a
   `summary` XCom that names every skipped or vanished file.

Blob names follow the sample: the file's absolute path without its leading `/`
(`/home/site/a.log` -> `home/site/a.log`), or `prefix/` + the path relative to `directory`.

Only directories under the deployment's allowed roots may be backed up: the Airflow Variable
`cloud_backup_allowed_roots` (a JSON list of paths) and the environment variable
`CLOUD_BACKUP_ALLOWED_ROOTS` (paths separated by `:`), combined. A directory outside them, or
escaping them through `..` or a symlink, fails `list_files` at once, before anything is written.

Trigger with conf `{"directory": "/abs/path"}` (optional `container`, `prefix`), from the UI,
`airflow dags trigger cloud_backup -c '{"directory": "/abs/path"}'`, or
`POST /api/v2/dags/cloud_backup/dagRuns`. `cloud_backup_nightly` runs the same tasks every night for
the directory in the Airflow Variable `cloud_backup_nightly_directory` (or the environment variable
`CLOUD_BACKUP_NIGHTLY_DIRECTORY`).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, get_current_context, task
from cloud_backup.dag_settings import (
    CONN_ID,
    CONTAINER_PATTERN,
    FILE_THREADS,
    NIGHTLY_SCHEDULE,
    PARALLELISM,
    PREFIX_PATTERN,
    batch_label,
    collect,
    default_args,
)

DEFAULT_ARGS = default_args()


def _params(directory_required: bool, verify_default: str) -> dict[str, Param]:
    directory = (
        Param(type="string", pattern="^/", minLength=1, title="Directory",
              description="Absolute path of the directory to back up, as the workers see it.")
        if directory_required
        else Param(None, type=["null", "string"], pattern="^/", title="Directory",
                   description="Leave empty to use the Variable cloud_backup_nightly_directory.")
    )
    return {
        "directory": directory,
        "container": Param("backups", type="string", pattern=CONTAINER_PATTERN, title="Container",
                           description="Blob container (3-63 lowercase letters, digits, hyphens)."),
        "prefix": Param("", type="string", pattern=PREFIX_PATTERN, title="Prefix",
                        description="Optional blob name prefix; empty keeps the sample's naming "
                                    "(absolute path without its leading '/')."),
        "incremental": Param(True, type="boolean", title="Incremental",
                             description="Skip files whose blob has the same size and mtime "
                                         "(or MD5 with checksum). Off: upload everything."),
        "checksum": Param(False, type="boolean", title="Compare checksums",
                          description="Decide 'unchanged' by MD5 (reads every file) instead of "
                                      "size and modification time."),
        "verify": Param(verify_default, type="string", enum=["off", "quick", "full"],
                        title="Verify", description="After the upload, check every file of the "
                        "manifest in the container: quick (size and Content-MD5 from one listing) "
                        "or full (read every blob back and hash it)."),
        "mirror": Param(False, type="boolean", title="Mirror deletions",
                        description="Delete blobs whose files were deleted locally (default: keep "
                                    "them; a backup, not a mirror)."),
        "max_delete_fraction": Param(0.05, type="number", minimum=0, maximum=1,
                                     title="Mirror: most blobs deleted in one run (fraction)"),
    }


def _nightly_directory() -> str | None:
    from airflow.sdk import Variable

    return Variable.get("cloud_backup_nightly_directory", default=None) or os.environ.get(
        "CLOUD_BACKUP_NIGHTLY_DIRECTORY"
    )


def _manifest_name(context: Any) -> str:
    """Scheduled runs are named by their data interval, manual runs by their run id."""
    from cloud_backup.naming import CONTROL_PREFIX

    dag_id, run = context["dag"].dag_id, context["dag_run"]
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if str(run.run_type).endswith("scheduled") and start and end:
        name = f"{start:%Y-%m-%dT%H%M%SZ}--{end:%Y-%m-%dT%H%M%SZ}"
    else:
        name = run.run_id
    return f"{CONTROL_PREFIX}manifests/{dag_id}/{name}.jsonl.gz"


@task
def list_files() -> list[dict[str, Any]]:
    from cloud_backup.batching import BatchLimits
    from cloud_backup.tasks import BackupOptions, BadRequest, deployment_allowed_roots
    from cloud_backup.tasks import list_files as list_batches

    from airflow.sdk.configuration import conf

    context = get_current_context()
    params = context["params"]
    directory = params["directory"] or _nightly_directory()
    if directory is None:
        raise BadRequest("directory is not set: pass it in the run's conf, or set the Variable "
                         "cloud_backup_nightly_directory for scheduled runs")
    limits = BatchLimits(
        parallelism=PARALLELISM,
        max_batches=min(conf.getint("core", "max_map_length"),
                        int(os.environ.get("CLOUD_BACKUP_MAX_BATCHES", "1024"))),
    )
    options = BackupOptions(incremental=params["incremental"], checksum=params["checksum"],
                            mirror=params["mirror"],
                            max_delete_fraction=params["max_delete_fraction"])
    listing = list_batches(directory=directory, container=params["container"],
                           prefix=params["prefix"], conn_id=CONN_ID,
                           dag_id=context["dag"].dag_id, run_id=context["run_id"],
                           manifest=_manifest_name(context), limits=limits, options=options,
                           allowed_roots=deployment_allowed_roots())
    # Only the batch references are mapped over; the rest travels under its own XCom key.
    context["ti"].xcom_push(key="listed", value=listing["listed"])
    return listing["batches"]


# multiple_outputs=False: a dict return type would otherwise push every key as an XCom of its own
# (13 more API calls and rows per batch); the reduce reads only return_value.
@task(map_index_template="{{ batch_label }}", max_active_tis_per_dagrun=PARALLELISM,
      multiple_outputs=False)
def upload(batch: dict[str, Any], listed: dict[str, Any]) -> dict[str, Any]:
    from cloud_backup.tasks import upload as upload_one

    get_current_context()["batch_label"] = batch_label(batch)
    return upload_one(batch=batch, listed=listed, conn_id=CONN_ID, threads=FILE_THREADS)


# An empty directory expands `upload` to nothing, which Airflow marks skipped: still sum (to 0).
@task(trigger_rule="none_failed")
def total_bytes(listed: dict[str, Any], reports: list[dict[str, Any]] | None) -> int:
    from cloud_backup.tasks import finish

    context = get_current_context()
    summary = finish(listed, collect(reports), CONN_ID, context["dag"].dag_id, context["run_id"])
    context["ti"].xcom_push(key="summary", value=summary)
    return summary["total_bytes"]


@task
def verify(listed: dict[str, Any]) -> dict[str, Any] | None:
    from cloud_backup.tasks import verify as verify_run

    return verify_run(listed, get_current_context()["params"]["verify"], CONN_ID)


def _build(dag_id: str, schedule: str | None, directory_required: bool, verify_default: str,
           tags: list[str]) -> DAG:
    with DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        # One active run per DAG: a second run (same or another directory) queues, then runs. Two
        # runs of one directory thus never write the same blobs at once, and a run already uses the
        # whole box (PARALLELISM upload tasks, FILE_THREADS files each), so running two directories
        # side by side would not finish sooner. Per-directory concurrency would need a lock keyed
        # by directory (a pool per directory cannot be created at trigger time): not worth it.
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        params=_params(directory_required, verify_default),
        doc_md=__doc__,
        tags=tags,
    ) as dag:
        batches = list_files()
        listed = batches["listed"]  # the XCom that list_files pushed under key "listed"
        reports = upload.partial(listed=listed).expand(batch=batches)
        total_bytes(listed, reports) >> verify(listed)
    return dag


cloud_backup = _build("cloud_backup", None, True, "off", ["backup", "azure"])
cloud_backup_nightly = _build("cloud_backup_nightly", NIGHTLY_SCHEDULE, False, "quick",
                              ["backup", "azure", "nightly"])
