"""The bodies of the DAG's tasks, as plain functions of plain values (the DAG file only wires them).

``list_files`` walks the directory once, streaming the listing to a temporary file, then cuts it into
batches whose listings are stored as small blobs beside the backup: XCom carries only references,
so a million files stay a few hundred KB of XCom and at most ``max_batches`` mapped instances.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cloud_backup.batching import BatchLimits, make_batches
from cloud_backup.naming import display, validate_container, validate_prefix
from cloud_backup.store import (
    container_client,
    ensure_container,
    read_listing,
    run_folder,
    write_listing,
)
from cloud_backup.upload import REPORT_NAMES, BatchReport, upload_batch
from cloud_backup.walk import FileEntry, Skipped, walk_tree

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """The run's configuration cannot be backed up; the message says which field and why."""


def check_directory(directory: Any) -> str:
    """Validate the ``directory`` conf value; return it normalised (absolute, no trailing slash)."""
    if not isinstance(directory, str) or not directory.strip():
        raise BadRequest(f"directory must be a non-empty string, got {directory!r}")
    if not directory.startswith("/"):
        raise BadRequest(
            f"directory must be an absolute POSIX path (starting with '/'), got {directory!r}"
        )
    normal = os.path.normpath(directory)
    if not os.path.exists(normal):
        raise BadRequest(f"directory {directory!r} does not exist on this worker")
    if not os.path.isdir(normal):
        raise BadRequest(f"directory {directory!r} is not a directory")
    if not os.access(normal, os.R_OK | os.X_OK):
        raise BadRequest(f"directory {directory!r} cannot be read by this worker (permission denied)")
    return normal


def _spool(directory: str, spool: Any, skipped: list[Skipped]) -> tuple[int, int, int]:
    """Walk ``directory``, writing file entries to ``spool``; return (files, bytes, skipped count)."""
    files = total = skipped_count = 0
    for item in walk_tree(directory):
        if isinstance(item, FileEntry):
            files += 1
            total += item.size
            spool.write(json.dumps([item.rel, item.size, item.mtime_ns], ensure_ascii=True) + "\n")
        else:
            skipped_count += 1
            log.warning("Skipped %s: %s", display(item.rel), item.reason)
            if len(skipped) < REPORT_NAMES:
                skipped.append(item)
    return files, total, skipped_count


def _read_spool(spool: Any) -> Iterator[FileEntry]:
    spool.seek(0)
    for line in spool:
        rel, size, mtime_ns = json.loads(line)
        yield FileEntry(rel, size, mtime_ns)


def list_files(
    *,
    directory: Any,
    container: str,
    prefix: str | None,
    conn_id: str,
    dag_id: str,
    run_id: str,
    limits: BatchLimits,
) -> dict[str, Any]:
    """Walk, batch, store batch listings; return ``{"batches": [...], "listed": {...}}``."""
    directory = check_directory(directory)
    try:
        container = validate_container(container)
        prefix = validate_prefix(prefix)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    client = container_client(conn_id, container)
    ensure_container(client)
    folder = run_folder(dag_id, run_id)
    skipped: list[Skipped] = []
    batches: list[dict[str, Any]] = []
    # surrogateescape keeps undecodable names intact until naming rejects them with a reason.
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="surrogateescape") as spool:
        files, total, skipped_count = _spool(directory, spool, skipped)
        for index, batch in enumerate(make_batches(_read_spool(spool), files, total, limits)):
            listing = f"{folder}batch-{index:05d}.jsonl.gz"
            write_listing(client, listing, batch.files)
            batches.append(
                {
                    "batch": index,
                    "listing": listing,
                    "files": len(batch.files),
                    "bytes": batch.bytes,
                    "first": display(batch.files[0].rel),
                }
            )
    log.info(
        "Listed %d files (%d bytes) under %s into %d batches; %d entries skipped",
        files, total, directory, len(batches), skipped_count,
    )
    listed = {
        "directory": directory,
        "container": container,
        "prefix": prefix,
        "files": files,
        "bytes": total,
        "skipped_count": skipped_count,
        "skipped": [[display(s.rel), s.reason] for s in skipped],
    }
    return {"batches": batches, "listed": listed}


def upload(
    *, batch: Mapping[str, Any], listed: Mapping[str, Any], conn_id: str, threads: int
) -> dict[str, Any]:
    """Upload one batch listed by ``list_files``; return its report as a small dict."""
    client = container_client(conn_id, listed["container"])
    entries = read_listing(client, batch["listing"])
    report = upload_batch(
        client,
        listed["directory"],
        entries,
        batch=batch["batch"],
        prefix=listed["prefix"],
        threads=threads,
    )
    log.info(
        "Batch %d: %d files, %d bytes stored in %.1fs; %d skipped, %d vanished",
        report.batch, report.files, report.bytes, report.seconds,
        report.skipped_count, report.vanished_count,
    )
    return report.__dict__


def summarize(listed: Mapping[str, Any], reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The run's result: counts summed over the batches, and every problem named (up to a cap)."""
    merged = BatchReport(batch=-1)
    for report in reports:  # a lazy XCom sequence: iterate, never index by position
        merged.files += report["files"]
        merged.bytes += report["bytes"]
        merged.skipped_count += report["skipped_count"]
        merged.vanished_count += report["vanished_count"]
        merged.failed_count += report["failed_count"]
        merged.skipped.extend(report["skipped"][: REPORT_NAMES - len(merged.skipped)])
        merged.vanished.extend(report["vanished"][: REPORT_NAMES - len(merged.vanished)])
        merged.failed.extend(report["failed"][: REPORT_NAMES - len(merged.failed)])
    skipped = [*listed["skipped"], *merged.skipped][:REPORT_NAMES]
    return {
        "directory": listed["directory"],
        "container": listed["container"],
        "files": merged.files,
        "total_bytes": merged.bytes,
        "listed_files": listed["files"],
        "listed_bytes": listed["bytes"],
        "skipped_count": listed["skipped_count"] + merged.skipped_count,
        "skipped": skipped,
        "vanished_count": merged.vanished_count,
        "vanished": merged.vanished,
    }
