"""The directory a run may back up: validation, allowed roots (.. and symlink escapes), permissions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cloud_backup.tasks import BadRequest, check_directory, parse_allowed_roots
from tests.privileges import as_nobody


def test_allowed_roots_from_json_list_or_pathsep_list_combined() -> None:
    assert parse_allowed_roots(json.dumps(["/a", "/b"]), f"/c{os.pathsep} {os.pathsep}/d") == [
        "/a", "/b", "/c", "/d"]
    assert parse_allowed_roots(None, "", "  ") == []


@pytest.mark.parametrize("bad", ["relative/root", '["/ok", "rel"]', "[not json", '{"a": 1}'])
def test_bad_allowed_roots_setting_is_refused(bad: str) -> None:
    with pytest.raises(BadRequest, match="allowed root"):
        parse_allowed_roots(bad)


def test_directory_under_an_allowed_root_passes(tmp_path: Path) -> None:
    (tmp_path / "data" / "sub").mkdir(parents=True)
    assert check_directory(f"{tmp_path}/data/sub/", [str(tmp_path / "data")]) == str(
        tmp_path / "data" / "sub")
    # A symlink that stays inside the root is fine, and so is the root itself.
    (tmp_path / "data" / "alias").symlink_to(tmp_path / "data" / "sub")
    assert check_directory(str(tmp_path / "data" / "alias"), [str(tmp_path / "data")])
    assert check_directory(str(tmp_path / "data"), [str(tmp_path / "data")])


def test_outside_dotdot_and_symlink_escapes_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "allowed"
    root.mkdir()
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    roots = [str(root)]
    for directory in (str(tmp_path / "secret"), f"{root}/../secret", str(root / "escape"),
                      str(tmp_path / "allowed-not-really")):
        with pytest.raises(BadRequest, match="outside the allowed roots"):
            check_directory(directory, roots)
    # Refused before existence is checked: a refusal says nothing about what exists there.
    with pytest.raises(BadRequest, match="outside the allowed roots"):
        check_directory("/no/such/place", roots)


def test_no_allowed_roots_refuses_everything_and_says_how_to_allow(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="CLOUD_BACKUP_ALLOWED_ROOTS"):
        check_directory(str(tmp_path), [])


@pytest.mark.parametrize(
    ("directory", "message"),
    [("", "non-empty string"), (42, "non-empty string"), ("rel/path", "absolute POSIX path"),
     ("D:\\home\\LogFiles", "absolute POSIX path")],
)
def test_bad_directory_values(directory, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        check_directory(directory, ["/"])


def test_missing_file_and_unreadable_directories(open_tmp: Path) -> None:
    (open_tmp / "f").write_bytes(b"")
    with pytest.raises(BadRequest, match="does not exist"):
        check_directory(str(open_tmp / "missing"), [str(open_tmp)])
    with pytest.raises(BadRequest, match="is not a directory"):
        check_directory(str(open_tmp / "f"), [str(open_tmp)])
    locked = open_tmp / "locked"
    locked.mkdir()
    locked.chmod(0o700)  # root's; the worker below is not root
    with pytest.raises(BadRequest, match="cannot be read by this worker"):
        as_nobody(check_directory, str(locked), [str(open_tmp)])
