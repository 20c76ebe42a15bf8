"""Restore a backup (or a sub-path of it) from its manifest into a target directory.

Same fan-out shape as the backup: ``plan_restore`` reads the manifest and stores batch listings,
``restore_batch`` downloads one batch, the reduce sums. Each file is streamed to a temporary file
beside its destination while its MD5 is computed, checked against the manifest, given its recorded
modification time, then renamed into place: a file is either fully restored or not there at all.
A download chunk (4-32 MiB) of only zeros is left as a hole, so a sparse file comes back sparse.
Existing files are never overwritten unless asked, and nothing is written outside the target.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloud_backup.batching import BatchLimits, make_batches
from cloud_backup.naming import display
from cloud_backup.store import PartWriter, read_latest, read_part

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

log = logging.getLogger(__name__)
REPORT_NAMES = 50


class RestoreRefused(ValueError):
    """The restore cannot start: the message says why (no backup, conflicts, a bad target)."""


class RestoreFailed(RuntimeError):
    """Some files could not be restored intact."""


@dataclass(frozen=True)
class RestoreItem:
    rel: str
    size: int
    mtime_ns: int
    md5: str
    blob: str


def check_target(target: Any) -> str:
    if not isinstance(target, str) or not target.startswith("/"):
        raise RestoreRefused(f"target must be an absolute path, got {target!r}")
    normal = os.path.normpath(target)
    if os.path.exists(normal) and not os.path.isdir(normal):
        raise RestoreRefused(f"target {target!r} exists and is not a directory")
    return normal


def _inside(target: str, rel: str) -> str:
    """The destination of ``rel`` under ``target``; refuse anything that would land outside it."""
    dest = os.path.normpath(os.path.join(target, rel))
    if os.path.isabs(rel) or not dest.startswith(target.rstrip("/") + "/"):
        raise RestoreRefused(f"manifest path {display(rel)!r} points outside the target")
    # An existing directory on the way that is a symlink could lead out of the target.
    parent = os.path.dirname(dest)
    if os.path.exists(parent) and not os.path.realpath(parent).startswith(
        os.path.realpath(target).rstrip("/") + "/"
    ) and os.path.realpath(parent) != os.path.realpath(target):
        raise RestoreRefused(f"{display(rel)!r}: a directory on its way leads outside the target")
    return dest


def find_manifest(client: ContainerClient, directory: str | None, prefix: str,
                  manifest: str | None) -> str:
    if manifest:
        return manifest
    if not directory:
        raise RestoreRefused("give the backed-up directory (or a manifest) to restore from")
    latest = read_latest(client, os.path.normpath(directory), prefix)
    if latest is None:
        raise RestoreRefused(
            f"no successful backup of {directory!r} (prefix {prefix!r}) in this container"
        )
    return latest["manifest"]


def _items(client: ContainerClient, manifest: str, sub_path: str) -> Iterator[RestoreItem]:
    sub = sub_path.strip("/")
    for record in read_part(client, manifest):
        # "kept" with in_tree: a file this run could not read, restored as an earlier run stored
        # it; other kept blobs belong to files deleted locally, not part of the tree any more.
        restorable = record.get("status") in ("uploaded", "unchanged") or (
            record.get("status") == "kept" and record.get("in_tree") and record.get("md5")
            and record.get("mtime_ns") is not None
        )
        if not restorable:
            continue
        rel = record["path"]
        if sub and rel != sub and not rel.startswith(sub + "/"):
            continue
        yield RestoreItem(rel, record["size"], record["mtime_ns"], record["md5"], record["blob"])


def plan_restore(
    client: ContainerClient,
    *,
    manifest: str,
    target: str,
    sub_path: str,
    overwrite: bool,
    folder: str,
    limits: BatchLimits,
) -> dict[str, Any]:
    """Check the whole restore can proceed, then store batch listings; return refs and counts."""
    conflicts: list[str] = []
    conflict_count = files = total = 0
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="surrogateescape") as spool:
        for item in _items(client, manifest, sub_path):
            dest = _inside(target, item.rel)
            if not overwrite and os.path.lexists(dest):
                conflict_count += 1
                if len(conflicts) < REPORT_NAMES:
                    conflicts.append(display(item.rel))
            files += 1
            total += item.size
            spool.write(json.dumps([item.rel, item.size, item.mtime_ns, item.md5, item.blob]) + "\n")
        if conflict_count:
            raise RestoreRefused(
                f"{conflict_count} files already exist under {target!r} (set overwrite to replace "
                f"them): {', '.join(conflicts)}"
            )
        if files == 0:
            log.warning("Nothing to restore from %s (sub_path %r)", manifest, sub_path)

        def items() -> Iterator[RestoreItem]:
            spool.seek(0)
            for line in spool:
                yield RestoreItem(*json.loads(line))

        batches = []
        for index, batch in enumerate(make_batches(items(), files, total, limits)):
            listing = f"{folder}restore-{index:05d}.jsonl.gz"
            with PartWriter(client, listing) as part:
                for e in batch.files:
                    part.write([e.rel, e.size, e.mtime_ns, e.md5, e.blob])
            batches.append({"batch": index, "listing": listing, "files": len(batch.files),
                            "bytes": batch.bytes, "first": display(batch.files[0].rel)})
    log.info("Restoring %d files (%d bytes) from %s into %s in %d batches",
             files, total, manifest, target, len(batches))
    return {"batches": batches, "files": files, "bytes": total}


def _restore_one(client: ContainerClient, target: str, item: RestoreItem, overwrite: bool) -> int:
    dest = _inside(target, item.rel)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    _inside(target, item.rel)  # again, now that the directories exist
    fd, tmp = tempfile.mkstemp(prefix=".cb-restore-", dir=os.path.dirname(dest))
    try:
        md5, size = hashlib.md5(usedforsecurity=False), 0
        with os.fdopen(fd, "wb") as out:
            for chunk in client.download_blob(item.blob, max_concurrency=4, decompress=False).chunks():
                md5.update(chunk)
                if chunk.count(0) == len(chunk):  # a hole (or zeros): keep the file sparse
                    out.seek(len(chunk), os.SEEK_CUR)
                else:
                    out.write(chunk)
                size += len(chunk)
            out.truncate(size)  # the length, when the file ends in a hole
        if size != item.size or md5.hexdigest() != item.md5:
            raise RestoreFailed(
                f"{display(item.rel)}: blob {item.blob!r} gave {size} bytes with MD5 "
                f"{md5.hexdigest()}, manifest says {item.size} bytes, {item.md5}"
            )
        os.utime(tmp, ns=(item.mtime_ns, item.mtime_ns))
        if not overwrite and os.path.lexists(dest):
            raise RestoreRefused(f"{display(item.rel)} appeared in the target during the restore")
        os.replace(tmp, dest)
        return size
    except BaseException:
        os.unlink(tmp)
        raise


def restore_batch(client: ContainerClient, target: str, listing: str, overwrite: bool,
                  threads: int = 8) -> dict[str, Any]:
    """Download one batch; raise ``RestoreFailed`` naming the files that did not restore intact."""
    items = [RestoreItem(*record) for record in read_part(client, listing)]
    errors: list[str] = []

    def one(item: RestoreItem) -> int:
        try:
            return _restore_one(client, target, item, overwrite)
        except Exception as exc:  # reported together below; the other files still restore
            errors.append(f"{display(item.rel)}: {type(exc).__name__}: {exc}")
            return 0

    with ThreadPoolExecutor(threads) as pool:
        restored = list(pool.map(one, items))
    if errors:
        raise RestoreFailed(f"{len(errors)} of {len(items)} files not restored: "
                            + "; ".join(errors[:REPORT_NAMES]))
    return {"files": len(items), "bytes": sum(restored)}
