"""Split a file listing into a bounded number of batches, balanced by bytes and by file count.

One mapped task per file is hopeless (each task instance costs ~0.75 CPU-s here), and one task per
million files breaks ``max_map_length``; so files are grouped into batches. The number of batches
follows the parallelism available, grows with the file count and the bytes, and never exceeds the
cap (Airflow's ``max_map_length``, 1024 by default). Files that are large compared with a batch's
share go into batches of their own kind, so one huge file does not hold many small ones behind it.
Batches are built in one streaming pass over the listing: memory does not grow with the file count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class HasSize(Protocol):
    """Anything batched: a file to upload, a blob to restore."""

    @property
    def size(self) -> int: ...


T = TypeVar("T", bound=HasSize)

# What one file costs in bytes-equivalent, beyond its size: at ~350 small files/s against
# ~230 MB/s on this class of machine, one file costs about as much as 0.5 MiB of data.
PER_FILE_COST = 512 * 1024
# Below this much work a batch is not worth a task instance of its own.
MIN_BATCH_COST = 64 * 1024**2


@dataclass(frozen=True)
class BatchLimits:
    """How batches are sized. ``parallelism`` is how many upload tasks can usefully run at once."""

    parallelism: int = 4
    # Large files need few streams to saturate the store (Azurite is single-threaded: 1-2 processes
    # with 8 blocks in flight each reach its ceiling, 4 were measured ~20% slower), so they are
    # grouped into at most this many batches.
    byte_parallelism: int = 2
    max_files: int = 20_000
    max_bytes: int = 16 * 1024**3
    max_batches: int = 1024

    def __post_init__(self) -> None:
        if self.max_batches < 4:
            raise ValueError("max_batches must be at least 4")
        if min(self.parallelism, self.max_files, self.max_bytes) < 1:
            raise ValueError("parallelism, max_files and max_bytes must be positive")


@dataclass
class Batch(Generic[T]):
    files: list[T] = field(default_factory=list)
    bytes: int = 0
    cost: int = 0

    def add(self, entry: T) -> None:
        self.files.append(entry)
        self.bytes += entry.size
        self.cost += entry.size + PER_FILE_COST


def plan(file_count: int, total_bytes: int, limits: BatchLimits) -> tuple[int, int]:
    """Return (cost per batch, files per batch) so that the batches made fit ``limits.max_batches``.

    Every closed batch reaches one of the two thresholds, so there are at most
    ``target + file_count / files_cap + 2`` batches; both terms are kept under half the cap.
    """
    half = limits.max_batches // 2 - 1
    files_cap = max(limits.max_files, math.ceil(file_count / half))
    target = max(
        min(limits.parallelism, file_count),
        math.ceil(file_count / files_cap),
        math.ceil(total_bytes / limits.max_bytes),
        1,
    )
    target = min(target, half)
    total_cost = total_bytes + file_count * PER_FILE_COST
    return max(MIN_BATCH_COST, math.ceil(total_cost / target)), files_cap


def make_batches(
    entries: Iterable[T], file_count: int, total_bytes: int, limits: BatchLimits
) -> Iterator[Batch[T]]:
    """Group ``entries`` (already counted: ``file_count`` files, ``total_bytes`` bytes) into batches.

    Files whose cost is at least half a batch's share are grouped apart from the small ones.
    Order within each kind follows the listing, so batches are deterministic.
    """
    cost_cap, files_cap = plan(file_count, total_bytes, limits)
    large_cap = max(cost_cap, math.ceil(total_bytes / limits.byte_parallelism))
    small: Batch[T] = Batch()
    large: Batch[T] = Batch()
    for entry in entries:
        current = large if entry.size + PER_FILE_COST >= cost_cap // 2 else small
        current.add(entry)
        if current.cost >= (large_cap if current is large else cost_cap) or (
            len(current.files) >= files_cap
        ):
            yield current
            if current is small:
                small = Batch()
            else:
                large = Batch()
    for rest in (small, large):
        if rest.files:
            yield rest
