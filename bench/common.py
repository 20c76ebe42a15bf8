"""Shared helpers of the benchmark scripts: where things live, storage access, verification.

The benchmark runs with the project's venv (for ``cloud_backup`` and azure-storage-blob) against
the Azurite of the running local stack (``make start``). The account key never leaves this module's
clients and the contenders' environments: it is not printed or logged.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests
from azure.storage.blob import (
    BlobServiceClient,
    ContainerClient,
    ContainerSasPermissions,
    generate_container_sas,
)
from requests.adapters import HTTPAdapter

from cloud_backup.local import stack

BENCH = Path(__file__).resolve().parent
TOOLS = BENCH / ".tools"
OUT = BENCH / "out"
DATA = Path(os.environ.get("BENCH_DATA", "/tmp/cloud-backup-bench")).resolve()
AZCOPY = TOOLS / "azcopy/node_modules/@azure-tools/azcopy-linux/dist/bin/azcopy_linux_amd64"
AZ = TOOLS / "az-venv/bin/az"
PLOT_PYTHON = TOOLS / "plot-venv/bin/python"
# The DAG keeps its batch listings in the container, beside the backup; they are not backup data.
BOOKKEEPING = "_cloud_backup/"
# azure-storage-blob 12.31 defaults to an API version Azurite 3.35 rejects without
# --skipApiVersionCheck (FACTS.md); pin one it knows, so this works either way.
API_VERSION = "2025-11-05"
# Importing Airflow (through cloud_backup.local) sends INFO logs to stdout, where azure-core's HTTP
# logging policy would print every request around the one JSON line the benchmark promises.
logging.getLogger("azure").setLevel(logging.WARNING)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def settings() -> stack.Settings:
    return stack.Settings.from_env()


def blob_endpoint(s: stack.Settings) -> str:
    return f"http://{stack.HOST}:{s.azurite_port}/{stack.AZURITE_ACCOUNT}"


def service_client(s: stack.Settings, pool: int = 10) -> BlobServiceClient:
    """One client whose HTTP pool fits ``pool`` concurrent requests (azure-core keeps 10)."""
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_connections=pool, pool_maxsize=pool))
    return BlobServiceClient.from_connection_string(
        stack.azurite_connection_string(s.azurite_port), api_version=API_VERSION, session=session
    )


def container_sas_url(s: stack.Settings, container: str) -> str:
    """A SAS URL for AzCopy (it accepts no account key). Secret: never print it."""
    sas = generate_container_sas(
        stack.AZURITE_ACCOUNT,
        container,
        account_key=stack.AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, write=True, create=True, list=True, add=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=6),
    )
    return f"{blob_endpoint(s)}/{container}?{sas}"


def fresh_container(contender: str, case: str) -> str:
    """A new valid container name (lowercase, digits, single hyphens, at most 63 characters)."""
    name = f"bench-{contender}-{case}-{secrets.token_hex(4)}".replace("_", "-").lower()
    return name[:63]


class VerificationError(AssertionError):
    """A contender's container does not hold what the data set holds."""


@dataclass(frozen=True)
class Stored:
    blobs: int
    bytes: int


def stored(client: ContainerClient) -> Stored:
    """Blobs and bytes in a container, the DAG's own bookkeeping blobs left out."""
    blobs = total = 0
    for blob in client.list_blobs():
        if blob.name.startswith(BOOKKEEPING):
            continue
        blobs += 1
        total += blob.size
    return Stored(blobs, total)


def verify(client: ContainerClient, files: int, size: int) -> Stored:
    got = stored(client)
    if (got.blobs, got.bytes) != (files, size):
        raise VerificationError(
            f"container {client.container_name} holds {got.blobs} blobs / {got.bytes} bytes, "
            f"expected {files} files / {size} bytes"
        )
    return got


def delete_container(client: ContainerClient) -> None:
    try:
        client.delete_container()
    except Exception as exc:  # a leftover container costs disk, not correctness
        say(f"  warning: could not delete {client.container_name}: {exc}")


def fresh_azurite(s: stack.Settings) -> None:
    """Restart the stack's Azurite on an empty folder, with every earlier write on disk.

    Before each timed try, so no contender pays for another's leftovers: Azurite slows down as its
    metadata (one LokiJS file) grows, deletes the extents of deleted containers in a GC pass every
    10 minutes (I/O at a random moment), and the kernel writes back a previous try's dirty pages
    (8 GiB for the large set) while the next one runs. Same Azurite, same flags, same port: the
    stack's Airflow reconnects on its next request.
    """
    stack.stop(s, names=["azurite"])
    shutil.rmtree(s.state / "azurite", ignore_errors=True)
    os.sync()
    stack.start_component(s, "azurite")
    stack.wait_for_port(s.azurite_port, timeout=30)


def warm_page_cache(directory: Path) -> None:
    """Read every file of a data set once, so each contender starts with it in the page cache.

    These machines run DAMON proactive reclaim (kdamond, action ``pageout``): files left unread
    for a while are evicted, and whichever contender came first after a pause read up to 2 GB of
    the large set from disk (one try: 51 s against 33-38 s for the same contender warm).
    """
    buffer = memoryview(bytearray(4 * 1024**2))
    for root, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(root, name), "rb", buffering=0) as f:
                while f.readinto(buffer):
                    pass


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
