from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from cloud_backup.walk import FileEntry, Skipped, walk_tree
from tests.privileges import as_nobody


def _tree(root: Path) -> None:
    (root / "b").mkdir()
    (root / "a").mkdir()
    (root / "a" / "z.txt").write_bytes(b"zz")
    (root / "a" / "y.txt").write_bytes(b"y")
    (root / "b" / "x.bin").write_bytes(b"")
    (root / "top.txt").write_bytes(b"top")


def test_regular_files_depth_first_sorted(tmp_path: Path) -> None:
    _tree(tmp_path)
    entries = list(walk_tree(str(tmp_path)))
    assert [e.rel for e in entries] == ["a/y.txt", "a/z.txt", "b/x.bin", "top.txt"]
    assert all(isinstance(e, FileEntry) for e in entries)
    assert [e.size for e in entries] == [1, 2, 0, 3]
    assert entries[0].mtime_ns == os.lstat(tmp_path / "a" / "y.txt").st_mtime_ns


def test_symlinks_fifos_sockets_are_skipped_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok").write_bytes(b"1")
    (root / "to_file").symlink_to(outside / "secret")
    (root / "to_dir").symlink_to(outside)
    (root / "loop").symlink_to(root)
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    try:
        entries = list(walk_tree(str(root)))
    finally:
        sock.close()
    files = [e.rel for e in entries if isinstance(e, FileEntry)]
    skipped = {e.rel: e.reason for e in entries if isinstance(e, Skipped)}
    assert files == ["ok"]
    assert skipped == {
        "fifo": "a FIFO",
        "loop": "symlink (not followed)",
        "sock": "a socket",
        "to_dir": "symlink (not followed)",
        "to_file": "symlink (not followed)",
    }


def _walk_list(path: str) -> list:
    return list(walk_tree(path))


def test_unreadable_directory_is_reported(open_tmp: Path) -> None:
    tmp_path = open_tmp
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "hidden").write_bytes(b"h")
    (tmp_path / "locked").chmod(0)
    (tmp_path / "open.txt").write_bytes(b"o")
    entries = as_nobody(_walk_list, str(tmp_path))
    assert entries == [
        Skipped("locked/", "cannot read directory: Permission denied"),
        FileEntry("open.txt", 1, os.lstat(tmp_path / "open.txt").st_mtime_ns),
    ]


def test_deep_tree_and_undecodable_names(tmp_path: Path) -> None:
    deep = tmp_path
    for level in range(40):
        deep = deep / f"d{level}"
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"leaf")
    os.close(os.open(os.fsencode(tmp_path) + b"/caf\xf1", os.O_CREAT | os.O_WRONLY))
    rels = [e.rel for e in walk_tree(str(tmp_path))]
    assert rels[0] == "caf\udcf1"  # kept as a surrogate escape; naming rejects it with a reason
    assert rels[1].count("/") == 40 and rels[1].endswith("/leaf")


def test_top_directory_errors_are_specific(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(walk_tree(str(tmp_path / "missing")))
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        list(walk_tree(str(tmp_path / "f")))
