from __future__ import annotations

import random

import pytest

from cloud_backup.batching import BatchLimits, make_batches
from cloud_backup.walk import FileEntry

GiB = 1024**3


def _batches(entries: list[FileEntry], limits: BatchLimits) -> list[list[FileEntry]]:
    total = sum(e.size for e in entries)
    return [b.files for b in make_batches(iter(entries), len(entries), total, limits)]


def _files(sizes: list[int]) -> list[FileEntry]:
    return [FileEntry(f"f{i:07d}", size, 0) for i, size in enumerate(sizes)]


def test_every_file_in_exactly_one_batch_in_listing_order_per_kind() -> None:
    rng = random.Random(7)
    entries = _files([rng.choice([10, 4096, 70 * 1024**2]) for _ in range(5000)])
    batches = _batches(entries, BatchLimits())
    flat = [e for batch in batches for e in batch]
    assert sorted(e.rel for e in flat) == [e.rel for e in entries]
    assert len(flat) == len(entries)


def test_small_directory_is_one_batch_one_file_is_one_batch() -> None:
    assert len(_batches(_files([100] * 50), BatchLimits())) == 1
    assert _batches(_files([5]), BatchLimits()) == [_files([5])]
    assert _batches([], BatchLimits()) == []


def test_many_small_files_spread_over_the_parallelism() -> None:
    batches = _batches(_files([32 * 1024] * 20_000), BatchLimits(parallelism=4))
    assert 4 <= len(batches) <= 6
    assert max(len(b) for b in batches) <= 5001


@pytest.mark.parametrize("count", [1_000_000, 5_000_000])
def test_millions_of_files_stay_under_max_batches(count: int) -> None:
    limits = BatchLimits(max_batches=1024)
    entries = (FileEntry(f"f{i}", 0, 0) for i in range(count))
    batches = list(make_batches(entries, count, 0, limits))
    assert len(batches) <= 1024
    assert sum(len(b.files) for b in batches) == count


def test_a_lower_cap_is_honoured() -> None:
    batches = _batches(_files([1] * 100_000), BatchLimits(max_batches=16, max_files=100))
    assert len(batches) <= 16


def test_a_huge_file_does_not_hold_small_ones_behind_it() -> None:
    sizes = [1024] * 2000 + [8 * GiB] + [1024] * 2000
    batches = _batches(_files(sizes), BatchLimits(parallelism=4))
    holding_huge = [b for b in batches if any(e.size == 8 * GiB for e in b)]
    assert len(holding_huge) == 1 and len(holding_huge[0]) == 1


def test_large_files_are_balanced_by_bytes_over_few_streams() -> None:
    batches = _batches(_files([GiB] * 8), BatchLimits(parallelism=4, byte_parallelism=2))
    assert [sum(e.size for e in b) for b in batches] == [4 * GiB] * 2
    small_and_large = _batches(_files([GiB] * 4 + [4096] * 20_000), BatchLimits(parallelism=4))
    large = [b for b in small_and_large if b[0].size == GiB]
    assert 1 <= len(large) <= 2 and len(small_and_large) - len(large) >= 3
