"""Blob names and container/prefix rules.

Naming follows the seed sample: the blob name is the file's absolute path without its root, with
forward slashes (``/home/site/a.log`` -> ``home/site/a.log``). With a ``prefix`` the name is
``prefix/`` + the path relative to the backed-up directory.
"""

from __future__ import annotations

import functools
import re
from pathlib import PurePosixPath

# Azure's limits. Azurite does not enforce them (FACTS.md), so we do.
MAX_BLOB_NAME_CHARS = 1024
MAX_BLOB_NAME_SEGMENTS = 254
CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")

# Internal bookkeeping (batch listings, manifests) lives under this prefix of the target container.
CONTROL_PREFIX = "_cloud_backup/"


class InvalidName(ValueError):
    """A container, prefix or directory that Azure or this package would refuse."""


def validate_container(name: str) -> str:
    """Return ``name`` if Azure accepts it as a container name, else raise with the rule it breaks."""
    if not isinstance(name, str) or not CONTAINER_RE.match(name):
        raise InvalidName(
            f"container {name!r} is not a valid Azure container name: 3-63 characters, "
            "lowercase letters, digits and single hyphens, starting and ending with a letter or digit"
        )
    return name


def validate_prefix(prefix: str | None) -> str:
    """Normalise a blob prefix (no leading/trailing slash); refuse ``.``/``..`` segments and backslashes."""
    if prefix is None:
        return ""
    if not isinstance(prefix, str):
        raise InvalidName(f"prefix must be a string, got {type(prefix).__name__}")
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    segments = stripped.split("/")
    if any(seg in (".", "..") for seg in segments):
        raise InvalidName(f"prefix {prefix!r} has a '.' or '..' segment")
    if any(seg == "" for seg in segments):
        raise InvalidName(f"prefix {prefix!r} has an empty segment ('//')")
    if "\\" in stripped:
        raise InvalidName(f"prefix {prefix!r} contains a backslash")
    if stripped.startswith(CONTROL_PREFIX.rstrip("/")):
        raise InvalidName(f"prefix {prefix!r} is reserved for cloud-backup's own files")
    return stripped


def blob_name_for(directory: str, rel: str, prefix: str = "") -> str:
    """The blob name of file ``rel`` (relative, '/'-separated) found under absolute ``directory``."""
    if prefix:
        return f"{prefix}/{rel}"
    root_less = _root_less(directory)
    return f"{root_less}/{rel}" if root_less else rel


@functools.lru_cache(maxsize=64)
def _root_less(directory: str) -> str:
    # Called once per file with the same directory: parsing the path each time cost 16 us a file.
    return str(PurePosixPath(directory)).lstrip("/")


def blob_name_problem(name: str) -> str | None:
    """Why Azure (or the HTTP path) cannot hold ``name`` exactly, or None when it round-trips."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8"
    if "\\" in name:
        return "name contains a backslash, which Blob Storage turns into '/'"
    if len(name) > MAX_BLOB_NAME_CHARS:
        return f"blob name is {len(name)} characters, over Azure's limit of {MAX_BLOB_NAME_CHARS}"
    if name.count("/") + 1 > MAX_BLOB_NAME_SEGMENTS:
        return f"blob name has over {MAX_BLOB_NAME_SEGMENTS} path segments, Azure's limit"
    if name.startswith(CONTROL_PREFIX):
        return f"blob name falls under {CONTROL_PREFIX!r}, reserved for cloud-backup's own files"
    return None


def display(name: str) -> str:
    """A printable form of a path that may hold undecodable bytes (surrogate escapes)."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
