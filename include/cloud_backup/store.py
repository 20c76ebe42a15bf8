"""Access to the target storage through the Azure provider's ``WasbHook``, and the run's listings.

One ``WasbHook`` (so one ``BlobServiceClient`` and one HTTP pool) per task, shared by its threads:
a hook per file costs ~1.2 ms of CPU and a third of the throughput (FACTS.md).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cloud_backup.naming import CONTROL_PREFIX
from cloud_backup.walk import FileEntry

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

# azure-core's requests transport keeps 10 connections per host; the upload threads need more, or
# they churn connections ("Connection pool is full").
HTTP_POOL_SIZE = 32


def container_client(conn_id: str, container: str) -> ContainerClient:
    """A client for ``container`` built from Airflow connection ``conn_id`` (a ``wasb`` connection)."""
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

    service = WasbHook(wasb_conn_id=conn_id).blob_service_client
    _widen_http_pool(service)
    return service.get_container_client(container)


def _widen_http_pool(service: object) -> None:
    from azure.core.pipeline.transport import RequestsTransport

    transport = getattr(getattr(service, "_pipeline", None), "_transport", None)
    if not isinstance(transport, RequestsTransport):
        return  # another transport was configured: leave it alone
    transport.open()
    # Same adapter class azure-core mounts (it reads with bigger blocks), only a bigger pool.
    adapter = transport.session.get_adapter("https://")
    wider = type(adapter)(pool_maxsize=HTTP_POOL_SIZE, max_retries=adapter.max_retries)
    for scheme in ("http://", "https://"):
        transport.session.mount(scheme, wider)


def ensure_container(client: ContainerClient) -> None:
    """Create the container unless it exists (any other refusal, e.g. bad credentials, raises)."""
    from azure.core.exceptions import ResourceExistsError

    try:
        client.create_container()
    except ResourceExistsError:
        pass


def run_folder(dag_id: str, run_id: str) -> str:
    """Where one run keeps its listings and results inside the target container."""
    return f"{CONTROL_PREFIX}runs/{dag_id}/{run_id}/"


def write_listing(client: ContainerClient, blob_name: str, entries: Iterable[FileEntry]) -> None:
    """Store file entries as gzipped JSON lines ``[rel, size, mtime_ns]``."""
    lines = "".join(json.dumps([e.rel, e.size, e.mtime_ns]) + "\n" for e in entries)
    data = gzip.compress(lines.encode("utf-8"), compresslevel=5)
    client.upload_blob(blob_name, data, overwrite=True)


def read_listing(client: ContainerClient, blob_name: str) -> list[FileEntry]:
    """Read back what ``write_listing`` stored."""
    data = gzip.decompress(client.download_blob(blob_name).readall())
    return [FileEntry(*json.loads(line)) for line in data.decode("utf-8").splitlines() if line]
