"""Run a function as an unprivileged user: CI runs as root, and root reads every file, so
permission errors can only be seen from a process that dropped its privileges."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
NOBODY = 65534


def as_nobody(fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` in a forked child running as uid/gid 65534; return or raise its result."""
    if os.geteuid() != 0:
        return fn(*args)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            outcome: tuple[bool, Any] = (True, fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the parent to re-raise
            outcome = (False, exc)
        with os.fdopen(write_end, "wb") as out:
            pickle.dump(outcome, out)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        ok, value = pickle.load(inp)
    os.waitpid(pid, 0)
    if not ok:
        raise value
    return value
