"""Walk a directory tree: regular files only, in a deterministic order, never following symlinks.

Symlinks (to files or directories), FIFOs, sockets and devices are reported as skipped, as rclone and
AzCopy do by default, so a FIFO can never hang the walk or an upload, and no symlink can lead the
backup out of the directory. Directories that cannot be read are reported, not fatal.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class FileEntry:
    """A regular file, by its path relative to the walked directory ('/'-separated).

    ``stored_md5`` (hex) and ``stored_mtime_ns`` are set when a checksum run found a blob of the
    same size under the file's name: the upload then hashes the file and skips it if the MD5s match
    (refreshing the blob's recorded mtime if only that differs).
    """

    rel: str
    size: int
    mtime_ns: int
    stored_md5: str | None = None
    stored_mtime_ns: int | None = None


@dataclass(frozen=True)
class Skipped:
    """Something under the directory that is not backed up, and why."""

    rel: str
    reason: str


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def walk_tree(directory: str) -> Iterator[FileEntry | Skipped]:
    """Yield every entry under ``directory`` depth-first, each directory's entries sorted by name.

    Raises ``NotADirectoryError``/``FileNotFoundError``/``PermissionError`` only for the top directory.
    """
    top = os.fspath(directory)
    if not os.path.isdir(top):
        if os.path.exists(top):
            raise NotADirectoryError(f"{top!r} is not a directory")
        raise FileNotFoundError(f"directory {top!r} does not exist")
    # Sorted names, not DirEntry objects: a flat directory of a million files stays ~100 MB.
    first = sorted(os.listdir(top))  # raises PermissionError for an unreadable top directory
    # A stack of (relative dir prefix, remaining sorted names); explicit, so depth is no limit.
    stack: list[tuple[str, Iterator[str]]] = [("", iter(first))]
    while stack:
        prefix, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        rel = prefix + name
        path = os.path.join(top, rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # vanished between readdir and stat: it is not part of this listing
        except OSError as exc:
            yield Skipped(rel, f"cannot stat: {exc.strerror}")
            continue
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            yield Skipped(rel, "symlink (not followed)")
        elif stat.S_ISDIR(mode):
            try:
                children = sorted(os.listdir(path))
            except FileNotFoundError:
                continue
            except OSError as exc:
                yield Skipped(rel + "/", f"cannot read directory: {exc.strerror}")
                continue
            stack.append((rel + "/", iter(children)))
        elif stat.S_ISREG(mode):
            yield FileEntry(rel, st.st_size, st.st_mtime_ns)
        else:
            yield Skipped(rel, _kind(mode))
