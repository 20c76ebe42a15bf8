"""Block sizes: 32 MiB for big files, smaller so that medium files still go up in parallel."""

from cloud_backup.upload import (
    BLOCK_SIZE,
    BLOCKS_IN_FLIGHT,
    MAX_BLOCKS_PER_BLOB,
    MIN_BLOCK_SIZE,
    block_size_for,
)

MiB = 1024**2


def test_big_files_use_full_blocks() -> None:
    assert block_size_for(1024 * MiB) == BLOCK_SIZE == 32 * MiB


def test_medium_files_are_spread_over_the_blocks_in_flight() -> None:
    assert block_size_for(40 * MiB) == 10 * MiB  # 4 blocks of 10 MiB, not one of 32 and one of 8
    assert block_size_for(5 * MiB) == MIN_BLOCK_SIZE  # never below 4 MiB
    size = 21 * MiB + 1
    assert -(-size // block_size_for(size)) <= BLOCKS_IN_FLIGHT


def test_huge_files_stay_within_azures_block_count() -> None:
    size = 3 * 1024**4  # 3 TiB: 32 MiB blocks would need 98,304
    assert -(-size // block_size_for(size)) <= MAX_BLOCKS_PER_BLOB
