"""Verify a backup against its manifest: every stored file is in the container, same size, same MD5.

``quick`` compares the container's own listing (size and Content-MD5 of each blob, one listing for
the whole run) with the manifest; ``full`` also reads every blob back and hashes its bytes, which
catches a blob whose bytes were altered without its Content-MD5 property.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from cloud_backup.naming import display
from cloud_backup.store import inventory, read_part, unpack_stored

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

log = logging.getLogger(__name__)
MODES = ("off", "quick", "full")
REPORT_NAMES = 50


class VerificationFailed(RuntimeError):
    """The container does not hold what the manifest says was backed up."""


def _read_md5(client: ContainerClient, blob: str) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    for chunk in client.download_blob(blob, decompress=False).chunks():
        md5.update(chunk)
    return md5.hexdigest()


def verify_manifest(
    client: ContainerClient, manifest: str, name_prefix: str, mode: str = "quick", threads: int = 8
) -> dict[str, Any]:
    """Check every uploaded/unchanged file of ``manifest``; raise ``VerificationFailed`` naming them."""
    if mode not in MODES[1:]:
        raise ValueError(f"verify mode must be one of {MODES}, got {mode!r}")
    stored = inventory(client, name_prefix)
    problems: list[str] = []
    problem_count = checked = checked_bytes = 0
    to_read: list[tuple[str, str, str]] = []

    def problem(text: str) -> None:
        nonlocal problem_count
        problem_count += 1
        if len(problems) < REPORT_NAMES:
            problems.append(text)

    for record in read_part(client, manifest):
        if record.get("status") not in ("uploaded", "unchanged"):
            continue
        checked += 1
        checked_bytes += record["size"]
        name, path = record["blob"], display(record["path"])
        packed = stored.get(name)
        if packed is None:
            problem(f"{path}: blob {name!r} is missing")
            continue
        size, _mtime, md5 = unpack_stored(packed)
        if size != record["size"]:
            problem(f"{path}: blob holds {size} bytes, manifest says {record['size']}")
        elif md5 is None or md5.hex() != record["md5"]:
            problem(f"{path}: blob Content-MD5 {md5.hex() if md5 else None} != {record['md5']}")
        elif mode == "full":
            to_read.append((name, path, record["md5"]))
    if to_read:
        with ThreadPoolExecutor(threads) as pool:
            for (name, path, expected), actual in zip(
                to_read, pool.map(lambda item: _read_md5(client, item[0]), to_read), strict=True
            ):
                if actual != expected:
                    problem(f"{path}: blob bytes hash to {actual}, manifest says {expected}")
    result = {"manifest": manifest, "mode": mode, "checked_files": checked,
              "checked_bytes": checked_bytes, "problems": problem_count}
    log.info("Verified %d files (%d bytes) of %s (%s): %d problems",
             checked, checked_bytes, manifest, mode, problem_count)
    if problem_count:
        raise VerificationFailed(
            f"{problem_count} of {checked} files do not match the manifest {manifest}:\n  "
            + "\n  ".join(problems)
        )
    return result
