from __future__ import annotations

import pytest

from cloud_backup.naming import (
    InvalidName,
    blob_name_for,
    blob_name_problem,
    validate_container,
    validate_prefix,
)


def test_blob_name_is_absolute_path_without_root_like_the_seed_sample() -> None:
    assert blob_name_for("/home/site/LogFiles", "a.log") == "home/site/LogFiles/a.log"
    assert blob_name_for("/home/site/LogFiles/", "sub/b.log") == "home/site/LogFiles/sub/b.log"
    assert blob_name_for("/", "etc/hosts") == "etc/hosts"


def test_prefix_replaces_the_directory() -> None:
    assert blob_name_for("/home/site/LogFiles", "sub/a.log", "nightly/site") == "nightly/site/sub/a.log"


@pytest.mark.parametrize("name", ["backups", "abc", "a-b-c", "x" * 63, "0day"])
def test_valid_containers(name: str) -> None:
    assert validate_container(name) == name


@pytest.mark.parametrize("name", ["Backups", "ab", "a_b", "a--b", "-ab", "ab-", "x" * 64, ""])
def test_invalid_containers_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(InvalidName, match="not a valid Azure container name"):
        validate_container(name)


def test_prefix_normalised_and_dot_segments_refused() -> None:
    assert validate_prefix("/a/b/") == "a/b"
    assert validate_prefix("") == ""
    assert validate_prefix(None) == ""
    for bad in ("../x", "a/../b", "a/./b", "..", "a//b", "a\\b", "_cloud_backup/x"):
        with pytest.raises(InvalidName):
            validate_prefix(bad)


def test_blob_name_problems() -> None:
    assert blob_name_problem("a/b c#?%().txt") is None
    assert "UTF-8" in blob_name_problem("bad\udcf1name")
    assert "backslash" in blob_name_problem("a\\b")
    assert "1024" in blob_name_problem("x" * 1025)
    assert blob_name_problem("x" * 1024) is None
    assert "254" in blob_name_problem("/".join(["d"] * 255))
    assert "reserved" in blob_name_problem("_cloud_backup/runs/x")
