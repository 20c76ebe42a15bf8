"""Upload one batch of files: concurrent, streamed, idempotent, and consistent under change.

- Small files (<= ``SINGLE_PUT_MAX``) are read whole and sent in one Put Blob; large files are read
  sequentially and staged as blocks in parallel, with a bounded number in flight, then committed.
  Memory stays bounded whatever the file sizes.
- Every blob carries Content-MD5 (computed while reading, also for block uploads, where the SDK
  sets none) and metadata ``cb_size``/``cb_mtime_ns``, so "unchanged" can be decided from a listing.
- ``overwrite=True``: a retry or a cleared rerun rewrites the same bytes, never fails on "exists".
- A file that changes while it is read (size, mtime, ctime or inode differ between the stats taken
  before and after) is read again; a block upload is only committed from a consistent read, so a
  blob never mixes two versions. After ``MAX_READ_ATTEMPTS`` it is reported, not stored.
- Files that vanished, cannot be opened, or are no longer regular files are reported with a reason;
  storage errors on some files do not stop the others, then fail the task so Airflow retries it.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import itertools
import logging
import math
import mimetypes
import os
import queue
import stat
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cloud_backup.naming import blob_name_for, blob_name_problem, display
from cloud_backup.walk import FileEntry

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

log = logging.getLogger(__name__)

SINGLE_PUT_MAX = 4 * 1024**2
# Azurite (the bottleneck here) spends CPU per request as well as per byte: 8 x 1 GiB cost it
# 36-42 CPU-s in 8 MiB blocks and 29-32 CPU-s in 32 or 64 MiB blocks (26-29 s instead of 31-34 s
# in-process, 2026-12-04). Smaller files get smaller blocks so each still goes up in parallel.
BLOCK_SIZE = 32 * 1024**2
MIN_BLOCK_SIZE = 4 * 1024**2
# Azure's limit: past 1.5 TiB blocks grow beyond BLOCK_SIZE, and memory with them (~64 MiB each at
# 3 TiB).
MAX_BLOCKS_PER_BLOB = 50_000
# Large files a batch uploads at once, and blocks in flight for each. Azurite burns less CPU per
# byte the more blobs it receives at once: one file at a time was slower than two; 8 (4 per
# batch, the DAG's large-file batches being at most 2) measured slower again.
# Memory holds ~BLOCK_SIZE per block read and not yet sent: (8 + 2) x 32 MiB = 320 MiB per batch.
LARGE_FILES_AT_ONCE = 2
BLOCKS_IN_FLIGHT = 4
FILE_THREADS = 16
MAX_READ_ATTEMPTS = 3
# How many skipped/failed paths a batch report names; the counts are always complete.
REPORT_NAMES = 100


class BatchUploadError(RuntimeError):
    """Some files of a batch could not be stored because the storage refused or failed."""


@dataclass
class FileOutcome:
    rel: str
    blob: str
    status: str  # "uploaded" | "unchanged" | "vanished" | "skipped" | "failed"
    bytes: int = 0
    md5: str = ""
    reason: str = ""
    mtime_ns: int | None = None

    def record(self) -> dict[str, object]:
        """This outcome as a manifest line."""
        line: dict[str, object] = {"path": self.rel, "blob": self.blob, "status": self.status}
        if self.status in ("uploaded", "unchanged"):
            line.update(size=self.bytes, mtime_ns=self.mtime_ns, md5=self.md5)
        if self.reason:
            line["reason"] = self.reason
        return line


@dataclass
class BatchReport:
    """What a batch did. ``bytes`` counts only what was stored."""

    batch: int
    files: int = 0
    bytes: int = 0
    unchanged_count: int = 0
    unchanged_bytes: int = 0
    skipped_count: int = 0
    vanished_count: int = 0
    failed_count: int = 0
    skipped: list[list[str]] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    failed: list[list[str]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, outcome: FileOutcome) -> None:
        name = display(outcome.rel)
        if outcome.status == "uploaded":
            self.files += 1
            self.bytes += outcome.bytes
        elif outcome.status == "unchanged":
            self.unchanged_count += 1
            self.unchanged_bytes += outcome.bytes
        elif outcome.status == "vanished":
            self.vanished_count += 1
            if len(self.vanished) < REPORT_NAMES:
                self.vanished.append(name)
        elif outcome.status == "skipped":
            self.skipped_count += 1
            if len(self.skipped) < REPORT_NAMES:
                self.skipped.append([name, outcome.reason])
        else:
            self.failed_count += 1
            if len(self.failed) < REPORT_NAMES:
                self.failed.append([name, outcome.reason])


@dataclass(frozen=True)
class _Snapshot:
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Snapshot:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class _Changed(Exception):
    """The file changed while it was read."""


# A compressed file is stored as the bytes it is, never with a Content-Encoding: with one, HTTP
# clients (the SDK's download included) hand back the *decompressed* bytes.
_COMPRESSED_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
                     "xz": "application/x-xz", "br": "application/x-brotli",
                     "compress": "application/x-compress"}


def _content_settings(rel: str, md5: bytes):  # -> ContentSettings
    from azure.storage.blob import ContentSettings

    content_type, encoding = mimetypes.guess_type(rel, strict=False)
    if encoding:
        content_type = _COMPRESSED_TYPES.get(encoding, "application/octet-stream")
    return ContentSettings(
        content_type=content_type or "application/octet-stream", content_md5=bytearray(md5)
    )


def _metadata(snap: _Snapshot) -> dict[str, str]:
    return {"cb_size": str(snap.size), "cb_mtime_ns": str(snap.mtime_ns)}


def block_size_for(size: int) -> int:
    """Blocks of ``BLOCK_SIZE``, smaller for files with fewer than ``BLOCKS_IN_FLIGHT`` of them."""
    mib = 1024**2
    spread = math.ceil(size / BLOCKS_IN_FLIGHT / mib) * mib
    return max(MIN_BLOCK_SIZE, min(BLOCK_SIZE, spread), math.ceil(size / MAX_BLOCKS_PER_BLOB))


def _read_all(fd: int, size: int) -> bytes:
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, max(size - offset, 0) + 1, offset)  # +1 to see growth past size
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


class _BufferPool:
    """At most ``count`` block buffers, allocated on first use and reused: reading each block into
    a fresh ``bytes`` cost ~3x the CPU (a new mapping, page faults and zeroing per block: 0.62
    against 0.19 CPU-s per GiB, 2026-12-04), and the CPU here is shared with the store."""

    def __init__(self, count: int, size: int) -> None:
        self._size = size
        self._free: queue.LifoQueue[memoryview] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(count)

    def take(self, size: int) -> memoryview:
        """A buffer of exactly ``size`` bytes; blocks while ``count`` are in use."""
        self._slots.acquire()
        try:
            buffer = self._free.get_nowait()
        except queue.Empty:
            buffer = memoryview(bytearray(max(size, self._size)))
        if len(buffer) < size:  # blocks beyond BLOCK_SIZE (files over 1.5 TiB)
            buffer = memoryview(bytearray(size))
        return buffer[:size]

    def give(self, buffer: memoryview) -> None:
        self._free.put(memoryview(buffer.obj))
        self._slots.release()


def _open(path: str, rel: str, blob: str, *, again: bool) -> int | FileOutcome:
    """The file's descriptor, or why it cannot be read."""
    try:
        # O_NOFOLLOW: a file replaced by a symlink is not followed out of the tree.
        # O_NONBLOCK: a file replaced by a FIFO cannot hang the open.
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        when = "while it was read" if again else "after it was listed"
        return FileOutcome(rel, blob, "vanished", reason=f"deleted {when}")
    except PermissionError:
        return FileOutcome(rel, blob, "skipped", reason="permission denied")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return FileOutcome(rel, blob, "skipped", reason="became a symlink (not followed)")
        return FileOutcome(rel, blob, "skipped", reason=f"cannot open: {exc.strerror}")


class Uploader:
    """Uploads files into one container with one client; safe to call from many threads."""

    def __init__(
        self, client: ContainerClient, block_threads: int = LARGE_FILES_AT_ONCE * BLOCKS_IN_FLIGHT
    ) -> None:
        self.client = client
        self._block_pool = ThreadPoolExecutor(block_threads, thread_name_prefix="block")
        # Blocks read but not yet sent: the pool's work plus one being read per large file.
        self._buffers = _BufferPool(block_threads + LARGE_FILES_AT_ONCE, BLOCK_SIZE)

    def close(self) -> None:
        self._block_pool.shutdown(wait=True)

    def upload_file(self, directory: str, entry: FileEntry, blob: str) -> FileOutcome:
        """Store one file as ``blob``; never raises for local problems, only for storage errors."""
        rel = entry.rel
        problem = blob_name_problem(blob)
        if problem:
            return FileOutcome(rel, blob, "skipped", reason=problem)
        path = os.path.join(directory, rel)
        for attempt in range(MAX_READ_ATTEMPTS):
            # Each try opens the path afresh: a file deleted while it was read is then reported as
            # vanished, and one replaced (renamed over) is read anew, not the old inode again.
            opened = _open(path, rel, blob, again=attempt > 0)
            if isinstance(opened, FileOutcome):
                return opened
            try:
                return self._upload_open_file(opened, entry, blob)
            except _Changed:
                log.warning("%s changed while it was read; reading it again", display(rel))
                time.sleep(0.05)
            finally:
                os.close(opened)
        return FileOutcome(
            rel, blob, "skipped", reason=f"kept changing while read ({MAX_READ_ATTEMPTS} tries)"
        )

    def _upload_open_file(self, fd: int, entry: FileEntry, blob: str) -> FileOutcome:
        """One consistent read and upload of an open file; raises ``_Changed`` if it changed."""
        rel = entry.rel
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return FileOutcome(rel, blob, "skipped", reason="no longer a regular file")
        snap = _Snapshot.of(st)
        try:
            if entry.stored_md5 and snap.size == entry.size:
                if self._hash(fd, snap).hex() == entry.stored_md5:
                    if entry.stored_mtime_ns != snap.mtime_ns:  # as rclone does
                        self.client.get_blob_client(blob).set_blob_metadata(_metadata(snap))
                    return FileOutcome(rel, blob, "unchanged", snap.size, entry.stored_md5,
                                       mtime_ns=snap.mtime_ns)
            if snap.size <= SINGLE_PUT_MAX:
                size, md5 = self._put_small(fd, rel, blob, snap)
            else:
                size, md5 = self._put_blocks(fd, rel, blob, snap)
        except OSError as exc:
            return FileOutcome(rel, blob, "skipped", reason=f"read error: {exc.strerror}")
        return FileOutcome(rel, blob, "uploaded", size, md5.hex(), mtime_ns=snap.mtime_ns)

    def _hash(self, fd: int, snap: _Snapshot) -> bytes:
        """MD5 of a consistent read of the file (for ``checksum`` runs)."""
        md5, offset = hashlib.md5(usedforsecurity=False), 0
        buffer = memoryview(bytearray(min(BLOCK_SIZE, snap.size + 1)))
        while read := os.preadv(fd, [buffer], offset):
            md5.update(buffer[:read])
            offset += read
        self._check_unchanged(fd, snap, offset)
        return md5.digest()

    def _check_unchanged(self, fd: int, before: _Snapshot, read: int) -> None:
        after = _Snapshot.of(os.fstat(fd))
        if after != before or read != before.size:
            raise _Changed

    def _put_small(self, fd: int, rel: str, blob: str, snap: _Snapshot) -> tuple[int, bytes]:
        data = _read_all(fd, snap.size)
        self._check_unchanged(fd, snap, len(data))
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        self.client.upload_blob(
            blob,
            data,
            length=len(data),
            overwrite=True,
            content_settings=_content_settings(rel, md5),
            metadata=_metadata(snap),
        )
        return len(data), md5

    def _put_blocks(self, fd: int, rel: str, blob: str, snap: _Snapshot) -> tuple[int, bytes]:
        from azure.storage.blob import BlobBlock

        blob_client = self.client.get_blob_client(blob)
        attempt = uuid.uuid4().hex  # fresh block ids: blocks of an abandoned read are never committed
        md5 = hashlib.md5(usedforsecurity=False)
        blocks: list[BlobBlock] = []
        pending: deque[Future[None]] = deque()
        offset, block_size = 0, block_size_for(snap.size)
        try:
            while True:
                buffer = self._buffers.take(block_size)
                try:  # until the pool owns the buffer, give it back on any failure
                    read = os.preadv(fd, [buffer], offset)
                    if not read:
                        self._buffers.give(buffer)
                        break
                    chunk = buffer[:read]
                    md5.update(chunk)
                    block_id = base64.b64encode(f"{attempt}{len(blocks):010d}".encode()).decode()
                    future = self._block_pool.submit(
                        blob_client.stage_block, block_id, chunk, length=read
                    )
                except BaseException:
                    self._buffers.give(buffer)
                    raise
                blocks.append(BlobBlock(block_id=block_id))
                # The buffer is reused only once its block is sent (or the send is cancelled).
                future.add_done_callback(lambda _f, b=buffer: self._buffers.give(b))
                pending.append(future)
                while pending and pending[0].done():
                    pending.popleft().result()
                offset += read
                if offset > snap.size:
                    raise _Changed
            while pending:
                pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
        self._check_unchanged(fd, snap, offset)
        digest = md5.digest()
        blob_client.commit_block_list(
            blocks, content_settings=_content_settings(rel, digest), metadata=_metadata(snap)
        )
        return offset, digest


def upload_batch(
    client: ContainerClient,
    directory: str,
    entries: list[FileEntry],
    *,
    batch: int,
    prefix: str = "",
    threads: int = FILE_THREADS,
    on_outcome: Callable[[FileOutcome], None] | None = None,
) -> BatchReport:
    """Upload ``entries`` (relative to ``directory``) and report what happened to each.

    ``on_outcome`` sees every file's outcome, in the calling thread (for the run's manifest).
    Raises ``BatchUploadError`` after trying every file if the storage failed any of them.
    """
    started = time.monotonic()
    report = BatchReport(batch=batch)
    uploader = Uploader(client)
    small = [e for e in entries if e.size <= SINGLE_PUT_MAX]
    large = [e for e in entries if e.size > SINGLE_PUT_MAX]
    errors: list[tuple[str, Exception]] = []

    def one(entry: FileEntry) -> FileOutcome:
        blob = blob_name_for(directory, entry.rel, prefix)
        try:
            return uploader.upload_file(directory, entry, blob)
        except Exception as exc:  # storage or network error: report it, keep going, fail at the end
            errors.append((entry.rel, exc))
            return FileOutcome(entry.rel, blob, "failed", reason=f"{type(exc).__name__}: {exc}")

    try:
        with (
            ThreadPoolExecutor(threads, thread_name_prefix="file") as pool,
            ThreadPoolExecutor(LARGE_FILES_AT_ONCE, thread_name_prefix="large") as large_pool,
        ):
            # Large files go a few at a time, each with its blocks in parallel, beside the small.
            large_outcomes = large_pool.map(one, large)
            small_outcomes = pool.map(one, small)
            for outcome in itertools.chain(large_outcomes, small_outcomes):
                _log_outcome(report, outcome)
                if on_outcome:
                    on_outcome(outcome)
    finally:
        uploader.close()
    report.seconds = round(time.monotonic() - started, 3)
    if errors:
        from azure.core.exceptions import ClientAuthenticationError

        message = _failure_message(batch, len(entries), errors)
        refused = [exc for _, exc in errors if _credentials_refused(exc)]
        if refused:  # raised as itself, so the DAG's retry policy fails the task at once
            raise ClientAuthenticationError(message=message) from refused[0]
        raise BatchUploadError(message) from errors[0][1]
    return report


# Azure answers a wrong key with 403 AuthenticationFailed (which the SDK raises as
# ClientAuthenticationError); Azurite with 403 AuthorizationFailure (raised as HttpResponseError).
_REFUSALS = {"AuthenticationFailed", "AuthorizationFailure", "InvalidAuthenticationInfo",
             "AuthorizationPermissionMismatch"}


def _credentials_refused(exc: Exception) -> bool:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    if isinstance(exc, ClientAuthenticationError):
        return True
    return isinstance(exc, HttpResponseError) and getattr(exc, "error_code", None) in _REFUSALS


# How many failed files the task's error message names (each is also logged on its own line).
ERROR_NAMES = 10


def _failure_message(batch: int, total: int, errors: list[tuple[str, Exception]]) -> str:
    """Name every failed file (up to ``ERROR_NAMES``) with its reason, in one error message."""
    named = sorted(errors, key=lambda e: e[0])[:ERROR_NAMES]
    lines = [
        f"  {display(rel)!r}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        for rel, exc in named
    ]
    more = len(errors) - len(named)
    return (
        f"batch {batch}: {len(errors)} of {total} files could not be stored:\n"
        + "\n".join(lines)
        + (f"\n  ... and {more} more (each logged above)" if more else "")
    )


def _log_outcome(report: BatchReport, outcome: FileOutcome) -> None:
    report.add(outcome)
    if outcome.status in ("uploaded", "unchanged"):
        log.debug("Uploaded %s (%d bytes)", outcome.blob, outcome.bytes)
    elif outcome.status != "failed":
        log.warning("%s %s: %s", outcome.status.capitalize(), display(outcome.rel), outcome.reason)
    else:
        log.error("Failed %s: %s", display(outcome.rel), outcome.reason)
