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
from dataclasses import dataclass
from typing import Any

from cloud_backup.batching import BatchLimits, make_batches
from cloud_backup.naming import (
    blob_name_for,
    blob_name_problem,
    display,
    validate_container,
    validate_prefix,
)
from cloud_backup.store import (
    PartWriter,
    compose,
    container_client,
    distrust_latest,
    ensure_container,
    inventory,
    manifest_inventory,
    read_latest,
    read_listing,
    read_part,
    run_folder,
    unpack_stored,
    write_latest,
    write_listing,
)
from cloud_backup.upload import REPORT_NAMES, BatchReport, FileOutcome, upload_batch
from cloud_backup.verify import VerificationFailed, verify_manifest
from cloud_backup.walk import FileEntry, Skipped, walk_tree

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """The run's configuration cannot be backed up; the message says which field and why."""


ALLOWED_ROOTS_VARIABLE = "cloud_backup_allowed_roots"
ALLOWED_ROOTS_ENV = "CLOUD_BACKUP_ALLOWED_ROOTS"


def parse_allowed_roots(*values: str | None) -> list[str]:
    """Directory roots from settings: each value a JSON list of paths or an ``os.pathsep`` list.

    A root must be an absolute path; a relative one is a deployment mistake and is refused.
    """
    roots: list[str] = []
    for value in values:
        if not value or not value.strip():
            continue
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError as exc:
                raise BadRequest(f"allowed roots setting is not a valid JSON list: {exc}") from exc
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise BadRequest("allowed roots setting must be a JSON list of paths")
        else:
            items = text.split(os.pathsep)
        for item in (i.strip() for i in items):
            if not item:
                continue
            if not item.startswith("/"):
                raise BadRequest(f"allowed root {item!r} is not an absolute path")
            roots.append(item)
    return roots


def deployment_allowed_roots() -> list[str]:
    """The deployment's allowed roots: the Airflow Variable and the environment variable, combined.

    Read at run time (inside a task), never when a DAG file is parsed.
    """
    from airflow.sdk import Variable

    return parse_allowed_roots(Variable.get(ALLOWED_ROOTS_VARIABLE, default=None),
                               os.environ.get(ALLOWED_ROOTS_ENV))


def check_allowed(directory: str, roots: Sequence[str]) -> None:
    """Refuse ``directory`` unless it lies under one of ``roots`` once ``..`` and symlinks resolve.

    The check runs on real paths, so ``/allowed/../etc`` or a symlink under a root that points
    outside it is refused; it runs before any existence check, so a refusal reveals nothing.
    """
    if not roots:
        raise BadRequest(
            "directory is refused: no directory may be backed up until the deployment lists the "
            f"allowed roots (Airflow Variable {ALLOWED_ROOTS_VARIABLE!r} or environment variable "
            f"{ALLOWED_ROOTS_ENV})"
        )
    real = os.path.realpath(directory)
    for root in roots:
        real_root = os.path.realpath(root)
        if os.path.commonpath([real, real_root]) == real_root:
            return
    shown = f"{directory!r}" + (f" (resolves to {real!r})" if real != directory else "")
    raise BadRequest(
        f"directory {shown} is outside the allowed roots {list(roots)!r}; the deployment setting "
        f"{ALLOWED_ROOTS_VARIABLE!r} / {ALLOWED_ROOTS_ENV} lists what may be backed up"
    )


def check_directory(directory: Any, allowed_roots: Sequence[str] | None = None) -> str:
    """Validate the ``directory`` conf value; return it normalised (absolute, no trailing slash).

    With ``allowed_roots`` (None skips that check, for callers that already did it), the
    directory must also lie under one of them.
    """
    if not isinstance(directory, str) or not directory.strip():
        raise BadRequest(f"directory must be a non-empty string, got {directory!r}")
    if not directory.startswith("/"):
        raise BadRequest(
            f"directory must be an absolute POSIX path (starting with '/'), got {directory!r}"
        )
    normal = os.path.normpath(directory)
    if allowed_roots is not None:
        check_allowed(normal, allowed_roots)
    if not os.path.exists(normal):
        raise BadRequest(f"directory {directory!r} does not exist on this worker")
    if not os.path.isdir(normal):
        raise BadRequest(f"directory {directory!r} is not a directory")
    if not os.access(normal, os.R_OK | os.X_OK):
        raise BadRequest(f"directory {directory!r} cannot be read by this worker (permission denied)")
    return normal


@dataclass(frozen=True)
class BackupOptions:
    """How a run decides what to upload and what to remove."""

    incremental: bool = True  # skip files whose blob already matches
    checksum: bool = False  # compare MD5s (reading every file of unchanged size), not size+mtime
    mirror: bool = False  # delete blobs whose files are gone locally
    max_delete_fraction: float = 0.05  # mirror refuses to delete more than this share of blobs


def _read_spool(spool: Any) -> Iterator[FileEntry]:
    spool.seek(0)
    for line in spool:
        yield FileEntry(*json.loads(line))


def list_files(
    *,
    directory: Any,
    container: str,
    prefix: str | None,
    conn_id: str,
    dag_id: str,
    run_id: str,
    manifest: str,
    limits: BatchLimits,
    options: BackupOptions = BackupOptions(),
    allowed_roots: Sequence[str] | None,
) -> dict[str, Any]:
    """Walk, decide what changed, batch, store the batch listings.

    Returns ``{"batches": [...], "listed": {...}}``: the references to map over, and what the
    later tasks need (counts, the run's folder, the manifest name, the options). ``directory``
    must lie under ``allowed_roots`` (None: the caller checked already).
    """
    directory = check_directory(directory, allowed_roots)
    try:
        container = validate_container(container)
        prefix = validate_prefix(prefix)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    client = container_client(conn_id, container)
    ensure_container(client)
    folder = run_folder(dag_id, run_id)
    name_prefix = blob_name_for(directory, "", prefix)
    stored, source = stored_state(client, directory, prefix, options)
    stored_count = len(stored)
    log.info("The container holds %d blobs under this directory's names (from %s)",
             stored_count, source)
    skipped: list[Skipped] = []
    unreadable: list[str] = []
    files = total = skipped_count = unchanged = unchanged_bytes = 0
    batches: list[dict[str, Any]] = []
    # surrogateescape keeps undecodable names intact until naming rejects them with a reason.
    with (
        tempfile.TemporaryFile("w+", encoding="utf-8", errors="surrogateescape") as spool,
        PartWriter(client, f"{folder}listed-skipped.jsonl.gz") as skipped_part,
        PartWriter(client, f"{folder}listed-unchanged.jsonl.gz") as unchanged_part,
        PartWriter(client, f"{folder}listed-kept.jsonl.gz") as kept_part,
    ):
        for item in walk_tree(directory):
            packed = stored.pop(blob_name_for(directory, item.rel, prefix), None)
            if isinstance(item, Skipped):
                if item.rel.endswith("/"):  # an unreadable directory: its blobs are not "gone"
                    unreadable.append(blob_name_for(directory, item.rel, prefix))
                skipped_count += 1
                log.warning("Skipped %s: %s", display(item.rel), item.reason)
                skipped_part.write({"path": item.rel, "status": "skipped", "reason": item.reason})
                if packed is not None:  # not backed up now, but an earlier copy stays restorable
                    kept_part.write(_kept(
                        item.rel, blob_name_for(directory, item.rel, prefix), *unpack_stored(packed),
                        f"skipped in this run ({item.reason}); earlier copy kept", in_tree=True,
                    ))
                if len(skipped) < REPORT_NAMES:
                    skipped.append(item)
                continue
            stored_md5 = stored_mtime = None
            if packed is not None and options.incremental:
                size, mtime_ns, md5 = unpack_stored(packed)
                if md5 and size == item.size:
                    if not options.checksum and mtime_ns == item.mtime_ns:
                        unchanged += 1
                        unchanged_bytes += size
                        unchanged_part.write(
                            {"path": item.rel, "blob": blob_name_for(directory, item.rel, prefix),
                             "status": "unchanged", "size": size, "mtime_ns": mtime_ns,
                             "md5": md5.hex()}
                        )
                        continue
                    if options.checksum:
                        stored_md5, stored_mtime = md5.hex(), mtime_ns
            files += 1
            total += item.size
            spool.write(
                json.dumps([item.rel, item.size, item.mtime_ns, stored_md5, stored_mtime]) + "\n"
            )
        # What is left in `stored` has no file any more: deleted locally since it was backed up,
        # or under a directory this run could not read. Unless mirrored away, such blobs stay,
        # and the manifest says so ("kept"): it describes all the container holds for the tree.
        gone = sorted(n for n in stored if not n.startswith(tuple(unreadable)))
        for name in sorted(stored):
            if options.mirror and not name.startswith(tuple(unreadable)):
                continue  # deleted by the reduce, recorded there
            in_tree = name.startswith(tuple(unreadable))
            kept_part.write(_kept(
                name[len(name_prefix):], name, *unpack_stored(stored[name]),
                "directory unreadable in this run" if in_tree else "file deleted locally",
                in_tree=in_tree,
            ))
        del stored
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
    if options.mirror and gone:
        share = len(gone) / stored_count
        if share > options.max_delete_fraction:
            raise BadRequest(
                f"mirror would delete {len(gone)} of {stored_count} blobs ({share:.1%}), more than "
                f"max_delete_fraction={options.max_delete_fraction:.1%}: refusing; raise the limit "
                "if these deletions are intended"
            )
    with PartWriter(client, f"{folder}to-delete.jsonl.gz") as to_delete:
        for name in gone if options.mirror else ():
            to_delete.write(name)
    log.info(
        "Listed %d files to upload (%d bytes) under %s into %d batches; %d unchanged (%d bytes); "
        "%d entries skipped; %d blobs have no file any more%s",
        files, total, directory, len(batches), unchanged, unchanged_bytes, skipped_count,
        len(gone), " and will be deleted (mirror)" if options.mirror else " (kept)",
    )
    listed = {
        "directory": directory,
        "container": container,
        "prefix": prefix,
        "folder": folder,
        "manifest": manifest,
        "batch_count": len(batches),
        "files": files,
        "bytes": total,
        "unchanged_count": unchanged,
        "unchanged_bytes": unchanged_bytes,
        "skipped_count": skipped_count,
        "skipped": [[display(s.rel), s.reason] for s in skipped],
        "gone_count": len(gone),
        "mirror": options.mirror,
        "compared_with": source,
    }
    return {"batches": batches, "listed": listed}


def stored_state(
    client: Any, directory: str, prefix: str, options: BackupOptions
) -> tuple[dict[str, bytes], str]:
    """What the container holds under ``directory``'s names, and where that knowledge came from.

    The latest successful backup's manifest says it in one download; a listing of the container
    is the fallback when there is none, when a verify found the container no longer matches it,
    and for mirror runs, whose deletions must rest on what is really there.
    """
    from azure.core.exceptions import ResourceNotFoundError

    latest = None if options.mirror else read_latest(client, directory, prefix)
    if latest and latest.get("listing_required"):
        log.warning("Not trusting the latest manifest %s (%s): listing the container",
                    latest["manifest"], latest["listing_required"])
    elif latest:
        try:
            return manifest_inventory(client, latest["manifest"]), f"manifest {latest['manifest']}"
        except ResourceNotFoundError:
            log.warning("The latest manifest %s is gone: listing the container", latest["manifest"])
    return inventory(client, blob_name_for(directory, "", prefix)), "a listing of the container"


def verify(listed: Mapping[str, Any], mode: str, conn_id: str) -> dict[str, Any] | None:
    """Check the run's manifest against the container (``mode`` quick or full; off: do nothing).

    On a mismatch the latest-backup record stops vouching for the container, so the next run
    lists it and re-uploads what is missing or altered, then the run fails naming the files.
    """
    if mode == "off":
        return None
    client = container_client(conn_id, listed["container"])
    try:
        return verify_manifest(client, listed["manifest"],
                               blob_name_for(listed["directory"], "", listed["prefix"]), mode)
    except VerificationFailed as exc:
        distrust_latest(client, listed["directory"], listed["prefix"], listed["manifest"],
                        f"verify ({mode}) failed: {str(exc).splitlines()[0]}")
        raise


def upload(
    *, batch: Mapping[str, Any], listed: Mapping[str, Any], conn_id: str, threads: int
) -> dict[str, Any]:
    """Upload one batch listed by ``list_files``; record every file's outcome for the manifest."""
    client = container_client(conn_id, listed["container"])
    entries = read_listing(client, batch["listing"])
    with PartWriter(client, f"{listed['folder']}result-{batch['batch']:05d}.jsonl.gz") as part:
        report = upload_batch(
            client,
            listed["directory"],
            entries,
            batch=batch["batch"],
            prefix=listed["prefix"],
            threads=threads,
            on_outcome=lambda outcome: _record(client, part, outcome),
        )
    log.info(
        "Batch %d: %d files, %d bytes stored in %.1fs; %d unchanged, %d skipped, %d vanished",
        report.batch, report.files, report.bytes, report.seconds, report.unchanged_count,
        report.skipped_count, report.vanished_count,
    )
    return report.__dict__


def _record(client: Any, part: PartWriter, outcome: FileOutcome) -> None:
    """The outcome's manifest line, and for a file not stored now (skipped, vanished) the blob an
    earlier run stored as ``kept``: the next run's comparison sees that copy, and restores bring
    it back while the file is still in the tree (``in_tree``; not for a deleted file)."""
    part.write(outcome.record())
    if outcome.status not in ("skipped", "vanished") or blob_name_problem(outcome.blob):
        return
    from azure.core.exceptions import ResourceNotFoundError

    try:
        props = client.get_blob_client(outcome.blob).get_blob_properties()
    except ResourceNotFoundError:
        return
    md5 = props.content_settings.content_md5
    mtime = props.metadata.get("cb_mtime_ns")
    log.warning("%s was not backed up in this run; its copy from an earlier run is kept",
                display(outcome.rel))
    part.write(_kept(
        outcome.rel, outcome.blob, props.size, int(mtime) if mtime else None,
        bytes(md5) if md5 else None,
        f"{outcome.status} in this run ({outcome.reason}); earlier copy kept",
        in_tree=outcome.status == "skipped",
    ))


def _kept(rel: str, blob: str, size: int, mtime_ns: int | None, md5: bytes | None, reason: str,
          *, in_tree: bool) -> dict[str, Any]:
    """A manifest line for a blob an earlier run stored, left as it is by this one."""
    return {"path": rel, "blob": blob, "status": "kept", "size": size, "mtime_ns": mtime_ns,
            "md5": md5.hex() if md5 else None, "reason": reason, "in_tree": in_tree}


def finish(
    listed: Mapping[str, Any], reports: Sequence[Mapping[str, Any]], conn_id: str, dag_id: str,
    run_id: str,
) -> dict[str, Any]:
    """The reduce: sum the batches, apply mirror deletions, write the manifest, name every problem.

    Runs only after every batch succeeded, so deletions never precede the uploads they mirror.
    """
    merged = BatchReport(batch=-1)
    for report in reports:  # a lazy XCom sequence: iterate, never index by position
        merged.files += report["files"]
        merged.bytes += report["bytes"]
        merged.unchanged_count += report["unchanged_count"]
        merged.unchanged_bytes += report["unchanged_bytes"]
        merged.skipped_count += report["skipped_count"]
        merged.vanished_count += report["vanished_count"]
        merged.skipped.extend(report["skipped"][: REPORT_NAMES - len(merged.skipped)])
        merged.vanished.extend(report["vanished"][: REPORT_NAMES - len(merged.vanished)])
    client = container_client(conn_id, listed["container"])
    folder = listed["folder"]
    deleted = _delete_gone(client, folder) if listed["mirror"] else 0
    parts = [f"{folder}listed-skipped.jsonl.gz", f"{folder}listed-unchanged.jsonl.gz",
             f"{folder}listed-kept.jsonl.gz"]
    parts += [f"{folder}result-{i:05d}.jsonl.gz" for i in range(listed["batch_count"])]
    parts.append(f"{folder}deleted.jsonl.gz")
    compose(client, listed["manifest"], parts)
    unchanged = listed["unchanged_count"] + merged.unchanged_count
    unchanged_bytes = listed["unchanged_bytes"] + merged.unchanged_bytes
    summary = {
        "directory": listed["directory"],
        "container": listed["container"],
        "prefix": listed["prefix"],
        "manifest": listed["manifest"],
        "files": merged.files,
        "total_bytes": merged.bytes,
        "unchanged": unchanged,
        "unchanged_bytes": unchanged_bytes,
        "protected_files": merged.files + unchanged,
        "protected_bytes": merged.bytes + unchanged_bytes,
        "skipped_count": listed["skipped_count"] + merged.skipped_count,
        "skipped": [*listed["skipped"], *merged.skipped][:REPORT_NAMES],
        "vanished_count": merged.vanished_count,
        "vanished": merged.vanished,
        "deleted": deleted,
        "kept_without_file": 0 if listed["mirror"] else listed["gone_count"],
        "compared_with": listed["compared_with"],
    }
    write_latest(client, listed["directory"], listed["prefix"],
                 {"manifest": listed["manifest"], "dag_id": dag_id, "run_id": run_id,
                  "protected_files": summary["protected_files"],
                  "protected_bytes": summary["protected_bytes"]})
    return summary


def _delete_gone(client: Any, folder: str) -> int:
    """Delete the blobs ``list_files`` found without a file; record each in a manifest part."""
    from azure.core.exceptions import ResourceNotFoundError

    count = 0
    with PartWriter(client, f"{folder}deleted.jsonl.gz") as part:
        for name in read_part(client, f"{folder}to-delete.jsonl.gz"):
            try:
                client.delete_blob(name)
            except ResourceNotFoundError:
                pass  # a retried reduce already deleted it
            part.write({"blob": name, "status": "deleted", "reason": "file deleted locally"})
            count += 1
    log.info("Mirror: deleted %d blobs whose files are gone", count)
    return count
