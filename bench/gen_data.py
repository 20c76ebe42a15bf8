"""Generate the benchmark's data sets under BENCH_DATA (default /tmp/cloud-backup-bench), seeded.

    python bench/gen_data.py [small] [large] [one_file] [scale]

- small: 20,000 files of 1-64 KiB in 20 x 10 nested directories (~650 MB).
- large: 8 files of 1 GiB each, real (non-sparse) pseudo-random content, no two files alike.
- one_file: one 64 KiB file.
- scale: 1,000,000 empty files in 1,000 directories (for ``make bench-scale``).

A data set is complete when the ``NAME.complete`` marker beside it holds the spec it was made from; a complete
set is reused, anything else is removed and made again.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, say  # noqa: E402

KiB, MiB, GiB = 1024, 1024**2, 1024**3
SEED = 20260101
MARKER = ".complete"


@dataclass(frozen=True)
class DataSet:
    """What a case backs up: its directory, file count and total bytes."""

    name: str
    directory: Path
    files: int
    bytes: int


def _marker_path(directory: Path) -> Path:
    # Beside the data set, not in it: the contenders must not back it up.
    return directory.with_name(directory.name + MARKER)


def _marker(directory: Path, spec: dict[str, object]) -> dict[str, int] | None:
    if not directory.is_dir():
        return None
    try:
        found = json.loads(_marker_path(directory).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return found if found.get("spec") == spec else None


def _finish(name: str, directory: Path, spec: dict[str, object], files: int, size: int) -> DataSet:
    _marker_path(directory).write_text(json.dumps({"spec": spec, "files": files, "bytes": size}))
    return DataSet(name, directory, files, size)


def _fresh(directory: Path) -> None:
    _marker_path(directory).unlink(missing_ok=True)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)


def small(root: Path = DATA) -> DataSet:
    """20,000 files of 1-64 KiB, sizes and bytes drawn from one seeded generator."""
    spec = {"version": 1, "files": 20_000, "min": 1 * KiB, "max": 64 * KiB, "seed": SEED}
    directory = root / "small"
    if found := _marker(directory, spec):
        return DataSet("small", directory, found["files"], found["bytes"])
    say(f"Generating {directory} (20,000 files of 1-64 KiB) ...")
    _fresh(directory)
    rng = random.Random(SEED)
    total = 0
    for n in range(20_000):
        # 20 top-level folders x 10 sub-folders x 100 files.
        folder = directory / f"dir{n // 1000:02d}" / f"sub{n // 100 % 10}"
        if n % 100 == 0:
            folder.mkdir(parents=True)
        size = rng.randint(1 * KiB, 64 * KiB)
        (folder / f"file{n:05d}.bin").write_bytes(rng.randbytes(size))
        total += size
    return _finish("small", directory, spec, 20_000, total)


def large(root: Path = DATA) -> DataSet:
    """8 x 1 GiB. Writing 8 GiB of fresh random bytes is slow in Python, so each 64 MiB chunk is
    one seeded 64 MiB buffer rotated by an offset drawn per file and chunk: no two chunks (and so
    no two files) are alike, and nothing is sparse."""
    count, size, chunk = 8, 1 * GiB, 64 * MiB
    spec = {"version": 1, "files": count, "size": size, "chunk": chunk, "seed": SEED}
    directory = root / "large"
    if found := _marker(directory, spec):
        return DataSet("large", directory, found["files"], found["bytes"])
    say(f"Generating {directory} (8 files of 1 GiB) ...")
    _fresh(directory)
    rng = random.Random(SEED)
    buffer = rng.randbytes(chunk)
    view = memoryview(buffer)
    for i in range(count):
        with open(directory / f"large{i}.bin", "wb") as f:
            for _ in range(size // chunk):
                offset = rng.randrange(1, chunk)
                f.write(view[offset:])
                f.write(view[:offset])
    return _finish("large", directory, spec, count, count * size)


def one_file(root: Path = DATA) -> DataSet:
    spec = {"version": 1, "files": 1, "size": 64 * KiB, "seed": SEED}
    directory = root / "one_file"
    if found := _marker(directory, spec):
        return DataSet("one_file", directory, found["files"], found["bytes"])
    _fresh(directory)
    (directory / "one.bin").write_bytes(random.Random(SEED).randbytes(64 * KiB))
    return _finish("one_file", directory, spec, 1, 64 * KiB)


def scale(root: Path = DATA, dirs: int = 1000, per_dir: int = 1000) -> DataSet:
    """``dirs`` x ``per_dir`` empty files: os.open/close is the cheapest way to make an inode."""
    spec = {"version": 1, "dirs": dirs, "per_dir": per_dir}
    directory = root / "scale"
    if found := _marker(directory, spec):
        return DataSet("scale", directory, found["files"], found["bytes"])
    say(f"Generating {directory} ({dirs * per_dir:,} empty files) ...")
    started = time.monotonic()
    _fresh(directory)
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
    for d in range(dirs):
        folder = directory / f"d{d:04d}"
        folder.mkdir()
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for n in range(per_dir):
                os.close(os.open(f"f{n:04d}", flags, 0o644, dir_fd=dir_fd))
        finally:
            os.close(dir_fd)
    say(f"  made in {time.monotonic() - started:.0f}s")
    return _finish("scale", directory, spec, dirs * per_dir, 0)


MAKERS = {"small": small, "large": large, "one_file": one_file, "scale": scale}


def make(name: str) -> DataSet:
    return MAKERS[name]()


def main(argv: list[str]) -> int:
    for name in argv or ["small", "large", "one_file"]:
        data = make(name)
        print(json.dumps({**asdict(data), "directory": str(data.directory)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
